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
//! # OpenSSH client config
//!
//! [`SshOptions::ssh_config`] names an `ssh_config(5)` file ([`SshOptions::user_ssh_config`]:
//! `~/.ssh/config` when it exists). It is read at every open and its `Host` blocks are matched
//! against the params' `hostname`, as `ssh NAME` matches `NAME`. What it says comes after the
//! params and their extras, and before the options:
//!
//! | keyword | applied as |
//! | --- | --- |
//! | `HostName` (`%h` expanded) | the address connected to, and checked in known_hosts |
//! | `Port`, `User` | when the params give none |
//! | `ConnectTimeout` | when `extras.connect_timeout` gives none |
//! | `ServerAliveInterval` | the keepalive interval (`0`: off) |
//! | `StrictHostKeyChecking` | `yes`/`ask`: strict, `accept-new`, `no`/`off`: any key |
//! | `UserKnownHostsFile` | the known_hosts file of the host-key policy |
//!
//! [`SshClientConfig::host`] gives the rest too ([`SshHostConfig`]: `IdentityFile`,
//! `ProxyJump`, the algorithm lists as OpenSSH strings). `Match` blocks other than `Match all`
//! are skipped (the parser, `ssh2-config`, has no `Match`). No config is read by default: a
//! library should not let the `Host *` lines of whoever runs the program change where it
//! connects or how host keys are checked; the fleet tool, a command like `ssh`, reads
//! `~/.ssh/config` unless its inventory says `ssh_config = "none"`.
//!
//! # Stages and timeouts
//!
//! An open goes through DNS, TCP connect, the server's banner, the key exchange (with the
//! host-key check), authentication; commands then open channels. Each fails with its own
//! message naming `host:port`: "TCP connect to 10.0.0.9:22 failed: Connection refused", "no
//! SSH banner from 127.0.0.1:2299 within 2 s", "key exchange with 10.0.0.9:22 did not finish
//! within 5 s", "host key ... of 10.0.0.9:22 is not in ...", "10.0.0.9:22 rejected password
//! for user admin", "cannot open a channel on 10.0.0.9:22: ...". The connect timeout
//! (`extras.connect_timeout` in seconds, the config's `ConnectTimeout`,
//! [`SshOptions::connect_timeout`], in that order) bounds TCP connect, banner and key exchange
//! together, like OpenSSH's `ConnectTimeout`; its expiry is
//! [`FailureKind::Timeout`](crate::FailureKind::Timeout). Without one, only the supervisor's
//! open timeout bounds them, and its message names neither stage nor address: set one.
//! Authentication is bounded by the open timeout alone.
//! Network devices that want an interactive shell (prompt, pager, `enable`, configuration
//! mode) are driven through one when the params' `platform` names a CLI profile: see [`cli`].
//!
//! # Jump hosts
//!
//! A host behind a bastion names it in `extras.jump`: the name of a jump host registered with
//! [`SshOptions::jump_host`] (whose own params may name another: a chain), or an OpenSSH
//! `ProxyJump` chain `[user@]host[:port],...` whose hops use the options' credentials
//! ([`parse_proxy_jump`] reads one). Without `extras.jump`, the ssh config's `ProxyJump` for the
//! host serves. The host's SSH session runs over a direct-tcpip channel on the bastion's
//! session, as `ssh -J` does.
//!
//! The bastion is a supervised connection of its own, keyed `(name, "ssh")` (for a
//! `ProxyJump` hop, the chain up to it), in the same supervisor: every host behind it shares
//! its one session, opened by the first host that needs it. That takes a factory linked to the
//! supervisor:
//!
//! ```no_run
//! use connection_supervisor::{ConnectionKey, ConnectionManager, ResolvedConnectionParams};
//! use connection_supervisor::ssh::{self, SshOptions};
//!
//! # async fn run() -> Result<(), connection_supervisor::Error> {
//! let bastion = ResolvedConnectionParams::new("bastion.example.net");
//! let options = SshOptions::default().username("ops").jump_host("b1", bastion);
//! let (factory, link) = ssh::factory_with_link(options);
//! let manager = ConnectionManager::with_connection_factory(factory).await?;
//! link.bind(&manager);
//! let mut params = ResolvedConnectionParams::new("10.0.0.5");
//! params.extras = Some([("jump".to_owned(), "b1".into())].into());
//! let router = manager.open_connection(&ConnectionKey::new("r5", "ssh"), &params).await?;
//! # let _ = router; Ok(()) }
//! ```
//!
//! - **Opens.** A host opens its bastion (or finds it open) before its own open takes an open
//!   slot ([`Connection::prepare`]), so any number of hosts waiting for one bastion cannot hold
//!   every slot while the bastion waits for one. A bastion that is reconnecting is waited for,
//!   within the host's open timeout.
//! - **Losses cascade.** When the bastion's session ends (reset, keepalive timeout, a
//!   reconnect, a close), the channels through it end, and every host behind it notices and is
//!   lost at once; their reconnects open the bastion again, or wait for its own reconnect, and
//!   come back through it.
//! - **Closing the bastion's key** while hosts use it ends their sessions too; their
//!   reconnects then open the bastion again under the same key. It stays wanted for as long as
//!   hosts behind it are: close those first (or close all) to take everything down.
//! - **Errors name the stage and the bastion**: `cannot reach bastion b1 (10.0.0.1:22): ...`
//!   (with the bastion's own failure kind, so a rejected login to the bastion is an `Auth`
//!   failure of the host), `cannot open a channel to 10.0.0.5:22 through bastion b1
//!   (10.0.0.1:22): ...`, and a handshake failure `... (through bastion b1 (10.0.0.1:22))`. A
//!   loop of jump hosts is refused before anything opens.
//! - **No burst of rejected logins**: a bastion that gave up for a permanent reason (login
//!   rejected, host key refused) is not tried again for each host behind it, only once it is
//!   opened, retried or closed.
//!
//! The core knows nothing of SSH: this module only implements
//! [`Connection`] and [`CommandRunner`](crate::CommandRunner). Jump hosts are the one place it
//! uses the client API: a [`ConnectionManager`](crate::ConnectionManager), through the
//! [`SupervisorLink`].
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
//!
//! Files: `options.rs` (what can be set), `ssh_config.rs` (OpenSSH client config files),
//! `target.rs` (params, config and options merged for one open), `session.rs` (the connection
//! and its command runner), `handshake.rs` (TCP connect, banner and key exchange, each with its
//! own error), `algorithms.rs` (the algorithm policy), `known_hosts.rs` (reading and matching a
//! known_hosts file), `host_keys.rs` (russh's callbacks: host-key checks and loss reports),
//! `auth.rs` (credentials and authentication; `auth/agent.rs`, keys through an ssh-agent),
//! `identities.rs` (reading and decrypting keys, certificates beside them), `channel.rs` (one
//! command on its channel, and its cleanup when the command is abandoned), `jump.rs` (jump
//! hosts) and `proxy_jump.rs` (OpenSSH's `ProxyJump` syntax), `cli/` (platform profiles and
//! the PTY shell of network devices).

