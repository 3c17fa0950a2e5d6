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
    write_inventory(&dir, &devices);

    // Three nodes; the second and third join the first and find each other through it.
    let first = NodeProcess::start(&dir, "n1", free_addr(), None);
    first.wait_line("listening line", |l| l.contains("listening on"));
    // One after the other: a node finds its peers' peers when it joins (ractor_cluster's
    // transitive mode), so two nodes joining the first at the same instant may miss each other
    // (the README says so).
    let second = NodeProcess::start(&dir, "n2", free_addr(), Some(first.addr));
    second.wait_members(2);
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
    let running = tokio::spawn(job(dir.clone(), second.addr, COOKIE, 3));
    let end = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // Until the job is under way (or already over: its output then says why).
    while devices
        .iter()
        .map(SshTestServer::channels_opened)
        .sum::<u64>()
        < before + 200
        && !running.is_finished()
    {
        assert!(Instant::now() < end, "the job did not get going");
        tick.tick().await;
    }
    assert!(!running.is_finished(), "the job ended before the kill");
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

/// Writes an inventory of `devices` and the cookie into `dir`.
fn write_inventory(dir: &Path, devices: &[SshTestServer]) {
    let known_hosts = dir.join("known_hosts");
    write_known_hosts(&known_hosts, devices).expect("known_hosts");
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
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The benchmark of issue 15 (not a test: `cargo test -p fleet --features cluster --test
/// cluster -- --ignored --nocapture`): per-command latency through the entry node for keys it
/// owns (local) and keys another node owns (one more hop), then failover after kill -9 of a
/// node: detection (kill to the survivors' "peer down") and the takeover of its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures"]
async fn bench_routing_and_failover() {
    use connection_supervisor::cluster::hrw;
    const HOSTS: usize = 150;
    let dir = scratch("bench");
    let mut devices = Vec::with_capacity(HOSTS);
    for index in 0..HOSTS {
        let config = SshTestServerConfig {
            hostname: format!("dev{index:03}"),
            ..SshTestServerConfig::default()
        };
        devices.push(SshTestServer::start(config).await.expect("device"));
    }
    write_inventory(&dir, &devices);
    let first = NodeProcess::start(&dir, "n1", free_addr(), None);
    first.wait_line("listening line", |l| l.contains("listening on"));
    let second = NodeProcess::start(&dir, "n2", free_addr(), Some(first.addr));
    second.wait_members(2);
    let mut third = NodeProcess::start(&dir, "n3", free_addr(), Some(first.addr));
    for node in [&first, &second, &third] {
        node.wait_members(3);
    }
    // Open every key, then time sequential commands (one in flight: no queueing).
    let out = job(dir.clone(), first.addr, COOKIE, 1).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let results = dir.join("results.jsonl");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
    command
        .kill_on_drop(true)
        .args([
            "--cluster",
            &first.addr.to_string(),
            "--commands",
            "hostname",
        ])
        .args(["--rounds", "10", "--concurrency", "1", "--output"])
        .arg(&results)
        .arg("--cookie-file")
        .arg(dir.join("cookie"))
        .arg("--inventory")
        .arg(dir.join("inventory.toml"));
    let out = tokio::time::timeout(JOB_WAIT, command.output())
        .await
        .expect("the timed job ends")
        .expect("the fleet output");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let members = ["node:n1", "node:n2", "node:n3"];
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(&results).expect("results").lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let host = record["host"].as_str().unwrap_or_default();
        let ms = record["duration_ms"].as_f64().unwrap_or(f64::NAN);
        match hrw::owner(&format!("{host}\u{0}ssh"), members) {
            Some("node:n1") => local.push(ms),
            _ => remote.push(ms),
        }
    }
    println!(
        "routing: entry node owns the key: p50 {:.2} ms ({} commands); another node owns it: p50 {:.2} ms ({} commands)",
        median(local.clone()),
        local.len(),
        median(remote.clone()),
        remote.len()
    );
    // Failover: kill -9 of the third node.
    let moved = (0..HOSTS)
        .filter(|i| hrw::owner(&format!("dev{i:03}\u{0}ssh"), members) == Some("node:n3"))
        .count();
    let killed = Instant::now();
    let _ = third.child.kill();
    let _ = third.child.wait();
    for node in [&first, &second] {
        node.wait_line("peer down", |l| l.starts_with("peer down node:n3"));
        println!(
            "failover: {} saw node:n3 down {:.1} ms after the kill",
            node.name,
            killed.elapsed().as_secs_f64() * 1e3
        );
    }
    for node in [&first, &second] {
        node.wait_line("takeover", |l| l.starts_with("took over"));
        let line = node
            .log_text()
            .lines()
            .rfind(|l| l.starts_with("took over"))
            .map(str::to_owned);
        println!(
            "failover: {} done {:.1} ms after the kill: {}",
            node.name,
            killed.elapsed().as_secs_f64() * 1e3,
            line.unwrap_or_default()
        );
    }
    println!("failover: node:n3 owned {moved} of {HOSTS} keys");
    drop(third);
}
