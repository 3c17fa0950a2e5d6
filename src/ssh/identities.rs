//! Where public-key authentication gets its keys: private keys (files or text, decrypted with
//! the passphrase), the OpenSSH user certificates beside key files, and an ssh-agent.
//!
//! Every failure here is a local one, returned as a sentence naming the key file or the
//! agent's socket (never a key or a passphrase), which the caller keeps as the reason a key
//! could not be offered.

use std::path::{Path, PathBuf};

use russh::keys::{Certificate, PrivateKey, PublicKey};
use tracing::{debug, warn};

use super::options::PrivateKeySource;

/// A private key to offer, as far as it could be read, with the certificate found beside it.
pub(super) struct Identity {
    /// The file's path, or what the key text was given as; for messages.
    pub(super) label: String,
    /// The key text (OpenSSH or PEM), read but not yet decrypted.
    text: String,
    /// The OpenSSH certificate in `PATH-cert.pub`, for a key file that has one.
    pub(super) certificate: Option<Certificate>,
}

impl Identity {
    /// Reads `source` (a file, or key text) and the certificate beside a file. Fails with the
    /// reason when the file cannot be read.
    pub(super) fn read(source: &PrivateKeySource) -> Result<Self, String> {
        match source {
            PrivateKeySource::Path(path) => {
                let path = expand_home(path);
                let label = path.display().to_string();
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the private key {label}: {e}"))?;
                let certificate = certificate_beside(&path);
                Ok(Self {
                    label,
                    text,
                    certificate,
                })
            }
            PrivateKeySource::InMemory(text) => Ok(Self {
                label: "the private key given as text".to_owned(),
                text: text.clone(),
                certificate: None,
            }),
        }
    }

    /// The public half, when it can be had without the passphrase (OpenSSH's format keeps it
    /// in the clear), to skip a key the agent has already offered.
    pub(super) fn public_key(&self) -> Option<PublicKey> {
        PrivateKey::from_openssh(self.text.trim())
            .ok()
            .map(|key| key.public_key().clone())
    }

    /// The private key, decrypted with `passphrase` if it is encrypted. The reason names the
    /// key and says whether the passphrase is missing or wrong.
    pub(super) fn decrypt(&self, passphrase: Option<&str>) -> Result<PrivateKey, String> {
        let label = &self.label;
        match russh::keys::decode_secret_key(&self.text, passphrase) {
            Ok(key) => Ok(key),
            Err(russh::keys::Error::KeyIsEncrypted) => Err(format!(
                "the private key {label} is encrypted and no passphrase is set \
                 (private_key_passphrase)"
            )),
            Err(e) if passphrase.is_some() && self.is_encrypted() => Err(format!(
                "cannot decrypt the private key {label} with the passphrase given (wrong \
                 passphrase?): {e}"
            )),
            Err(e) => Err(format!("cannot decode the private key {label}: {e}")),
        }
    }

    fn is_encrypted(&self) -> bool {
        match PrivateKey::from_openssh(self.text.trim()) {
            Ok(key) => key.is_encrypted(),
            // PEM: `Proc-Type: 4,ENCRYPTED` (PKCS#1) or `BEGIN ENCRYPTED PRIVATE KEY` (PKCS#8).
            Err(_) => self.text.contains("ENCRYPTED"),
        }
    }
}

/// `~/...` under the home directory, as OpenSSH expands `IdentityFile`; any other path as is.
pub(super) fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

/// The certificate OpenSSH looks for beside a key file: `PATH-cert.pub`. One that is missing
/// is normal; one that cannot be parsed is skipped with a warning, as `ssh` skips it.
fn certificate_beside(key: &Path) -> Option<Certificate> {
    let mut path = key.as_os_str().to_owned();
    path.push("-cert.pub");
    let path = PathBuf::from(path);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            debug!(path = %path.display(), error = %e, "no certificate beside the key");
            return None;
        }
    };
    match Certificate::from_openssh(text.trim()) {
        Ok(certificate) => Some(certificate),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "not an OpenSSH certificate, skipped");
            None
        }
    }
}

/// Where the agent listens: the configured socket, else `SSH_AUTH_SOCK` (`None` when unset).
pub(super) fn agent_socket(configured: Option<&Path>) -> Option<PathBuf> {
    configured.map(Path::to_owned).or_else(|| {
        std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tilde_path_is_under_home_and_others_are_kept() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(home) = home {
            assert_eq!(expand_home(Path::new("~/.ssh/id")), home.join(".ssh/id"));
        }
        assert_eq!(
            expand_home(Path::new("/etc/key")),
            PathBuf::from("/etc/key")
        );
        assert_eq!(
            expand_home(Path::new("~other/key")),
            PathBuf::from("~other/key")
        );
    }
}
