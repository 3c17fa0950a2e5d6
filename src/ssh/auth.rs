//! The credentials of one open, resolved from the params first and the options second, and
//! authentication with them as OpenSSH's `ssh` does it.
//!
//! The server is asked which methods it offers (a `none` attempt), and ours are tried in
//! OpenSSH's order among those it offers: public keys (the agent's, then each key file with
//! its certificate), keyboard-interactive (password prompts answered with the password), then
//! password. A method the server stops offering is skipped. A key or an agent that cannot be
//! used is passed over, as `ssh` passes over it; if nothing else gets in, the failure is
//! [`FailureKind::Config`] naming it, since that is what to fix.

use std::path::PathBuf;
use std::sync::Arc;

use russh::MethodKind;
use russh::client::{AuthResult, KeyboardInteractiveAuthResponse, Prompt};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use serde_json::Value;
use tracing::{debug, warn};

use crate::connection::{FailureKind, OpenError, ResolvedConnectionParams};

use super::host_keys::Session;
use super::identities::{self, Identity};
use super::options::{PrivateKeySource, SshOptions};

mod agent;

/// Rounds of keyboard-interactive prompts answered in one attempt. OpenSSH with PAM needs two
/// (the password prompt, then an empty round); the bound stops a server that keeps asking.
const KEYBOARD_INTERACTIVE_ROUNDS: usize = 8;

/// The credentials for one open, resolved from the params first, then the options. Kept only
/// for the duration of the open.
pub(super) struct Credentials {
    pub(super) username: String,
    password: Option<String>,
    identities: Vec<PrivateKeySource>,
    passphrase: Option<String>,
    /// `Some` when the agent is on: its socket, or `None` when neither the options nor
    /// `SSH_AUTH_SOCK` name one.
    agent: Option<Option<PathBuf>>,
}

impl Credentials {
    /// `config_identities` are the ssh config's `IdentityFile`s for the host: they come after a
    /// key the params name and before the options' keys, which they replace.
    pub(super) fn resolve(
        options: &SshOptions,
        params: &ResolvedConnectionParams,
        config_identities: &[PathBuf],
    ) -> Result<Self, OpenError> {
        let host = params.hostname.as_str();
        let username = params
            .username
            .clone()
            .or_else(|| options.username.clone())
            .ok_or_else(|| {
                OpenError::new(
                    FailureKind::Auth,
                    format!("no username for {host} (params or SshOptions)"),
                )
            })?;
        let key_text = extra_string(params, "private_key")?;
        let key_path = extra_string(params, "private_key_path")?;
        // A key named for this host replaces the default ones, as it is what this host needs.
        let identities = match (key_text, key_path) {
            (None, None) if !config_identities.is_empty() => config_identities
                .iter()
                .map(|path| PrivateKeySource::Path(path.clone()))
                .collect(),
            (None, None) => options.identities.clone(),
            (text, path) => text
                .map(PrivateKeySource::InMemory)
                .into_iter()
                .chain(path.map(|p| PrivateKeySource::Path(p.into())))
                .collect(),
        };
        let passphrase = match extra_string(params, "private_key_passphrase")? {
            Some(passphrase) => Some(passphrase),
            None => extra_string(params, "passphrase")?,
        }
        .or_else(|| options.private_key_passphrase.clone());
        let agent = extra_bool(params, "agent")?
            .unwrap_or(options.agent)
            .then(|| identities::agent_socket(options.agent_socket.as_deref()));
        let password = params.password.clone().or_else(|| options.password.clone());
        if identities.is_empty() && password.is_none() {
            match &agent {
                None => {
                    return Err(OpenError::new(
                        FailureKind::Auth,
                        format!(
                            "no password or private key for {username}@{host}, and the agent is off"
                        ),
                    ));
                }
                Some(None) => {
                    return Err(OpenError::new(
                        FailureKind::Config,
                        format!(
                            "the ssh-agent is on for {username}@{host}, but no agent socket is \
                             set (SSH_AUTH_SOCK or SshOptions::agent_socket), and there is no \
                             password or private key to try instead"
                        ),
                    ));
                }
                Some(Some(_)) => {}
            }
        }
        Ok(Self {
            username,
            password,
            identities,
            passphrase,
            agent,
        })
    }

