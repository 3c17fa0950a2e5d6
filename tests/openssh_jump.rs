//! Jump hosts against OpenSSH: the fixture's bastion sshd (`AllowTcpForwarding yes`,
//! `LogLevel DEBUG1`) and a target sshd reached through it (`scripts/sshd-fixture.sh start`,
//! the `SSHD_JUMP_*` lines of fixture.env). Each configuration also runs OpenSSH's `ssh` with
//! `-J` or a `-F` config file with `ProxyJump`, and the plugin must succeed exactly where `ssh`
//! does.
//!
//! Without fixture.env each test prints a note and passes, unless `CI` is set: then it fails.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connection_supervisor::ssh::{self, HostKeyPolicy, PrivateKeySource, SshOptions};
use connection_supervisor::{
    Backoff, ConnectionKey, ConnectionManager, ConnectionPolicy, Error, EventKind, EventStream,
    FailureKind, ResolvedConnectionParams, SupervisorConfig,
};
use tokio::sync::{Mutex, MutexGuard};

/// The tests share the bastion, and one of them kills its sessions.
static LOCK: Mutex<()> = Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct Fixture {
    user: String,
    key: PathBuf,
    bastion_port: u16,
    target_port: u16,
    known_hosts: PathBuf,
    bastion_log: PathBuf,
    bastion_pidfile: PathBuf,
    scratch: PathBuf,
}

impl Fixture {
    fn load() -> Option<Self> {
        let dir: PathBuf = match std::env::var_os("SSHD_FIXTURE_DIR") {
            Some(dir) if !dir.is_empty() => dir.into(),
            _ => "/tmp/cs-sshd-fixture".into(),
        };
        let path = dir.join("fixture.env");
        let text = std::fs::read_to_string(&path).ok()?;
        let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        // A fixture started by an older script has no jump servers: treated as not running.
        vars.get("SSHD_JUMP_BASTION_PORT")?;
        let var = |name: &str| {
            vars.get(name)
                .copied()
                .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
        };
        let scratch = std::env::temp_dir().join(format!("cs-openssh-jump-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        Some(Self {
            user: var("SSHD_USER").to_owned(),
            key: var("SSHD_KEY").into(),
            bastion_port: var("SSHD_JUMP_BASTION_PORT").parse().unwrap(),
            target_port: var("SSHD_JUMP_TARGET_PORT").parse().unwrap(),
            known_hosts: var("SSHD_JUMP_KNOWN_HOSTS").into(),
            bastion_log: var("SSHD_JUMP_BASTION_LOG").into(),
            bastion_pidfile: var("SSHD_JUMP_BASTION_PIDFILE").into(),
            scratch,
        })
    }

    fn bastion(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.bastion_port)
    }

    /// A `-F` config for `ssh`: the fixture's key and known_hosts for every host (jump hosts
    /// included, which `-o` options would not reach), no prompts; `extra` lines appended.
    fn ssh_config(&self, name: &str, key: &Path, extra: &str) -> PathBuf {
        let path = self.scratch.join(name);
        let text = format!(
            "Host *\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n{extra}",
            self.user,
            key.display(),
            self.known_hosts.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `ssh -F config ARGS... echo jumped` (ARGS end with the destination); its stdout
    /// on success, stderr on failure.
    fn ssh(&self, config: &Path, args: &[&str]) -> Result<String, String> {
        let output = Command::new("ssh")
            .arg("-F")
            .arg(config)
            .args(args)
            .args(["echo", "jumped"])
            .output()
            .expect("the ssh client runs");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The bastion's log lines that contain `needle`.
    fn bastion_log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.bastion_log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// What the bastion logs for each forwarded connection to `port`.
    fn forwards_to(&self, port: u16) -> usize {
        self.bastion_log_count(&format!(
            "server_request_direct_tcpip: originator 127.0.0.1 port 0, target 127.0.0.1 port {port}"
        )) + self.bastion_log_count(&format!(
            "server_request_direct_tcpip: originator 127.0.0.1 port 65535, target 127.0.0.1 port {port}"
        ))
    }

    fn logins(&self) -> usize {
        self.bastion_log_count(&format!("Accepted publickey for {}", self.user))
    }

    fn params(&self, port: u16) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            hostname: "127.0.0.1".into(),
            port: Some(port),
            username: Some(self.user.clone()),
            ..ResolvedConnectionParams::default()
        }
    }

    fn behind(&self, port: u16, jump: &str) -> ResolvedConnectionParams {
        ResolvedConnectionParams {
            extras: Some([("jump".to_owned(), jump.into())].into()),
            ..self.params(port)
        }
    }

    /// Key login everywhere (the options' key serves the targets and the jump hosts alike),
    /// host keys checked strictly against the jump servers' known_hosts, and the bastion
    /// registered as `bastion`.
    fn options(&self) -> SshOptions {
        SshOptions::default()
            .username(self.user.clone())
            .private_key(PrivateKeySource::Path(self.key.clone()))
            .host_key_policy(HostKeyPolicy::Strict(self.known_hosts.clone()))
            .jump_host("bastion", self.params(self.bastion_port))
    }
}