use std::sync::Arc;

use crate::connection::{Connection, ConnectionFactory, ConnectionKey};

mod algorithms;
mod auth;
mod channel;
pub mod cli;
mod handshake;
mod host_keys;
mod identities;
mod jump;
mod known_hosts;
mod options;
mod proxy_jump;
mod session;
mod ssh_config;
mod target;

pub use algorithms::{AlgorithmError, AlgorithmList, AlgorithmLists, AlgorithmPolicy};
pub use cli::{PlatformProfile, Platforms, ProfileError};
pub use jump::SupervisorLink;
pub use options::{HostKeyPolicy, PrivateKeySource, SshOptions};
pub use proxy_jump::{ProxyJumpHop, parse_proxy_jump};
pub use session::SshConnection;
pub use ssh_config::{SshClientConfig, SshConfigFile, SshHostConfig, StrictHostKeyChecking};

/// The plugin name the SSH factory serves.
pub const PLUGIN_NAME: &str = "ssh";

/// A factory that makes an [`SshConnection`] for keys whose plugin is [`PLUGIN_NAME`], and
/// `None` for any other plugin. Its connections cannot use jump hosts: for those, use
/// [`factory_with_link`].
pub fn factory(options: SshOptions) -> Arc<ConnectionFactory> {
    factory_with_link(options).0
}

/// [`factory`], and the link through which its connections open their jump hosts: bind it to
/// the manager once the manager is built ([`SupervisorLink::bind`]). Until then, a host behind
/// a jump host fails to open with [`FailureKind::Config`](crate::FailureKind::Config).
pub fn factory_with_link(options: SshOptions) -> (Arc<ConnectionFactory>, SupervisorLink) {
    let options = Arc::new(options);
    let link = SupervisorLink::default();
    let shared = link.clone();
    let factory = Arc::new(move |key: &ConnectionKey| {
        (key.plugin_name == PLUGIN_NAME).then(|| {
            let connection = SshConnection::linked(options.clone(), key.clone(), shared.clone());
            Box::new(connection) as Box<dyn Connection>
        })
    });
    (factory, link)
}
