//! The cluster layer inside one process (one node: ractor's process groups are
//! process-global). Several nodes run as processes in fleet/tests/cluster.rs.
#![cfg(all(feature = "cluster", feature = "ssh", feature = "testing"))]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use connection_supervisor::cluster::{
    ClusterNode, Cookie, FailureKind, NodeConfig, Operation, Reply, Request, ShardMessage, WireKey,
};
use connection_supervisor::ssh::{self, HostKeyPolicy, PLUGIN_NAME, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, SshTestServer, SshTestServerConfig,
};
use connection_supervisor::{
    ConnectionKey, ConnectionManager, ResolvedConnectionParams, SupervisorConfig,
};

const BUDGET: Duration = Duration::from_secs(30);

#[test]
fn the_cookie_never_shows() {
    let cookie = Cookie::new("hunter2-cookie").expect("cookie");
    let config = NodeConfig::member("n1", "127.0.0.1:1".parse().expect("addr"), cookie.clone());
    for text in [format!("{cookie:?}"), format!("{config:?}")] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
    assert!(Cookie::new("  \n").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_a_non_member_is_refused_and_not_run() {
    let device = SshTestServer::start(SshTestServerConfig::default())
        .await
        .expect("device");
    let options = SshOptions::default().host_key_policy(HostKeyPolicy::AcceptAny);
    let manager =
        ConnectionManager::spawn(SupervisorConfig::default().factory(ssh::factory(options)))
            .await
            .expect("manager");
    let port = device.port();
    let resolver = Arc::new(move |_: &ConnectionKey| {
        Some(ResolvedConnectionParams {
            port: Some(port),
            username: Some(DEFAULT_USERNAME.into()),
            password: Some(DEFAULT_PASSWORD.into()),
            ..ResolvedConnectionParams::new("127.0.0.1")
        })
    });
    let listen = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let cookie = Cookie::new("cookie").expect("cookie");
    let node = ClusterNode::start(
        NodeConfig::member("solo", listen, cookie),
        Some(manager.clone()),
        Some(resolver),
    )
    .await
    .expect("node");
    let key = ConnectionKey::new("dev", PLUGIN_NAME);
    assert_eq!(node.owner_of(&key).as_deref(), Some("node:solo"));

    // A message as another node would send it, from a name that is no authenticated peer.
    let request = Request {
        from: "node:ghost".into(),
        key: WireKey::from(&key),
        operation: Operation::Run {
            command: "hostname".into(),
        },
        budget_ms: 5_000,
        forwarded: true,
    };
    let reply = node
        .shard()
        .call(|port| ShardMessage::Call(request, port), Some(BUDGET))
        .await
        .expect("the shard answers");
    match reply {
        ractor::rpc::CallResult::Success(Reply::Failed { kind, .. }) => {
            assert_eq!(kind, FailureKind::Refused)
        }
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(device.channels_opened(), 0, "the refused command ran");
    assert_eq!(
        device.session_count(),
        0,
        "the refused request opened a session"
    );
    assert_eq!(node.counters().refused, 1);

    // The node's own request runs.
    let output = node
        .run_command(&key, "hostname", BUDGET)
        .await
        .expect("runs");
    assert!(!output.is_empty());
    assert_eq!(device.channels_opened(), 1);
    assert_eq!(node.counters().open_keys, 1);
    assert_eq!(node.cluster_counters(BUDGET).await.served_locally, 1);
    node.shutdown().await;
    manager.shutdown().await.expect("shutdown");
}
