//! Jump hosts (bastions): which supervised connection a host is reached through, getting that
//! connection open through the supervisor, and the direct-tcpip channel on its session that
//! the host's own SSH session then runs over.
//!
//! A host names its jump host in `extras.jump`: a name registered with
//! [`SshOptions::jump_host`], or an OpenSSH `ProxyJump` chain `[user@]host[:port],...`
//! ([`parse_proxy_jump`]). Either way the jump host is a connection of its own in the same
//! supervisor, so a hundred hosts behind one bastion share one session to it, and the
//! bastion's losses, reconnects and failures are the supervisor's to handle like any other.
//!
//! The host's connection opens the bastion in [`Connection::prepare`], which runs before the
//! open takes an open slot: waiting for the bastion inside `open` would hold a slot, and hosts
//! waiting for their bastion could hold every slot while the bastion waits for one.
//!
//! [`Connection::prepare`]: crate::Connection::prepare

use std::fmt;
use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use russh::client::Msg;
use russh::{ChannelOpenFailure, ChannelStream};

use crate::client::ConnectionManager;
use crate::connection::{
    Connection, ConnectionKey, Extras, FailureKind, OpenError, ResolvedConnectionParams,
};
use crate::runtime::messages::ConnectionHandle;
use crate::status::ConnectionState;

use super::PLUGIN_NAME;
use super::host_keys::{Liveness, Session};
use super::options::SshOptions;
use super::proxy_jump::{ProxyJumpHop, parse_proxy_jump};

/// The longest chain of jump hosts followed before giving up: far beyond any real network
/// (OpenSSH users rarely chain more than three), short enough to stop a runaway definition.
const MAX_HOPS: usize = 16;

/// The extras name that carries a host's jump host.
pub(super) const JUMP_EXTRA: &str = "jump";

/// Connects an SSH factory to the supervisor it serves, so that its connections can open
/// their jump hosts through that supervisor. Made by [`factory_with_link`](super::factory_with_link);
/// [`bind`](Self::bind) it to the manager once the manager is built.
///
/// It holds a [`ConnectionManager`], which is only an address: it keeps no actor running, and a
/// supervisor that is shut down (by [`ConnectionManager::shutdown`] or a dropped
/// [`SupervisorGuard`](crate::SupervisorGuard)) stops as usual; opens through a jump host then
/// fail with the shutdown.
#[derive(Clone, Default)]
pub struct SupervisorLink {
    manager: Arc<OnceLock<ConnectionManager>>,
}

impl SupervisorLink {
    /// Binds the link to `manager`, the one whose supervisor runs the factory's connections.
    /// Returns `false`, and changes nothing, if it was already bound.
    pub fn bind(&self, manager: &ConnectionManager) -> bool {
        self.manager.set(manager.clone()).is_ok()
    }

    /// Whether [`bind`](Self::bind) was called.
    pub fn is_bound(&self) -> bool {
        self.manager.get().is_some()
    }
}

impl fmt::Debug for SupervisorLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorLink")
            .field("bound", &self.is_bound())
            .finish()
    }
}

/// The jump host a host is reached through: the supervised connection opened first.
#[derive(Clone, Debug)]
pub(super) struct Hop {
    /// What messages call it: the registered name or the `ProxyJump` chain up to it.
    pub(super) name: String,
    pub(super) key: ConnectionKey,
    pub(super) params: ResolvedConnectionParams,
    /// `host:port`, for messages.
    pub(super) address: String,
}

impl Hop {
    /// `bastion NAME (HOST:PORT)`, as every message about it names it.
    pub(super) fn describe(&self) -> String {
        format!("bastion {} ({})", self.name, self.address)
    }
}

/// The host's `extras.jump`, if it names a jump host.
fn jump_of(params: &ResolvedConnectionParams) -> Result<Option<String>, OpenError> {
    let Some(value) = params
        .extras
        .as_ref()
        .and_then(|extras| extras.get(JUMP_EXTRA))
    else {
        return Ok(None);
    };
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(jump) => {
            let jump = jump.trim();
            Ok((!jump.is_empty() && !jump.eq_ignore_ascii_case("none")).then(|| jump.to_owned()))
        }
        _ => Err(OpenError::new(
            FailureKind::Config,
            format!(
                "extras.{JUMP_EXTRA} of {} must be a string (a jump host's name or a ProxyJump \
                 chain)",
                params.hostname
            ),
        )),
    }
}

