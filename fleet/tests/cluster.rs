//! `fleet node` and `fleet --cluster` (feature `cluster`): three node processes on loopback
//! sharing 300 embedded devices that this test process hosts. One node per process, since
//! ractor's process groups and registry are process-global.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig, write_known_hosts,
};

const DEVICES: usize = 300;
const COOKIE: &str = "s3cret-cluster-cookie-do-not-print";
const WRONG_COOKIE: &str = "wrong-cookie-also-never-printed";
/// The bound on every wait for a node's event: generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);
/// The bound on one job of the fleet.
const JOB_WAIT: Duration = Duration::from_secs(120);

/// A node process, killed (and reaped) on drop, whatever the test did.
struct NodeProcess {
    name: String,
    addr: SocketAddr,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn start(dir: &Path, name: &str, addr: SocketAddr, join: Option<SocketAddr>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleet"));
        command
            .args(["node", "--name", name, "--listen", &addr.to_string()])
            .arg("--cookie-file")
            .arg(dir.join("cookie"))
            .arg("--inventory")
            .arg(dir.join("inventory.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(peer) = join {
            command.args(["--join", &peer.to_string()]);
        }
        let mut child = command.spawn().expect("the node starts");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, tx) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(tx)),
            (Box::new(stderr), None),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line.clone());
                    if let Some(tx) = &tx {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        Self {
            name: name.into(),
            addr,
            child,
            lines,
            log,
        }
    }

    /// Waits for a stdout line for which `test` holds.
    fn wait_line(&self, what: &str, test: impl Fn(&str) -> bool) {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if test(&line) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "node {}: no {what} within {WAIT:?}; its output:\n{}",
                    self.name,
                    self.log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .join("\n")
                ),
            }
        }
    }

    fn wait_members(&self, count: usize) {
        self.wait_line(&format!("{count} members"), |line| {
            line.strip_prefix("members ")
                .is_some_and(|m| m.split(',').filter(|s| !s.is_empty()).count() == count)
        });
    }

    fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }
}

/// A port the OS says is free now (the node binds it a moment later).
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `fleet --cluster entry` over the inventory (off the runtime serving the devices).
async fn job(dir: PathBuf, entry: SocketAddr, cookie: &'static str, rounds: u32) -> Output {
    let cookie_file = dir.join(format!("cookie-{}", cookie.len()));
    std::fs::write(&cookie_file, cookie).expect("cookie file");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
    command
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .args(["--cluster", &entry.to_string(), "--commands", "hostname"])
        .args(["--rounds", &rounds.to_string(), "--concurrency", "64"])
        .arg("--cookie-file")
        .arg(&cookie_file)
        .arg("--inventory")
        .arg(dir.join("inventory.toml"));
    let child = command.spawn().expect("the fleet binary runs");
    // Dropped on timeout, the child is killed.
    tokio::time::timeout(JOB_WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("a job through {entry} did not end within {JOB_WAIT:?}"))
        .expect("the fleet output")
}

/// The `open` count of each member from the job's `cluster[...]` lines.
fn open_per_member(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cluster[")?;
            let (member, rest) = rest.split_once("]: open ")?;
            let open = rest.split_whitespace().next()?.parse().ok()?;
            Some((member.to_owned(), open))
        })
        .collect()
}

