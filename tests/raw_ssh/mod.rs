//! A minimal russh client for exercising SSH servers in tests: connect with or without host-key
//! checking, log in, run `exec` requests and see the session end, with nothing of the
//! supervisor or the SSH plugin in between.
//!
//! Named `raw_ssh` (not `common`) so it does not collide with `tests/common/mod.rs`.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, DisconnectReason};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::sync::oneshot;

/// How the client decides whether to trust the server's host key.
#[derive(Clone)]
pub enum HostKeyCheck {
    /// Trust any key (for tests about something else).
    AcceptAny,
    /// Trust only a key recorded for `(host, port)` in this known_hosts file, using russh's own
    /// known_hosts lookup.
    KnownHosts {
        host: String,
        port: u16,
        path: PathBuf,
    },
}

pub struct TestClient {
    check: HostKeyCheck,
    disconnected: Option<oneshot::Sender<()>>,
}

impl client::Handler for TestClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match &self.check {
            HostKeyCheck::AcceptAny => Ok(true),
            HostKeyCheck::KnownHosts { host, port, path } => {
                let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
                    return Ok(false);
                };
                // A changed key is an error from russh; either way the key is not trusted.
                Ok(russh::keys::check_known_hosts_path(host, *port, key, path).unwrap_or(false))
            }
        }
    }

    async fn disconnected(
        &mut self,
        _reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.disconnected.take() {
            let _ = tx.send(());
        }
        Ok(())
    }
}

/// A connected (not yet authenticated) client and a receiver that fires when the session ends.
pub struct Connection {
    pub handle: client::Handle<TestClient>,
    pub disconnected: oneshot::Receiver<()>,
}

pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        // Nagle costs ~40 ms per round trip on loopback.
        nodelay: true,
        ..Default::default()
    })
}

pub async fn connect(addr: SocketAddr, check: HostKeyCheck) -> Result<Connection, russh::Error> {
    let (tx, rx) = oneshot::channel();
    let client = TestClient {
        check,
        disconnected: Some(tx),
    };
    let handle = client::connect(client_config(), addr, client).await?;
    Ok(Connection {
        handle,
        disconnected: rx,
    })
}

pub async fn login_password(addr: SocketAddr, user: &str, password: &str) -> Connection {
    let mut conn = connect(addr, HostKeyCheck::AcceptAny).await.unwrap();
    assert!(
        auth_password(&mut conn, user, password).await,
        "password login as {user} failed"
    );
    conn
}

/// Whether the server accepted `user` with `password` on this connection.
pub async fn auth_password(conn: &mut Connection, user: &str, password: &str) -> bool {
    conn.handle
        .authenticate_password(user, password)
        .await
        .unwrap()
        .success()
}

pub async fn auth_key(conn: &mut Connection, user: &str, key: &PrivateKey) -> bool {
    let hash = conn
        .handle
        .best_supported_rsa_hash()
        .await
        .unwrap()
        .flatten();
    conn.handle
        .authenticate_publickey(
            user,
            PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash),
        )
        .await
        .unwrap()
        .success()
}

/// What one `exec` produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_status: Option<u32>,
}

pub async fn exec(handle: &client::Handle<TestClient>, command: &str) -> ExecOutput {
    let mut channel = handle.channel_open_session().await.unwrap();
    channel.exec(true, command).await.unwrap();
    let mut out = ExecOutput::default();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
            _ => {}
        }
    }
    out.stdout = String::from_utf8(stdout).unwrap();
    out.stderr = String::from_utf8(stderr).unwrap();
    out
}

pub async fn disconnect(handle: &client::Handle<TestClient>) {
    let _ = handle.disconnect(Disconnect::ByApplication, "", "").await;
}

/// Waits for a session-end notification, failing the test if it takes longer than `limit`.
pub async fn wait_disconnected(rx: oneshot::Receiver<()>, limit: Duration) {
    tokio::time::timeout(limit, rx)
        .await
        .expect("client did not see the session end in time")
        .expect("client handler dropped without reporting the end");
}

/// Waits until the channel is gone (messages still queued on it, such as the reply to its
/// `exec`, are skipped), failing the test if that takes longer than `limit`.
pub async fn wait_channel_closed(channel: &mut russh::Channel<client::Msg>, limit: Duration) {
    tokio::time::timeout(limit, async { while channel.wait().await.is_some() {} })
        .await
        .expect("channel still open");
}

/// A unique path in the temp dir, removed when the value drops.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("cs-raw-ssh-{}-{n}-{tag}", std::process::id())))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
