//! Which algorithms the test server speaks, and host keys of other types than Ed25519: enough
//! to imitate an old device that knows only SHA-1 key exchange, `ssh-rsa`, CBC and `hmac-sha1`.

use std::borrow::Cow;
use std::io;

use russh::keys::{Algorithm, PrivateKey};
use russh::{Preferred, cipher, kex, mac};

use super::SshTestServerError;

/// What the server offers in key exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerAlgorithms {
    /// russh's defaults (curve25519, AES-GCM/CTR, SHA-2 MACs; any host key type).
    #[default]
    Modern,
    /// Only `diffie-hellman-group14-sha1`, `ssh-rsa` host keys, `aes128-cbc` and `hmac-sha1`,
    /// as an old device (or `sshd` with those four settings) speaks. Needs an RSA
    /// [`SshTestServerConfig::host_key`](super::SshTestServerConfig::host_key).
    LegacyOnly,
}

impl ServerAlgorithms {
    /// The server's lists for this choice, checked against its host key.
    pub(super) fn preferred(self, host_key: &PrivateKey) -> Result<Preferred, SshTestServerError> {
        match self {
            Self::Modern => Ok(Preferred::default()),
            Self::LegacyOnly => {
                if !matches!(host_key.algorithm(), Algorithm::Rsa { .. }) {
                    return Err(SshTestServerError::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "ServerAlgorithms::LegacyOnly needs an RSA host key (ssh-rsa)",
                    )));
                }
                Ok(Preferred {
                    kex: Cow::Borrowed(&[kex::DH_G14_SHA1]),
                    key: Cow::Borrowed(&[Algorithm::Rsa { hash: None }]),
                    cipher: Cow::Borrowed(&[cipher::AES_128_CBC]),
                    mac: Cow::Borrowed(&[mac::HMAC_SHA1]),
                    ..Preferred::default()
                })
            }
        }
    }
}

/// Generates a host key of `algorithm`: Ed25519, ECDSA (`Algorithm::Ecdsa { curve }`) or RSA.
/// RSA keys take seconds to generate in unoptimised builds; tests that need one often load a
/// fixed key with [`PrivateKey::from_openssh`] instead.
pub fn generate_host_key(algorithm: Algorithm) -> Result<PrivateKey, SshTestServerError> {
    Ok(PrivateKey::random(&mut rand::rng(), algorithm)?)
}
