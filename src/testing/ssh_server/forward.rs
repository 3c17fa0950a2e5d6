//! The test server as a bastion: direct-tcpip channels (what `ssh -J` and jump hosts open),
//! each connected to the address the client asks for and copied both ways, and counted so
//! that a test can check how many connections went through it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::SshTestServer;
use super::channels::Gauge;

impl SshTestServer {
    /// Number of direct-tcpip channels (a client using the server as a jump host, as `ssh -J`
    /// does) accepted and connected to their target since the server was created. A channel
    /// to an address that refuses is rejected with `ConnectFailed` and not counted.
    pub fn forwarded_connections(&self) -> u64 {
        self.shared.forwarding.forwarded.load(Ordering::SeqCst)
    }

    /// Number of forwarded connections still open; each ends with its channel or its session.
    pub fn open_forwarded_connections(&self) -> usize {
        self.shared.forwarding.open.count()
    }

    /// Makes every later direct-tcpip channel be refused as administratively prohibited
    /// (`true`), as OpenSSH with `AllowTcpForwarding no` does, or forwarded again (`false`).
    pub fn set_refuse_forwarding(&self, refuse: bool) {
        self.shared
            .forwarding
            .refuse
            .store(refuse, Ordering::SeqCst);
    }
}

/// What the server's sessions share about forwarding.
#[derive(Default)]
pub(super) struct Forwarding {
    /// Refuse every direct-tcpip channel, as OpenSSH with `AllowTcpForwarding no` does.
    pub(super) refuse: AtomicBool,
    /// Channels accepted and connected, since the server was created.
    pub(super) forwarded: AtomicU64,
    /// Forwarded connections still open.
    pub(super) open: Gauge,
}

/// Answers a direct-tcpip channel open: connects to `host:port` on a task of the session's
/// (`tasks`, aborted with the session, which ends the forwarded connection with it), accepts
/// the channel once connected or rejects it with `ConnectFailed` as OpenSSH does, then copies
/// bytes both ways until either side ends.
pub(super) fn open(
    forwarding: &std::sync::Arc<Forwarding>,
    tasks: &mut JoinSet<()>,
    channel: Channel<Msg>,
    host: &str,
    port: u32,
    reply: ChannelOpenHandle,
) {
    let forwarding = forwarding.clone();
    let target = (host.to_owned(), u16::try_from(port).unwrap_or(0));
    tasks.spawn(async move {
        if forwarding.refuse.load(Ordering::SeqCst) {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        let mut upstream = match TcpStream::connect((target.0.as_str(), target.1)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, host = %target.0, port = target.1, "SSH test server: cannot forward");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let _open = forwarding.open.enter();
        forwarding.forwarded.fetch_add(1, Ordering::SeqCst);
        reply.accept().await;
        let mut channel = channel.into_stream();
        // Ends when either side closes; errors only mean one side went away.
        let _ = tokio::io::copy_bidirectional(&mut channel, &mut upstream).await;
    });
}
