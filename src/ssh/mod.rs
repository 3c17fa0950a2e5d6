//! The SSH plugin (feature `ssh`, on by default): real SSH through [russh], with verified host
//! keys, password and public-key authentication, parallel commands over one session, and loss
//! reported to the supervisor the moment the session ends.
//!
//! ```no_run
//! use connection_supervisor::{ConnectionKey, ConnectionManager, ResolvedConnectionParams};
//! use connection_supervisor::ssh::{self, HostKeyPolicy, SshOptions};
//!
//! # async fn run() -> Result<(), connection_supervisor::Error> {
//! let options = SshOptions::default()
//!     .host_key_policy(HostKeyPolicy::Strict("/etc/fleet/known_hosts".into()));
//! let manager = ConnectionManager::with_connection_factory(ssh::factory(options)).await?;
//! let params = ResolvedConnectionParams {
//!     hostname: "10.0.0.1".into(),
//!     username: Some("admin".into()),
//!     password: Some("secret".into()),
//!     ..Default::default()
//! };
//! let router = manager
//!     .open_connection(&ConnectionKey::new("r1", ssh::PLUGIN_NAME), &params)
//!     .await?
//!     .expect("the ssh factory serves plugin \"ssh\"");
//! let output = router.run_command("show version").await?;
//! println!("{} (exit {:?})", output.stdout, output.exit_status);
//! # Ok(()) }
//! ```
//!
//! Each command runs on a channel of its own. A command that runs out of time, or whose
//! caller's future is dropped, does not leave its channel behind: the remote process is sent
//! `TERM` (OpenSSH honours the `signal` request since 7.9) and the channel is closed, so
//! abandoned commands cannot fill the server's channel limit (OpenSSH's `MaxSessions`). A
//! session on which the server refuses a channel is reported lost and reconnected.
//!
//! The core knows nothing of SSH: this module only implements
//! [`Connection`] and [`CommandRunner`](crate::CommandRunner).
//!
//! Files: `options.rs` (what can be set), `session.rs` (the connection and its command
//! runner), `channel.rs` (one command on its channel, and the channel's cleanup when the
//! command is abandoned), `auth.rs` (credentials and authentication), `host_keys.rs` (russh's
//! callbacks: host-key checks and loss reports).

use std::sync::Arc;

use crate::connection::{Connection, ConnectionFactory, ConnectionKey};

mod algorithms;
mod auth;
mod channel;
mod host_keys;
mod known_hosts;
mod options;
mod session;

pub use algorithms::{AlgorithmError, AlgorithmList, AlgorithmLists, AlgorithmPolicy};
pub use options::{HostKeyPolicy, PrivateKeySource, SshOptions};
pub use session::SshConnection;

/// The plugin name the SSH factory serves.
pub const PLUGIN_NAME: &str = "ssh";

/// A factory that makes an [`SshConnection`] for keys whose plugin is [`PLUGIN_NAME`], and
/// `None` for any other plugin.
pub fn factory(options: SshOptions) -> Arc<ConnectionFactory> {
    let options = Arc::new(options);
    Arc::new(move |key: &ConnectionKey| {
        (key.plugin_name == PLUGIN_NAME)
            .then(|| Box::new(SshConnection::new(options.clone())) as Box<dyn Connection>)
    })
}
