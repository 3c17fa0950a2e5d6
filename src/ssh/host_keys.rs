//! russh's per-session callbacks: host-key verification against the policy, and the loss
//! report when the session ends (or can no longer be used, see [`Liveness`]).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use russh::client::{self, DisconnectReason};
use russh::keys::{HashAlg, PublicKey};
use tracing::{debug, info};

use crate::connection::LossNotifier;

use super::options::HostKeyPolicy;

/// The session type every SSH connection holds.
pub(super) type Session = client::Handle<ClientHandler>;

/// Whether one session is still usable, shared by the connection, its command runner and
/// russh's callbacks, and who is told when it stops being usable.
pub(super) struct Liveness {
    alive: AtomicBool,
    notifier: Option<LossNotifier>,
}

impl Liveness {
    /// A session just opened, whose loss `notifier` reports.
    pub(super) fn new(notifier: Option<LossNotifier>) -> Self {
        Self {
            alive: AtomicBool::new(true),
            notifier,
        }
    }

    /// No session (not opened yet).
    pub(super) fn none() -> Self {
        Self {
            alive: AtomicBool::new(false),
            notifier: None,
        }
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// The session can no longer be used: reported once, with the first reason, so the
    /// supervisor reconnects.
    pub(super) fn lost(&self, reason: impl Into<String>) {
        if self.alive.swap(false, Ordering::SeqCst)
            && let Some(notifier) = &self.notifier
        {
            notifier.connection_lost(reason);
        }
    }

    /// We are ending the session ourselves: not a loss, so nobody is told.
    pub(super) fn closed(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

/// russh's per-session callbacks: host-key verification and loss reporting.
pub(super) struct ClientHandler {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) policy: HostKeyPolicy,
    /// Why the host key was refused, for a clear error (russh only says "unknown key").
    pub(super) refusal: Arc<Mutex<Option<String>>>,
    pub(super) liveness: Arc<Liveness>,
}

impl ClientHandler {
    fn verify(&self, key: &PublicKey) -> Result<(), String> {
        let (host, port) = (self.host.as_str(), self.port);
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let path = match &self.policy {
            HostKeyPolicy::AcceptAny => return Ok(()),
            HostKeyPolicy::Strict(path) | HostKeyPolicy::AcceptNew(path) => path,
        };
        let known = lookup(host, port, key, path).map_err(|problem| match problem {
            Lookup::Changed { line } => format!(
                "host key of {host}:{port} CHANGED: {fingerprint} does not match line {line} of {}",
                path.display()
            ),
            Lookup::Unreadable(reason) => {
                format!("cannot check the host key of {host}:{port}: {reason}")
            }
        })?;
        match (known, &self.policy) {
            (true, _) => Ok(()),
            // Unknown host (or no file yet): trust on first use.
            (false, HostKeyPolicy::AcceptNew(_)) => {
                russh::keys::known_hosts::learn_known_hosts_path(host, port, key, path).map_err(
                    |error| format!("cannot record the host key in {}: {error}", path.display()),
                )?;
                info!(%host, port, %fingerprint, "recorded a new host key");
                Ok(())
            }
            (false, _) => Err(format!(
                "host key {fingerprint} of {host}:{port} is not in {}",
                path.display()
            )),
        }
    }
}

/// Why a known_hosts file gave no answer.
enum Lookup {
    /// Another key of the same type is recorded for the host, on this line.
    Changed { line: usize },
    /// The file, or the host's entries in it, cannot be read; the reason names the path.
    Unreadable(String),
}

/// Whether `key` is recorded for `host:port` in the known_hosts file at `path`. A missing file
/// records nothing; any other failure to read it is an error, never "unknown host": with
/// `AcceptNew` that would trust whatever key the server shows.
fn lookup(host: &str, port: u16, key: &PublicKey, path: &Path) -> Result<bool, Lookup> {
    // russh reads a file it cannot open (permission denied, ...) as an empty one, so find out
    // first whether it can be read at all.
    match std::fs::read(path) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => {
            return Err(Lookup::Unreadable(format!(
                "cannot read {}: {error}",
                path.display()
            )));
        }
    }
    match russh::keys::check_known_hosts_path(host, port, key, path) {
        Ok(known) => Ok(known),
        Err(russh::keys::Error::KeyChanged { line }) => Err(Lookup::Changed { line }),
        Err(error) => Err(Lookup::Unreadable(format!(
            "cannot read the entries for {host}:{port} in {}: {error}",
            path.display()
        ))),
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A certificate is checked by the key it certifies, as OpenSSH does without a
            // @cert-authority line.
            russh::keys::PublicKeyOrCertificate::Certificate(certificate) => {
                PublicKey::new(certificate.public_key().clone(), "")
            }
        };
        match self.verify(&key) {
            Ok(()) => Ok(true),
            Err(reason) => {
                debug!(host = %self.host, %reason, "host key refused");
                *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        // Report, don't propagate: the supervisor decides what a loss means.
        let reason = match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                format!("the server disconnected: {info:?}")
            }
            DisconnectReason::Error(error) => format!("the session ended: {error}"),
        };
        self.liveness.lost(reason);
        Ok(())
    }
}
