//! russh's per-session callbacks: host-key verification against the policy (with the
//! known_hosts file read before the handshake, which also orders the host-key algorithms), and
//! the loss report when the session ends (or can no longer be used, see [`Liveness`]).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use russh::Preferred;
use russh::client::{self, DisconnectReason};
use russh::keys::{Algorithm, HashAlg, PublicKey, PublicKeyOrCertificate};
use tracing::{debug, info};

use crate::connection::LossNotifier;

use super::known_hosts::{KnownHosts, Verdict, same_type};
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
    /// The policy's known_hosts file, read before the handshake (its key types order the
    /// host-key algorithms); `None` when the file does not exist or the policy reads none.
    pub(super) known_hosts: Option<KnownHosts>,
    /// Why the host key was refused, for a clear error (russh only says "unknown key").
    pub(super) refusal: Arc<Mutex<Option<String>>>,
    pub(super) liveness: Arc<Liveness>,
}

/// Reads the known_hosts file `policy` checks against, before the handshake: `Ok(None)` when
/// the policy reads no file or the file does not exist; an error (naming the path and
/// `host:port`) when it exists but cannot be read, never "unknown host": with `AcceptNew` that
/// would trust whatever key the server shows.
pub(super) fn load_known_hosts(
    policy: &HostKeyPolicy,
    host: &str,
    port: u16,
) -> Result<Option<KnownHosts>, String> {
    match policy {
        HostKeyPolicy::AcceptAny => Ok(None),
        HostKeyPolicy::Strict(path) | HostKeyPolicy::AcceptNew(path) => {
            KnownHosts::load(path, host, port)
                .map_err(|reason| format!("cannot check the host key of {host}:{port}: {reason}"))
        }
    }
}

/// Puts the host-key algorithms whose types `known_hosts` records for `host:port` first,
/// keeping the order of `preferred` within each part, as `ssh` does: a server then shows a key
/// we can check even when its own first choice is a type we never recorded. Asks for host
/// certificates when a `@cert-authority` line covers the host (unless the lists name their
/// own certificate algorithms).
pub(super) fn order_host_keys(
    preferred: &mut Preferred,
    known_hosts: Option<&KnownHosts>,
    host: &str,
    port: u16,
) {
    let Some(known_hosts) = known_hosts else {
        return;
    };
    let recorded = known_hosts.recorded_types(host, port);
    let is_recorded =
        |algorithm: &Algorithm| recorded.iter().any(|known| same_type(known, algorithm));
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) =
        preferred.key.iter().cloned().partition(is_recorded);
    first.extend(rest);
    preferred.key = Cow::Owned(first);
    if preferred.host_key_certificates.is_empty() && known_hosts.has_authority(host, port) {
        preferred.host_key_certificates = preferred.key.clone();
    }
}

impl ClientHandler {
    fn verify(&self, shown: &PublicKeyOrCertificate) -> Result<(), String> {
        let (host, port) = (self.host.as_str(), self.port);
        let path = match &self.policy {
            HostKeyPolicy::AcceptAny => return Ok(()),
            HostKeyPolicy::Strict(path) | HostKeyPolicy::AcceptNew(path) => path,
        };
        let (key, what) = match shown {
            PublicKeyOrCertificate::PublicKey { key, .. } => (key.clone(), "key"),
            PublicKeyOrCertificate::Certificate(certificate) => (
                PublicKey::new(certificate.public_key().clone(), ""),
                "certificate",
            ),
        };
        let verdict = self.known_hosts.as_ref().map(|known| match shown {
            PublicKeyOrCertificate::PublicKey { key, .. } => known.check_key(host, port, key),
            PublicKeyOrCertificate::Certificate(certificate) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_secs());
                known.check_certificate(host, port, certificate, now)
            }
        });
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let algorithm = key.algorithm();
        let algorithm = algorithm.as_str();
        let file = path.display();
        if let (Some(Verdict::Unknown { .. }), Some(known)) = (&verdict, &self.known_hosts)
            && let Some((line, error)) = known.invalid_entry(host, port)
        {
            return Err(format!(
                "cannot read the entries for {host}:{port} in {file}: line {line} is invalid ({error}), so the {algorithm} key {fingerprint} it showed cannot be checked"
            ));
        }
        match verdict {
            Some(Verdict::Known) => Ok(()),
            Some(Verdict::Revoked { line }) => Err(format!(
                "host {what} of {host}:{port} is REVOKED: {algorithm} {fingerprint}{} is listed under @revoked on line {line} of {file}",
                if what == "certificate" {
                    " (or its signer)"
                } else {
                    ""
                }
            )),
            Some(Verdict::Changed { line }) => Err(format!(
                "host key of {host}:{port} CHANGED: {algorithm} {fingerprint} does not match line {line} of {file}"
            )),
            Some(Verdict::BadCertificate(reason)) => Err(format!(
                "host certificate of {host}:{port} ({algorithm} {fingerprint}) refused: {reason}"
            )),
            Some(Verdict::Unknown { .. }) | None
                if matches!(self.policy, HostKeyPolicy::AcceptNew(_)) =>
            {
                // Unknown host or key type (or no file yet): trust on first use.
                russh::keys::known_hosts::learn_known_hosts_path(host, port, &key, path)
                    .map_err(|error| format!("cannot record the host key in {file}: {error}"))?;
                info!(%host, port, %fingerprint, "recorded a new host key");
                Ok(())
            }
            None => Err(format!(
                "cannot check the host key of {host}:{port} ({algorithm} {fingerprint}): {file} does not exist"
            )),
            Some(Verdict::Unknown { .. }) if what == "certificate" => Err(format!(
                "{host}:{port} showed a host certificate for {algorithm} {fingerprint}: neither its signer is a @cert-authority for it in {file} nor its key is listed there"
            )),
            Some(Verdict::Unknown { recorded }) if recorded.is_empty() => Err(format!(
                "host key {algorithm} {fingerprint} of {host}:{port} is not in {file}: the host is not listed there"
            )),
            Some(Verdict::Unknown { recorded }) => Err(format!(
                "host key {algorithm} {fingerprint} of {host}:{port} is not in {file}, which lists the host only with {} keys",
                recorded.join(", ")
            )),
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verify(server_public_key) {
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