/// The hop `jump` names: a registered jump host, or the last hop of a `ProxyJump` chain,
/// whose own jump host is the chain before it.
fn hop(options: &SshOptions, jump: &str) -> Result<Hop, OpenError> {
    if let Some(params) = options.jump_hosts.get(jump) {
        let port = params.port.unwrap_or(options.port);
        return Ok(Hop {
            name: jump.to_owned(),
            key: ConnectionKey::new(jump, PLUGIN_NAME),
            params: params.clone(),
            address: format!("{}:{port}", params.hostname),
        });
    }
    let mut hops = parse_proxy_jump(jump)?;
    let Some(last) = hops.pop() else {
        return Err(OpenError::new(
            FailureKind::Config,
            format!("jump host {jump:?} names no host"),
        ));
    };
    // Kept as written, so that a registered name at the head of a chain stays a name.
    let before: Vec<&str> = jump.split(',').map(str::trim).collect();
    let via = before[..before.len().saturating_sub(1)].join(",");
    let hop = ProxyJumpHop {
        user: last.user.or_else(|| options.username.clone()),
        port: Some(last.port.unwrap_or(options.port)),
        host: last.host,
    };
    let port = hop.port.unwrap_or(options.port);
    // The whole way to it, so that one host reached by two different routes is two
    // connections, and never the same key as an inventory entry's name.
    let name = if via.is_empty() {
        hop.to_string()
    } else {
        format!("{via},{hop}")
    };
    // "none" for the first hop: its own way is the chain's, never its ssh config's
    // `ProxyJump` (a `Host *` block would send it through itself).
    let mut extras = Extras::new();
    let own_jump = if via.is_empty() {
        "none".to_owned()
    } else {
        via
    };
    extras.insert(JUMP_EXTRA.to_owned(), own_jump.into());
    let extras = Some(extras);
    let address = match hop.host.contains(':') {
        true => format!("[{}]:{port}", hop.host),
        false => format!("{}:{port}", hop.host),
    };
    Ok(Hop {
        key: ConnectionKey::new(name.clone(), PLUGIN_NAME),
        params: ResolvedConnectionParams {
            hostname: hop.host,
            port: Some(port),
            username: hop.user,
            extras,
            ..ResolvedConnectionParams::default()
        },
        name,
        address,
    })
}

/// The jump host that `params` are reached through, if any, after checking the whole chain:
/// a loop (a jump host reached through itself, or the host through itself) would have each
/// one wait for the next until the open timeout, so it is refused before anything opens.
///
/// `config_jump` is the ssh config's `ProxyJump` for the host, which serves when the params'
/// extras name no jump host at all (an explicit `"none"` or null keeps the host direct).
pub(super) fn route(
    options: &SshOptions,
    own: Option<&ConnectionKey>,
    params: &ResolvedConnectionParams,
    config_jump: Option<&str>,
) -> Result<Option<Hop>, OpenError> {
    let named = params
        .extras
        .as_ref()
        .is_some_and(|extras| extras.contains_key(JUMP_EXTRA));
    let jump = match jump_of(params)? {
        Some(jump) => jump,
        None if !named => match config_jump.map(str::trim) {
            Some(jump) if !jump.is_empty() && !jump.eq_ignore_ascii_case("none") => jump.to_owned(),
            _ => return Ok(None),
        },
        None => return Ok(None),
    };
    let first = hop(options, &jump)?;
    let mut seen: Vec<String> = own.map(|key| key.hostname.clone()).into_iter().collect();
    let mut current = first.clone();
    loop {
        if seen.contains(&current.key.hostname) {
            seen.push(current.key.hostname);
            return Err(OpenError::new(
                FailureKind::Config,
                format!(
                    "jump hosts of {} form a loop: {}",
                    params.hostname,
                    seen.join(" → ")
                ),
            ));
        }
        seen.push(current.key.hostname.clone());
        if seen.len() > MAX_HOPS {
            return Err(OpenError::new(
                FailureKind::Config,
                format!(
                    "{} is behind more than {MAX_HOPS} jump hosts: {}",
                    params.hostname,
                    seen.join(" → ")
                ),
            ));
        }
        match jump_of(&current.params)? {
            Some(next) => current = hop(options, &next)?,
            None => return Ok(Some(first)),
        }
    }
}

/// What a connection behind a jump host needs of it: its session, to open a channel on, and
/// its liveness, so that the connection behind it is dead the moment it is.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) session: Arc<Session>,
    pub(super) liveness: Arc<Liveness>,
}

/// An open jump host, ready to carry a host's session.
pub(super) struct Tunnel {
    hop: Hop,
    endpoint: Endpoint,
    /// The jump host's supervised connection, whose status says when it is lost.
    handle: ConnectionHandle,
}

/// Reports a host's session lost when its jump host is. The host's own session does end
/// with the channel under it, but russh 0.65 then never calls `Handler::disconnected`: its
/// session task returns early when shutting down the stream fails, which it always does for a
/// channel whose carrying session is gone. And a jump host found dead (a refused channel, a
/// failed health check) is only reconnected after its backoff: the hosts behind it should not
/// wait for that to hear of it. Stops watching when dropped.
pub(super) struct Cascade(tokio::task::JoinHandle<()>);