    /// Authenticates `session` with the server at `addr` (`host:port`, for messages). Fails
    /// with `Auth` when the server accepts nothing we have, `Config` when a key or agent that
    /// could not be used might have got in, `Transport` when the session breaks.
    pub(super) async fn authenticate(
        &self,
        session: &mut Session,
        addr: &str,
    ) -> Result<(), OpenError> {
        let user = self.username.as_str();
        let mut progress = Progress::default();
        let first = session
            .authenticate_none(user)
            .await
            .map_err(|e| broken(addr, e))?;
        if progress.record(first) {
            return Ok(());
        }
        debug!(%addr, offered = %names(&progress.offered), "authentication methods offered");
        if progress.offers(MethodKind::PublicKey)
            && self.public_keys(session, addr, &mut progress).await?
        {
            return Ok(());
        }
        if let Some(password) = &self.password {
            if progress.offers(MethodKind::KeyboardInteractive)
                && keyboard_interactive(session, user, password, addr, &mut progress).await?
            {
                return Ok(());
            }
            if progress.offers(MethodKind::Password) {
                progress.tried_password = true;
                let result = session
                    .authenticate_password(user, password.clone())
                    .await
                    .map_err(|e| broken(addr, e))?;
                if progress.record(result) {
                    return Ok(());
                }
            }
        }
        Err(progress.failure(self, addr, session.is_closed()))
    }

