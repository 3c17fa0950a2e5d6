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
//! callbacks: host-key checks and loss reports), `known_hosts.rs` (reading and matching a
//! known_hosts file), `algorithms.rs` (the algorithm policy).
//!
//! # Algorithms and host keys
//!
//! [`AlgorithmPolicy::Modern`], the default, offers russh's defaults: ML-KEM and curve25519,
//! Diffie-Hellman group exchange and groups 14 to 18 with SHA-2, chacha20-poly1305, AES-GCM and
//! AES-CTR, SHA-2 MACs. [`AlgorithmPolicy::Legacy`] adds what old gear still speaks:
//! `diffie-hellman-group14-sha1`, `diffie-hellman-group1-sha1`,
//! `diffie-hellman-group-exchange-sha1`, the `aes*-cbc` ciphers and `hmac-sha1`; `ssh-rsa` (SHA-1)
//! host-key signatures are accepted by both, as russh does by default (OpenSSH 8.8 and later need
//! `HostKeyAlgorithms=+ssh-rsa` for them). With the crate feature `legacy-crypto`, Legacy adds
//! `3des-cbc` and `ssh-dss` too. [`AlgorithmPolicy::Lists`] takes OpenSSH's own syntax per list
//! (`KexAlgorithms`, `Ciphers`, `MACs`, `HostKeyAlgorithms`): `a,b` replaces the default list,
//! `+a,b` appends, `-a,b` removes (`*` and `?` allowed), `^a,b` puts them first. A name the plugin
//! does not know is a [`FailureKind::Config`](crate::FailureKind::Config) error naming it and its
//! list.
//!
//! Per host, the `algorithms` extra overrides [`SshOptions::algorithms`]:
//! `"modern"`, `"legacy"`, or an object `{"kex": .., "ciphers": .., "macs": ..,
//! "host_key_algorithms": ..}` whose values are such strings or arrays of names (an array
//! replaces the list).
//!
//! Host-key algorithms are ordered as `ssh` orders them: the types the known_hosts file already
//! holds for `host:port` (hashed entries included) come first, so a server whose first choice
//! is a type we have not recorded still shows a key we can check. Certificate algorithms are
//! offered only when a `@cert-authority` line matches the host; such a certificate is trusted when
//! it is a host certificate, inside its validity period, and its principals (if any) name the
//! host. A key listed under `@revoked` (or a certificate whose signer is) is refused whatever
//! else the file says. A refusal ([`FailureKind::HostKey`](crate::FailureKind::HostKey)) says
//! which case it is: no known_hosts file, host not listed (with the key's fingerprint, the file,
//! and the types it is listed with), key changed (with the line), key revoked (with the line).
//!
//! When no algorithm is in common the open fails with
//! [`FailureKind::Negotiation`](crate::FailureKind::Negotiation); the message names the list,
//! both sides' algorithms, and the setting that would fix it.
//!
//! ```
//! use connection_supervisor::ssh::{AlgorithmList, AlgorithmLists, AlgorithmPolicy, SshOptions};
//!
//! // What `ssh -o KexAlgorithms=+diffie-hellman-group14-sha1 -o Ciphers=+aes128-cbc` offers.
//! let lists = AlgorithmLists::new()
//!     .set(AlgorithmList::Kex, "+diffie-hellman-group14-sha1")?
//!     .set(AlgorithmList::Ciphers, "+aes128-cbc")?;
//! let options = SshOptions::default().algorithms(AlgorithmPolicy::Lists(lists));
//! # let _ = options;
//! assert!(AlgorithmLists::new().set(AlgorithmList::Ciphers, "+blowfish-cbc").is_err());
//! # Ok::<(), connection_supervisor::ssh::AlgorithmError>(())
//! ```

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