async fn setup(test: &str) -> Option<(MutexGuard<'static, ()>, Fixture)> {
    let lock = LOCK.lock().await;
    if let Some(fixture) = Fixture::load() {
        return Some((lock, fixture));
    }
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        panic!(
            "OpenSSH fixture with jump servers not running (no SSHD_JUMP_* in fixture.env; CI is set)"
        );
    }
    eprintln!(
        "{test}: skipped, OpenSSH fixture with jump servers not running: run (or stop and \
         restart) scripts/sshd-fixture.sh start"
    );
    None
}

async fn linked_manager(options: SshOptions) -> (ConnectionManager, EventStream) {
    let policy = ConnectionPolicy::default().first_open_attempts(1).backoff(
        Backoff::default()
            .initial(Duration::from_millis(50))
            .max(Duration::from_millis(200)),
    );
    let (factory, link) = ssh::factory_with_link(options);
    let manager =
        ConnectionManager::spawn(SupervisorConfig::default().factory(factory).policy(policy))
            .await
            .unwrap();
    link.bind(&manager);
    let events = manager.subscribe().await.unwrap();
    (manager, events)
}

fn key(name: &str) -> ConnectionKey {
    ConnectionKey::new(name, ssh::PLUGIN_NAME)
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_reach_openssh_through_its_bastion_where_ssh_dash_j_does() {
    let Some((_lock, fx)) = setup("targets_reach_openssh_through_its_bastion").await else {
        return;
    };
    let port = fx.target_port;
    let before = fx.forwards_to(port);

    // The reference: `ssh -J`, and `ProxyJump` in a config file.
    let config = fx.ssh_config("plain", &fx.key, "");
    let bastion = fx.bastion();
    let port_arg = port.to_string();
    assert_eq!(
        fx.ssh(&config, &["-J", &bastion, "-p", &port_arg, "127.0.0.1"])
            .unwrap(),
        "jumped\n"
    );
    let proxy_jump = fx.ssh_config(
        "proxy-jump",
        &fx.key,
        // An alias: a `Host 127.0.0.1` block would apply to the jump host too (a loop).
        &format!("Host jump-target\n  HostName 127.0.0.1\n  Port {port}\n  ProxyJump {bastion}\n"),
    );
    assert_eq!(fx.ssh(&proxy_jump, &["jump-target"]).unwrap(), "jumped\n");
    eventually("the bastion logs ssh's two forwards", || {
        fx.forwards_to(port) == before + 2
    })
    .await;

    // The plugin: four hosts behind the registered bastion, one behind a ProxyJump chain.
    let (manager, _events) = linked_manager(fx.options()).await;
    let logins = fx.logins();
    let mut handles = Vec::new();
    for name in ["r1", "r2", "r3", "r4"] {
        let opened = manager
            .open_connection(&key(name), &fx.behind(port, "bastion"))
            .await;
        handles.push(opened.unwrap().unwrap());
    }
    let chained = manager
        .open_connection(&key("r5"), &fx.behind(port, &bastion))
        .await;
    handles.push(chained.unwrap().unwrap());
    for handle in &handles {
        assert_eq!(
            handle.execute_command("echo jumped").await.unwrap(),
            "jumped\n"
        );
    }
    // And through the ProxyJump of the config file ssh used, read by the plugin.
    let (config_manager, _) = linked_manager(fx.options().ssh_config(&proxy_jump)).await;
    let via_config = config_manager
        .open_connection(
            &key("jump-target"),
            &ResolvedConnectionParams::new("jump-target"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        via_config.execute_command("echo jumped").await.unwrap(),
        "jumped\n"
    );
    // Six forwards over three bastion sessions: the registered one, shared by four hosts, the
    // ProxyJump route's own, and the config's (in another supervisor).
    eventually("the bastion logs our six forwards", || {
        fx.forwards_to(port) == before + 8
    })
    .await;
    eventually("three logins to the bastion", || fx.logins() == logins + 3).await;
    config_manager.shutdown().await.unwrap();
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_fails_where_ssh_fails_and_names_the_stage() {
    let Some((_lock, fx)) = setup("the_plugin_fails_where_ssh_fails").await else {
        return;
    };
    let config = fx.ssh_config("plain", &fx.key, "");
    let (manager, _events) = linked_manager(fx.options()).await;
    let failure = |error: Error| (error.failure_kind(), error.to_string());

    // Nothing listens behind the bastion.
    let closed = free_port();
    let closed_arg = closed.to_string();
    let refused = fx
        .ssh(
            &config,
            &["-J", &fx.bastion(), "-p", &closed_arg, "127.0.0.1"],
        )
        .unwrap_err();
    assert!(refused.contains("connect failed"), "{refused}");
    let error = manager
        .open_connection(&key("nowhere"), &fx.behind(closed, "bastion"))
        .await
        .unwrap_err();
    let (kind, message) = failure(error);
    assert_eq!(kind, Some(FailureKind::Refused), "{message}");
    let expected = format!(
        "cannot open a channel to 127.0.0.1:{closed} through bastion bastion (127.0.0.1:{})",
        fx.bastion_port
    );
    assert!(message.contains(&expected), "{message}");

    // A jump host that does not forward (the target sshd: AllowTcpForwarding no).
    let no_forwarding = format!("{}@127.0.0.1:{}", fx.user, fx.target_port);
    let bastion_port = fx.bastion_port.to_string();
    let prohibited = fx
        .ssh(
            &config,
            &["-J", &no_forwarding, "-p", &bastion_port, "127.0.0.1"],
        )
        .unwrap_err();
    assert!(
        prohibited.contains("administratively prohibited"),
        "{prohibited}"
    );
    let error = manager
        .open_connection(
            &key("prohibited"),
            &fx.behind(fx.bastion_port, &no_forwarding),
        )
        .await
        .unwrap_err();
    let (kind, message) = failure(error);
    assert_eq!(kind, Some(FailureKind::Auth), "{message}");
    assert!(message.contains("administratively prohibited"), "{message}");

    // The bastion rejects the key: the failure is the bastion's, and says so.
    let stranger = fx.scratch.join("stranger_ed25519");
    let _ = std::fs::remove_file(&stranger);
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(keygen.success());
    let stranger_config = fx.ssh_config("stranger", &stranger, "");
    let target_port = fx.target_port.to_string();
    let rejected = fx
        .ssh(
            &stranger_config,
            &["-J", &fx.bastion(), "-p", &target_port, "127.0.0.1"],
        )
        .unwrap_err();
    assert!(rejected.contains("Permission denied"), "{rejected}");
    let options = fx
        .options()
        .private_key(PrivateKeySource::Path(stranger.clone()));
    let (stranger_manager, _) = linked_manager(options).await;
    let error = stranger_manager
        .open_connection(&key("r1"), &fx.behind(fx.target_port, "bastion"))
        .await
        .unwrap_err();
    let (kind, message) = failure(error);
    assert_eq!(kind, Some(FailureKind::Auth), "{message}");
    assert!(
        message.contains(&format!(
            "cannot reach bastion bastion (127.0.0.1:{})",
            fx.bastion_port
        )),
        "{message}"
    );
    stranger_manager.shutdown().await.unwrap();
    manager.shutdown().await.unwrap();
}

/// The bastion's per-connection sshd processes (every descendant of its listener: the
/// privileged monitor and the session process), not the listener.
fn bastion_sessions(fx: &Fixture) -> Vec<u32> {
    let listener: u32 = std::fs::read_to_string(&fx.bastion_pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let ppid: Option<u32> = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![listener];
    let mut grown = true;
    while grown {
        grown = false;
        for (pid, ppid) in &parents {
            if found.contains(ppid) && !found.contains(pid) {
                found.push(*pid);
                grown = true;
            }
        }
    }
    found.retain(|pid| *pid != listener);
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_openssh_bastion_cascades_and_the_targets_come_back_through_it() {
    let Some((_lock, fx)) = setup("losing_the_openssh_bastion_cascades").await else {
        return;
    };
    let (manager, mut events) = linked_manager(fx.options()).await;
    let names = ["r1", "r2", "r3"];
    let mut handles = Vec::new();
    for name in names {
        let params = fx.behind(fx.target_port, "bastion");
        let opened = manager.open_connection(&key(name), &params).await;
        handles.push(opened.unwrap().unwrap());
    }
    let sessions = bastion_sessions(&fx);
    assert!(!sessions.is_empty(), "the bastion serves our session");

    // Kill the bastion's session processes: its TCP connection ends, and with it the
    // channels of the three targets.
    for pid in &sessions {
        let killed = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }
    let mut keys: BTreeSet<ConnectionKey> = names.iter().map(|name| key(name)).collect();
    keys.insert(key("bastion"));
    for expected in ["lost", "reconnected"] {
        let mut waiting = keys.clone();
        while !waiting.is_empty() {
            let event = events
                .wait_for(WAIT, |event| {
                    waiting.contains(&event.key)
                        && match expected {
                            "lost" => matches!(event.kind, EventKind::Lost { .. }),
                            _ => matches!(event.kind, EventKind::Reconnected { .. }),
                        }
                })
                .await
                .unwrap_or_else(|error| panic!("{waiting:?} not {expected}: {error}"));
            waiting.remove(&event.key);
        }
    }
    for handle in &handles {
        assert_eq!(
            handle.execute_command("echo jumped").await.unwrap(),
            "jumped\n"
        );
    }
    manager.shutdown().await.unwrap();
}