    /// Offers the agent's identities, then each key and its certificate; `true` once one is
    /// accepted.
    async fn public_keys(
        &self,
        session: &mut Session,
        addr: &str,
        progress: &mut Progress,
    ) -> Result<bool, OpenError> {
        let user = self.username.as_str();
        let hash: Option<HashAlg> = session
            .best_supported_rsa_hash()
            .await
            .map_err(|e| broken(addr, e))?
            .flatten();
        let mut from_agent = Vec::new();
        if let Some(socket) = &self.agent
            && agent::offer(
                session,
                socket.as_deref(),
                user,
                hash,
                addr,
                progress,
                &mut from_agent,
            )
            .await?
        {
            return Ok(true);
        }
        for source in &self.identities {
            if !progress.offers(MethodKind::PublicKey) {
                break;
            }
            let identity = match Identity::read(source) {
                Ok(identity) => identity,
                Err(problem) => {
                    progress.cannot_use(problem);
                    continue;
                }
            };
            if identity.public_key().is_some_and(|public| {
                from_agent
                    .iter()
                    .any(|k: &PublicKey| k.key_data() == public.key_data())
            }) {
                debug!(key = %identity.label, "already offered by the agent");
                continue;
            }
            let key = match identity.decrypt(self.passphrase.as_deref()) {
                Ok(key) => Arc::new(key),
                Err(problem) => {
                    progress.cannot_use(problem);
                    continue;
                }
            };
            progress.keys += 1;
            let result = session
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                .await
                .map_err(|e| broken(addr, e))?;
            if progress.record(result) {
                return Ok(true);
            }
            if let Some(certificate) = identity.certificate
                && progress.offers(MethodKind::PublicKey)
            {
                progress.certificates += 1;
                let result = session
                    .authenticate_openssh_cert(user, key, certificate)
                    .await
                    .map_err(|e| broken(addr, e))?;
                if progress.record(result) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Answers the server's keyboard-interactive prompts: those with echo off (a password prompt)
/// with the password, once; those with echo on (a question, not a secret) with nothing. A
/// server that asks for a secret again has refused the password, so the attempt ends there.
async fn keyboard_interactive(
    session: &mut Session,
    user: &str,
    password: &str,
    addr: &str,
    progress: &mut Progress,
) -> Result<bool, OpenError> {
    progress.tried_keyboard_interactive = true;
    let mut reply = session
        .authenticate_keyboard_interactive_start(user, None)
        .await
        .map_err(|e| broken(addr, e))?;
    let mut password_sent = false;
    for _ in 0..KEYBOARD_INTERACTIVE_ROUNDS {
        let prompts = match reply {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure {
                remaining_methods,
                partial_success,
            } => {
                return Ok(progress.record(AuthResult::Failure {
                    remaining_methods,
                    partial_success,
                }));
            }
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => prompts,
        };
        let answers = answers(&prompts, password, &mut password_sent);
        reply = session
            .authenticate_keyboard_interactive_respond(answers)
            .await
            .map_err(|e| broken(addr, e))?;
    }
    // Still asking: leave it unanswered; the next method's request supersedes it (RFC 4256).
    warn!(
        %addr,
        "keyboard-interactive still prompting after {KEYBOARD_INTERACTIVE_ROUNDS} rounds, given up"
    );
    match reply {
        KeyboardInteractiveAuthResponse::Success => Ok(true),
        KeyboardInteractiveAuthResponse::Failure {
            remaining_methods,
            partial_success,
        } => Ok(progress.record(AuthResult::Failure {
            remaining_methods,
            partial_success,
        })),
        KeyboardInteractiveAuthResponse::InfoRequest { .. } => Ok(false),
    }
}

/// One answer per prompt (none for an empty round): the password for the first secret asked,
/// empty strings for the rest.
fn answers(prompts: &[Prompt], password: &str, password_sent: &mut bool) -> Vec<String> {
    prompts
        .iter()
        .map(|prompt| {
            if prompt.echo || *password_sent {
                String::new()
            } else {
                *password_sent = true;
                password.to_owned()
            }
        })
        .collect()
}

/// What has been tried so far and what the server last said it offers.
#[derive(Default)]
struct Progress {
    /// The methods the server's latest failure said can continue.
    offered: Vec<MethodKind>,
    /// Every method the server has offered during this login, in the order first offered:
    /// some servers stop listing a method once it has failed.
    ever_offered: Vec<MethodKind>,
    /// Keys and certificates offered (agent's and files').
    keys: usize,
    certificates: usize,
    tried_keyboard_interactive: bool,
    tried_password: bool,
    /// A method the server accepted as one step of several (`AuthenticationMethods a,b`).
    partial: bool,
    /// Keys and agents that could not be used, with the reason.
    problems: Vec<String>,
}

impl Progress {
    /// Notes the server's answer; `true` on success.
    fn record(&mut self, result: AuthResult) -> bool {
        match result {
            AuthResult::Success => true,
            AuthResult::Failure {
                remaining_methods,
                partial_success,
            } => {
                self.offered = remaining_methods.to_vec();
                for method in &self.offered {
                    if !self.ever_offered.contains(method) {
                        self.ever_offered.push(*method);
                    }
                }
                self.partial |= partial_success;
                false
            }
        }
    }

    fn offers(&self, method: MethodKind) -> bool {
        self.offered.contains(&method)
    }

    fn cannot_use(&mut self, problem: String) {
        warn!("{problem}");
        self.problems.push(problem);
    }

    /// The error once nothing got in.
    fn failure(&self, credentials: &Credentials, addr: &str, closed: bool) -> OpenError {
        let user = &credentials.username;
        let mut tried = Vec::new();
        if self.keys + self.certificates > 0 {
            let mut what = vec![count(self.keys, "key")];
            if self.certificates > 0 {
                what.push(count(self.certificates, "certificate"));
            }
            tried.push(format!("publickey ({})", what.join(", ")));
        }
        if self.tried_keyboard_interactive {
            tried.push("keyboard-interactive".to_owned());
        }
        if self.tried_password {
            tried.push("password".to_owned());
        }
        let mut offered = if self.ever_offered.is_empty() {
            "the server offers no method".to_owned()
        } else {
            format!("the server offers {}", names(&self.ever_offered))
        };
        if closed {
            // OpenSSH drops a client after MaxAuthTries (6) failures: an agent holding many keys
            // gets there before the password is tried.
            offered.push_str(" and closed the connection (too many attempts?)");
        }
        let mut message = if tried.is_empty() {
            let have = credentials.kinds();
            format!("{addr}: no method to log in as {user}: {offered}, and we have {have}")
        } else {
            let partial = if self.partial {
                " (some accepted as a first step only)"
            } else {
                ""
            };
            format!(
                "{addr} rejected user {user}: tried {}{partial}; {offered}",
                tried.join(", ")
            )
        };
        if self.problems.is_empty() {
            return OpenError::new(FailureKind::Auth, message);
        }
        message.push_str("; could not use: ");
        message.push_str(&self.problems.join("; "));
        OpenError::new(FailureKind::Config, message)
    }
}

impl Credentials {
    /// What we could log in with, for a message.
    fn kinds(&self) -> String {
        let mut kinds = Vec::new();
        if self.agent.is_some() {
            kinds.push("an agent".to_owned());
        }
        if !self.identities.is_empty() {
            kinds.push(count(self.identities.len(), "private key"));
        }
        if self.password.is_some() {
            kinds.push("a password".to_owned());
        }
        kinds.join(" and ")
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Method names as the protocol (and OpenSSH's "Permission denied (...)") spells them.
fn names(methods: &[MethodKind]) -> String {
    methods
        .iter()
        .map(<&str>::from)
        .collect::<Vec<_>>()
        .join(",")
}

/// The session broke while authenticating.
fn broken(addr: &str, error: russh::Error) -> OpenError {
    OpenError::new(
        FailureKind::Transport,
        format!("authentication with {addr} failed: {error}"),
    )
}

/// An extra that must be a string, if present. Only its type is named when it is not: the
/// value may be a secret.
fn extra_string(
    params: &ResolvedConnectionParams,
    name: &str,
) -> Result<Option<String>, OpenError> {
    match params.extras.as_ref().and_then(|extras| extras.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(bad_extra(params, name, "a string", other)),
    }
}

fn extra_bool(params: &ResolvedConnectionParams, name: &str) -> Result<Option<bool>, OpenError> {
    match params.extras.as_ref().and_then(|extras| extras.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(on)) => Ok(Some(*on)),
        Some(other) => Err(bad_extra(params, name, "true or false", other)),
    }
}

fn bad_extra(
    params: &ResolvedConnectionParams,
    name: &str,
    wanted: &str,
    got: &Value,
) -> OpenError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    OpenError::new(
        FailureKind::Config,
        format!(
            "extras.{name} for {} must be {wanted}, not {kind}",
            params.hostname
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, echo: bool) -> Prompt {
        Prompt {
            prompt: text.to_owned(),
            echo,
        }
    }

    #[test]
    fn an_extra_of_the_wrong_type_is_named_but_its_value_is_not_shown() {
        let params = ResolvedConnectionParams {
            hostname: "r1".into(),
            username: Some("admin".into()),
            extras: Some([("passphrase".to_owned(), Value::from(271_828_182))].into()),
            ..Default::default()
        };
        let error = Credentials::resolve(&SshOptions::default(), &params, &[])
            .err()
            .expect("a number is no passphrase");
        assert_eq!(error.kind(), FailureKind::Config);
        assert_eq!(
            error.message(),
            "extras.passphrase for r1 must be a string, not a number"
        );
    }

    #[test]
    fn the_password_answers_the_first_secret_prompt_only() {
        let mut sent = false;
        let round = [prompt("Username: ", true), prompt("Password: ", false)];
        assert_eq!(answers(&round, "pw", &mut sent), ["", "pw"]);
        assert!(sent);
        // Asked again: the password was refused, and is not sent twice.
        assert_eq!(
            answers(&[prompt("Password: ", false)], "pw", &mut sent),
            [""]
        );
        // An empty round is answered with no answers.
        assert!(answers(&[], "pw", &mut sent).is_empty());
    }
}
