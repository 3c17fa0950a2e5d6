//! `fleet --metrics ADDR` serves Prometheus text over HTTP while a job runs: scraped here with
//! a plain HTTP/1.1 request over TCP, as Prometheus' scraper sends it, until the supervisor's
//! series show opened connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (the exporter binds it itself, so it is released first).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// One `GET /metrics`; `None` while nothing listens yet.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

#[test]
fn the_fleet_serves_the_supervisors_metrics_during_a_run() {
    let addr = free_addr();
    // Enough commands on slow devices for the run to outlast a few scrapes.
    let mut fleet = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["--hosts", "8", "--latency-ms", "50", "--no-chaos"])
        .args(["--commands", "hostname", "--rounds", "40"])
        .args(["--metrics", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fleet starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while Instant::now() < deadline && fleet.try_wait().expect("fleet status").is_none() {
        if let Some(body) = scrape(addr)
            && body.contains("connection_supervisor_opens_total{plugin=\"ssh\"} 8")
        {
            seen = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fleet.kill();
    let _ = fleet.wait();
    let body = seen.expect("a scrape during the run shows the 8 devices opened");
    assert!(
        body.contains("connection_supervisor_connections{plugin=\"ssh\",state=\"open\"} 8"),
        "{body}"
    );
    assert!(
        body.contains("connection_supervisor_command_duration_seconds"),
        "{body}"
    );
}
