//! The credentials of one open, resolved from the params first and the options second, and
//! authentication with them.

use std::sync::Arc;

use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};

use crate::connection::{FailureKind, OpenError, ResolvedConnectionParams};

use super::host_keys::Session;
use super::options::{PrivateKeySource, SshOptions};

/// The credentials for one open, resolved from the params first, then the options. Kept only
/// for the duration of the open.
pub(super) struct Credentials {
    pub(super) username: String,
    password: Option<String>,
    key: Option<PrivateKeySource>,
    passphrase: Option<String>,
}

impl Credentials {
    pub(super) fn resolve(
        options: &SshOptions,
        params: &ResolvedConnectionParams,
    ) -> Result<Self, OpenError> {
        let extra = |name: &str| {
            params
                .extras
                .as_ref()
                .and_then(|extras| extras.get(name))
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        };
        let username = params
            .username
            .clone()
            .or_else(|| options.username.clone())
            .ok_or_else(|| {
                OpenError::new(
                    FailureKind::Auth,
                    format!("no username for {} (params or SshOptions)", params.hostname),
                )
            })?;
        let key = extra("private_key")
            .map(PrivateKeySource::InMemory)
            .or_else(|| extra("private_key_path").map(|p| PrivateKeySource::Path(p.into())))
            .or_else(|| options.private_key.clone());
        let password = params.password.clone().or_else(|| options.password.clone());
        if key.is_none() && password.is_none() {
            return Err(OpenError::new(
                FailureKind::Auth,
                format!(
                    "no password or private key for {username}@{}",
                    params.hostname
                ),
            ));
        }
        Ok(Self {
            username,
            password,
            key,
            passphrase: extra("private_key_passphrase")
                .or_else(|| options.private_key_passphrase.clone()),
        })
    }

    fn load_key(&self, source: &PrivateKeySource) -> Result<PrivateKey, OpenError> {
        let passphrase = self.passphrase.as_deref();
        match source {
            PrivateKeySource::Path(path) => {
                russh::keys::load_secret_key(path, passphrase).map_err(|e| {
                    OpenError::new(
                        FailureKind::Auth,
                        format!("cannot load the private key {}: {e}", path.display()),
                    )
                })
            }
            PrivateKeySource::InMemory(text) => russh::keys::decode_secret_key(text, passphrase)
                .map_err(|e| {
                    OpenError::new(
                        FailureKind::Auth,
                        format!("cannot decode the private key: {e}"),
                    )
                }),
        }
    }

    /// Tries the private key, then the password; fails with `Auth` when neither is accepted.
    pub(super) async fn authenticate(
        &self,
        session: &mut Session,
        host: &str,
    ) -> Result<(), OpenError> {
        let transport = |e: russh::Error| {
            OpenError::new(FailureKind::Transport, format!("ssh auth with {host}: {e}"))
        };
        let mut tried = Vec::new();
        if let Some(source) = &self.key {
            let key = self.load_key(source)?;
            let hash: Option<HashAlg> = session
                .best_supported_rsa_hash()
                .await
                .map_err(transport)?
                .flatten();
            let result = session
                .authenticate_publickey(
                    self.username.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(transport)?;
            if result.success() {
                return Ok(());
            }
            tried.push("public key");
        }
        if let Some(password) = &self.password {
            let result = session
                .authenticate_password(self.username.clone(), password.clone())
                .await
                .map_err(transport)?;
            if result.success() {
                return Ok(());
            }
            tried.push("password");
        }
        Err(OpenError::new(
            FailureKind::Auth,
            format!(
                "{host} rejected {} for user {}",
                tried.join(" and "),
                self.username
            ),
        ))
    }
}