/// Waits (bounded) until every device has exactly one session: each key open on one node.
async fn every_device_has_one_session(devices: &[SshTestServer]) {
    let end = Instant::now() + WAIT;
    let mut watch = tokio::time::interval(Duration::from_millis(50));
    loop {
        watch.tick().await;
        let counts: Vec<usize> = devices.iter().map(SshTestServer::session_count).collect();
        if counts.iter().all(|c| *c == 1) {
            return;
        }
        if Instant::now() > end {
            let off: Vec<_> = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != 1)
                .collect();
            panic!("devices without exactly one session (index, count): {off:?}");
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-cluster-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_keys_fail_over_take_back_and_refuse_strangers() {
    let dir = scratch("main");
    let mut devices = Vec::with_capacity(DEVICES);
    for index in 0..DEVICES {
        let device = SshTestServer::start(SshTestServerConfig {
            hostname: format!("dev{index:03}"),
            ..SshTestServerConfig::default()
        })
        .await
        .expect("device");
        devices.push(device);
    }
    let known_hosts = dir.join("known_hosts");
    write_known_hosts(&known_hosts, &devices).expect("known_hosts");
    let mut inventory = format!(
        "[defaults]\nuser = \"{DEFAULT_USERNAME}\"\npassword = \"{DEFAULT_PASSWORD}\"\n\
         known_hosts = \"{}\"\nssh_config = \"none\"\n",
        known_hosts.display()
    );
    for (index, device) in devices.iter().enumerate() {
        inventory.push_str(&format!(
            "\n[[hosts]]\nname = \"dev{index:03}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            device.port()
        ));
    }
    std::fs::write(dir.join("inventory.toml"), inventory).expect("inventory");
    std::fs::write(dir.join("cookie"), COOKIE).expect("cookie");

    // Three nodes; the second and third join the first and find each other through it.
    let first = NodeProcess::start(&dir, "n1", free_addr(), None);
    first.wait_line("listening line", |l| l.contains("listening on"));
    let second = NodeProcess::start(&dir, "n2", free_addr(), Some(first.addr));
    let third = NodeProcess::start(&dir, "n3", free_addr(), Some(first.addr));
    for node in [&first, &second, &third] {
        node.wait_members(3);
    }

    eprintln!("{:?} start: 3 nodes up", Instant::now());
    // A job through the first node: every key owned (and open) on exactly one node, evenly.
    let out = job(dir.clone(), first.addr, COOKIE, 1).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let open = open_per_member(&stdout);
    assert_eq!(open.len(), 3, "{stdout}");
    assert_eq!(
        open.iter().map(|(_, n)| n).sum::<u64>(),
        DEVICES as u64,
        "{stdout}"
    );
    let max = open.iter().map(|(_, n)| *n).max().unwrap_or(0) as f64;
    let min = open.iter().map(|(_, n)| *n).min().unwrap_or(0) as f64;
    assert!(min > 0.0 && max / min <= 1.3, "spread {open:?}");
    every_device_has_one_session(&devices).await;

    eprintln!("{:?} first job done", Instant::now());
    // kill -9 of the third node in the middle of a job through the second.
    let before = devices
        .iter()
        .map(SshTestServer::channels_opened)
        .sum::<u64>();
    let running = tokio::spawn(job(dir.clone(), second.addr, COOKIE, 4));
    let end = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while devices
        .iter()
        .map(SshTestServer::channels_opened)
        .sum::<u64>()
        < before + 1_000
    {
        assert!(Instant::now() < end, "the job did not get going");
        tick.tick().await;
    }
    let mut third = third;
    let _ = third.child.kill();
    let _ = third.child.wait();
    let out = running.await.expect("the job task");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let open = open_per_member(&stdout);
    assert_eq!(open.len(), 2, "{stdout}");
    assert_eq!(
        open.iter().map(|(_, n)| n).sum::<u64>(),
        DEVICES as u64,
        "{stdout}"
    );
    every_device_has_one_session(&devices).await;
    drop(third);

    eprintln!("{:?} failover job done", Instant::now());
    // The third node comes back under its name (on another port: the old one may still have
    // connections in TIME_WAIT): it takes its keys back with a handover.
    let third = NodeProcess::start(&dir, "n3", free_addr(), Some(first.addr));
    for node in [&first, &second, &third] {
        node.wait_members(3);
    }
    let out = job(dir.clone(), first.addr, COOKIE, 1).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let open = open_per_member(&stdout);
    assert_eq!(open.len(), 3, "{stdout}");
    assert_eq!(
        open.iter().map(|(_, n)| n).sum::<u64>(),
        DEVICES as u64,
        "{stdout}"
    );
    every_device_has_one_session(&devices).await;

    eprintln!("{:?} take-back job done", Instant::now());
    // A wrong cookie: refused, nothing run, the secret in no log.
    let before = devices
        .iter()
        .map(SshTestServer::channels_opened)
        .sum::<u64>();
    let out = job(dir.clone(), first.addr, WRONG_COOKIE, 1).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    first.wait_line("refusal line", |l| l.starts_with("refused a session"));
    let after = devices
        .iter()
        .map(SshTestServer::channels_opened)
        .sum::<u64>();
    assert_eq!(before, after, "a refused client got a command run");
    for log in [first.log_text(), stdout, stderr] {
        assert!(
            !log.contains(WRONG_COOKIE) && !log.contains(COOKIE),
            "a cookie in: {log}"
        );
    }
    drop((first, second, third));
}
