//! The SSH plugin (feature `ssh`, on by default): real SSH through [russh], with verified host
//! keys, authentication as OpenSSH's `ssh` does it, parallel commands over one session, and loss
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
//! # Authentication
//!
//! As OpenSSH's `ssh` does it: the server is first asked which methods it offers (a `none`
//! request), and ours are tried in OpenSSH's order among those it offers, each skipped once
//! the server stops offering it:
//!
//! 1. **publickey**: the identities of an ssh-agent when [`SshOptions::agent`] is on (its
//!    socket from [`SshOptions::agent_socket`], else `SSH_AUTH_SOCK`), then each private key
//!    ([`SshOptions::identities`], added with [`SshOptions::identity_file`] as OpenSSH's
//!    repeatable `IdentityFile`; a key file the agent already offered is skipped), decrypted
//!    with [`SshOptions::private_key_passphrase`] when encrypted, each followed by the OpenSSH
//!    user certificate beside it (`KEY-cert.pub`) if there is one;
//! 2. **keyboard-interactive**: prompts with echo off (password prompts) are answered with the
//!    password, once; others with an empty answer, and a round without prompts with no answers;
//! 3. **password**.
//!
//! Per host, the params' `password` and the extras `private_key_path` or `private_key` (which
//! replace the options' keys), `private_key_passphrase` (or `passphrase`) and `agent` (a
//! bool) take precedence over [`SshOptions`].
//!
//! A refusal is [`FailureKind::Auth`](crate::FailureKind::Auth) and says what was tried and
//! what the server offers: `127.0.0.1:2222 rejected user admin: tried publickey (2 keys),
//! keyboard-interactive; the server offers publickey,password`. A key file that cannot be read
//! or decrypted (the passphrase missing or wrong), or an agent that cannot be reached, is passed
//! over as `ssh` passes over it; if nothing else gets in, the failure is
//! [`FailureKind::Config`](crate::FailureKind::Config) naming the file or the agent's socket
//! (never a password, passphrase or key), since that is what to fix. Both are permanent: the
//! supervisor does not retry them in a loop.
//!
//! The core knows nothing of SSH: this module only implements
//! [`Connection`] and [`CommandRunner`](crate::CommandRunner).
//!
//! Files: `options.rs` (what can be set), `session.rs` (the connection and its command
//! runner), `channel.rs` (one command on its channel, and the channel's cleanup when the
//! command is abandoned), `auth.rs` (credentials and authentication; `auth/agent.rs`, keys
//! through an ssh-agent), `identities.rs` (reading and decrypting keys, certificates beside
//! them), `host_keys.rs` (russh's callbacks: host-key checks and loss reports).

use std::sync::Arc;

use crate::connection::{Connection, ConnectionFactory, ConnectionKey};

mod auth;
mod channel;
mod host_keys;
mod identities;
mod options;
mod session;

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
