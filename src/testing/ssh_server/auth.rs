//! The test server's login methods beyond password and public key: keyboard-interactive (one
//! password prompt with echo off, as OpenSSH with PAM asks it) and OpenSSH user certificates
//! signed by a trusted CA.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{Certificate, PrivateKey, PublicKey};
use russh::server::{Auth, Response};
use russh::{MethodKind, MethodSet};

#[cfg(doc)]
use super::SshTestServerConfig;
use super::{Shared, SshTestServerError};

/// A login method the test server can offer (see [`SshTestServerConfig::auth_methods`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `password`, checked against [`SshTestServerConfig::password`].
    Password,
    /// `publickey`: [`SshTestServerConfig::authorized_key`], and certificates signed by
    /// [`SshTestServerConfig::trusted_user_ca`].
    PublicKey,
    /// `keyboard-interactive`: one `Password: ` prompt with echo off, answered with
    /// [`SshTestServerConfig::password`]; a right answer is followed by a round with no
    /// prompts, as OpenSSH with PAM sends, then success.
    KeyboardInteractive,
}

/// The prompt keyboard-interactive logins are asked.
pub const PASSWORD_PROMPT: &str = "Password: ";

/// What the server offers, in the protocol's terms.
pub(super) fn method_set(methods: &[AuthMethod]) -> MethodSet {
    let kinds: Vec<MethodKind> = methods
        .iter()
        .map(|method| match method {
            AuthMethod::Password => MethodKind::Password,
            AuthMethod::PublicKey => MethodKind::PublicKey,
            AuthMethod::KeyboardInteractive => MethodKind::KeyboardInteractive,
        })
        .collect();
    MethodSet::from(&kinds[..])
}

/// Where one session's keyboard-interactive exchange stands.
#[derive(Default)]
pub(super) enum Conversation {
    /// No exchange, or a new one starts.
    #[default]
    Idle,
    /// The password prompt was sent.
    Asked,
    /// The password was right; the empty round was sent.
    Confirming,
}

impl Conversation {
    /// The server's next step for `user`, whose answers (`None` when the exchange starts)
    /// are checked against `shared`'s password.
    pub(super) fn step(
        &mut self,
        shared: &Shared,
        user: &str,
        response: Option<Response<'_>>,
    ) -> Auth {
        let Some(mut response) = response else {
            shared.count_auth_attempt();
            *self = Self::Asked;
            return prompt(&[(PASSWORD_PROMPT, false)]);
        };
        match std::mem::take(self) {
            Self::Asked => {
                let answer = response.next();
                let only_one = response.next().is_none();
                let right = only_one
                    && answer
                        .as_deref()
                        .and_then(|bytes| std::str::from_utf8(bytes).ok())
                        .is_some_and(|password| shared.password_ok(user, password));
                if right {
                    *self = Self::Confirming;
                    prompt(&[])
                } else {
                    Auth::reject()
                }
            }
            // The empty round must come back with no answers.
            Self::Confirming if response.next().is_none() => Auth::Accept,
            _ => Auth::reject(),
        }
    }
}

fn prompt(prompts: &[(&'static str, bool)]) -> Auth {
    Auth::Partial {
        name: Cow::Borrowed(""),
        instructions: Cow::Borrowed(""),
        prompts: Cow::Owned(
            prompts
                .iter()
                .map(|&(text, echo)| (Cow::Borrowed(text), echo))
                .collect(),
        ),
    }
}

impl Shared {
    /// Whether a key offered by `user` may go on to sign: the authorized key, or with a
    /// trusted CA any key, since a certificate is offered with its own key, which no list holds
    /// (`certificate_ok` then checks the CA).
    pub(super) fn offer_ok(&self, user: &str, key: &PublicKey) -> bool {
        (self.trusted_user_ca.is_some() && user == self.username) || self.key_ok(user, key)
    }

    /// Whether `certificate` lets `user` in: a user certificate signed by the trusted CA that
    /// names `user` among its principals. russh has already checked its signature, its
    /// validity period and that the client holds its key.
    pub(super) fn certificate_ok(&self, user: &str, certificate: &Certificate) -> bool {
        !self.reject_auth.load(Ordering::Relaxed)
            && user == self.username
            && self.trusted_user_ca.as_ref().is_some_and(|ca| {
                certificate.signature_key() == ca.key_data()
                    && certificate.cert_type() == CertType::User
                    && certificate.valid_principals().iter().any(|p| p == user)
            })
    }
}

/// russh's answer for a check's outcome.
pub(super) fn accept_if(accepted: bool) -> Auth {
    if accepted {
        Auth::Accept
    } else {
        Auth::reject()
    }
}

/// Signs an OpenSSH user certificate for `key` with `ca`, valid for `principal` from now on
/// for a day, as `ssh-keygen -s CA -I ID -n PRINCIPAL -V -1m:+1d KEY.pub` would. Write it beside
/// the private key as `KEY-cert.pub` (with [`Certificate::to_openssh`]) for a client to find.
pub fn sign_user_certificate(
    ca: &PrivateKey,
    key: &PublicKey,
    principal: &str,
) -> Result<Certificate, SshTestServerError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    let nonce: [u8; 32] = rand::random();
    let mut builder = Builder::new(
        nonce.to_vec(),
        key.key_data().clone(),
        now.saturating_sub(60),
        now + 86_400,
    )?;
    builder
        .cert_type(CertType::User)?
        .key_id(format!("{principal}@connection-supervisor-test"))?
        .valid_principal(principal)?;
    Ok(builder.sign(ca)?)
}