impl Drop for Cascade {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Tunnel {
    /// Whether the jump host's session is still usable: a host behind a dead one is dead too,
    /// before its own session notices.
    pub(super) fn is_alive(&self) -> bool {
        self.endpoint.liveness.is_alive() && !self.endpoint.session.is_closed()
    }

    /// `bastion NAME (HOST:PORT)`.
    pub(super) fn describe(&self) -> String {
        self.hop.describe()
    }

    /// Whether this tunnel goes through `hop` (what `prepare` made ready is what `open`
    /// wants, unless the params changed in between).
    pub(super) fn serves(&self, hop: &Hop) -> bool {
        self.hop.key == hop.key && self.hop.params == hop.params
    }

    /// Watches the jump host for as long as the returned value lives, and reports the session
    /// behind it lost through `lost` the moment the jump host leaves `Open` or is closed.
    pub(super) fn cascade(&self, lost: impl FnOnce(String) + Send + 'static) -> Cascade {
        let handle = self.handle.clone();
        let bastion = self.describe();
        Cascade(tokio::spawn(async move {
            // A bound that never runs out in practice: the watch ends with the jump host's
            // state, or is aborted with the session behind it.
            const FOREVER: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);
            loop {
                match handle
                    .wait_for_status(FOREVER, |status| status.state != ConnectionState::Open)
                    .await
                {
                    Ok(status) => {
                        return lost(format!("{bastion} was lost ({:?})", status.state));
                    }
                    Err(crate::Error::Timeout { .. }) => continue,
                    Err(_) => return lost(format!("{bastion} was closed")),
                }
            }
        }))
    }

    /// A direct-tcpip channel to `host:port` on the jump host's session, as a byte stream for
    /// the host's own SSH session.
    pub(super) async fn channel_to(
        &self,
        host: &str,
        port: u16,
    ) -> Result<ChannelStream<Msg>, OpenError> {
        let channel = self
            .endpoint
            .session
            // The originator is ours to name; OpenSSH's own -J sends 127.0.0.1 and port 0 too.
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|error| {
                let (kind, reason) = match &error {
                    russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed) => (
                        FailureKind::Refused,
                        "the bastion could not connect to it (connect failed)".to_owned(),
                    ),
                    // Retrying cannot help until the bastion's configuration changes.
                    russh::Error::ChannelOpenFailure(
                        ChannelOpenFailure::AdministrativelyProhibited,
                    ) => (
                        FailureKind::Auth,
                        "the bastion does not allow forwarding (administratively prohibited; \
                         OpenSSH: AllowTcpForwarding)"
                            .to_owned(),
                    ),
                    russh::Error::ChannelOpenFailure(other) => {
                        (FailureKind::Transport, format!("refused: {other:?}"))
                    }
                    _ if !self.is_alive() => (
                        FailureKind::Transport,
                        format!("the bastion's session ended ({error})"),
                    ),
                    _ => (FailureKind::Transport, error.to_string()),
                };
                OpenError::new(
                    kind,
                    format!(
                        "cannot open a channel to {host}:{port} through {}: {reason}",
                        self.describe()
                    ),
                )
            })?;
        Ok(channel.into_stream())
    }
}

/// Opens `hop` through the supervisor that `link` is bound to (or finds it open) and takes
/// its session with `endpoint`, run on the jump host's connection (of type `C`, the SSH
/// plugin's: named by the caller, so that this file does not depend on the connection's).
/// Waits for a reconnect of the jump host in progress; the caller's open timeout bounds it.
pub(super) async fn reach<C: Connection>(
    link: Option<&SupervisorLink>,
    hop: Hop,
    endpoint: fn(&C) -> Option<Endpoint>,
) -> Result<Tunnel, OpenError> {
    let Some(manager) = link.and_then(|link| link.manager.get()) else {
        return Err(OpenError::new(
            FailureKind::Config,
            format!(
                "{} needs a factory linked to its supervisor: build the factory with \
                 ssh::factory_with_link and bind the link to the manager",
                hop.describe()
            ),
        ));
    };
    let cannot = |kind: FailureKind, why: String| {
        OpenError::new(kind, format!("cannot reach {}: {why}", hop.describe()))
    };
    // A jump host that gave up for a permanent reason (its login rejected, its host key
    // refused) stays given up until someone opens, retries or closes it, as any connection
    // does: every host behind it asking again would put one more rejected login on the
    // bastion per host, the kind of burst that gets a source address locked out.
    if let Ok(Some(status)) = manager.connection_status(&hop.key).await
        && status.state == ConnectionState::Failed
        && let Some(cause) = status.last_error.filter(|cause| cause.kind.is_permanent())
    {
        return Err(cannot(
            cause.kind,
            format!(
                "it failed and is not tried again until it is opened, retried or closed: {}",
                cause.message
            ),
        ));
    }
    let handle = manager
        .open_connection(&hop.key, &hop.params)
        .await
        .map_err(|error| {
            let kind = error.failure_kind().unwrap_or(FailureKind::Transport);
            cannot(kind, error.to_string())
        })?
        .ok_or_else(|| {
            cannot(
                FailureKind::Config,
                format!("the factory makes no connection for {}", hop.key),
            )
        })?;
    let endpoint = handle
        .with(
            move |connection: &mut C| -> BoxFuture<'_, Option<Endpoint>> {
                futures::future::ready(endpoint(connection)).boxed()
            },
        )
        .await
        .map_err(|error| cannot(FailureKind::Transport, error.to_string()))?
        .ok_or_else(|| {
            cannot(
                FailureKind::Transport,
                "its session ended as it was opened".to_owned(),
            )
        })?;
    Ok(Tunnel {
        hop,
        endpoint,
        handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_jump(hostname: &str, jump: &str) -> ResolvedConnectionParams {
        let mut extras = Extras::new();
        extras.insert(JUMP_EXTRA.to_owned(), jump.into());
        ResolvedConnectionParams {
            hostname: hostname.to_owned(),
            extras: Some(extras),
            ..ResolvedConnectionParams::default()
        }
    }

    #[test]
    fn a_chain_is_reached_hop_by_hop_each_hop_through_the_ones_before() {
        let options = SshOptions::default()
            .username("ops")
            .jump_host("b1", ResolvedConnectionParams::new("10.0.0.1"));
        let target = with_jump("10.9.9.9", "b1,admin@10.0.0.2:2202,10.0.0.3");
        let last = route(&options, None, &target, None)
            .expect("a valid chain")
            .expect("a jump host");
        assert_eq!(last.key.hostname, "b1,admin@10.0.0.2:2202,ops@10.0.0.3:22");
        assert_eq!(last.address, "10.0.0.3:22");
        assert_eq!(last.params.username.as_deref(), Some("ops"));
        let middle = hop(&options, "b1,admin@10.0.0.2:2202").expect("a hop");
        assert_eq!(middle.key.hostname, "b1,admin@10.0.0.2:2202");
        assert_eq!(middle.params.port, Some(2202));
        assert_eq!(
            jump_of(&middle.params).expect("a string"),
            Some("b1".into())
        );
        // The head of the chain is the registered jump host, under its own name.
        let head = hop(&options, "b1").expect("registered");
        assert_eq!(head.key, ConnectionKey::new("b1", PLUGIN_NAME));
        assert_eq!(head.describe(), "bastion b1 (10.0.0.1:22)");
        assert!(
            route(&options, None, &ResolvedConnectionParams::new("r1"), None)
                .expect("ok")
                .is_none()
        );
        // The ssh config's ProxyJump serves when the extras name none; "none" keeps it direct.
        let via_config = route(
            &options,
            None,
            &ResolvedConnectionParams::new("r1"),
            Some("b1"),
        );
        assert_eq!(
            via_config.expect("ok").expect("a jump host").key.hostname,
            "b1"
        );
        let direct = route(&options, None, &with_jump("r1", "none"), Some("b1"));
        assert!(direct.expect("ok").is_none());
        assert!(
            route(&options, None, &with_jump("r1", "none"), None)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn loops_of_jump_hosts_are_refused_before_anything_opens() {
        let options = SshOptions::default()
            .jump_host("b1", with_jump("10.0.0.1", "b2"))
            .jump_host("b2", with_jump("10.0.0.2", "b1"));
        let error = route(&options, None, &with_jump("r1", "b1"), None).expect_err("a loop");
        assert_eq!(error.kind(), FailureKind::Config);
        assert!(error.message().contains("b1 → b2 → b1"), "{error}");
        // A host that is its own jump host.
        let own = ConnectionKey::new("b3", PLUGIN_NAME);
        let options = options.jump_host("b3", with_jump("10.0.0.3", "b3"));
        let error =
            route(&options, Some(&own), &with_jump("10.0.0.3", "b3"), None).expect_err("loop");
        assert!(error.message().contains("b3 → b3"), "{error}");
        // Not a string.
        let mut params = ResolvedConnectionParams::new("r1");
        params.extras = Some(Extras::from([(JUMP_EXTRA.to_owned(), 7.into())]));
        let error = route(&options, None, &params, None).expect_err("not a string");
        assert_eq!(error.kind(), FailureKind::Config);
    }
}
