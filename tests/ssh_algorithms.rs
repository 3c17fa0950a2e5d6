//! Algorithm policy and host-key checks against the embedded SSH server: a legacy-only device
//! (SHA-1 key exchange, ssh-rsa, CBC, hmac-sha1), a server with several host key types, and
//! known_hosts files that list some types, revoke keys, or do not exist.

#![cfg(all(feature = "ssh", feature = "testing"))]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use connection_supervisor::ssh::{AlgorithmPolicy, HostKeyPolicy, SshConnection, SshOptions};
use connection_supervisor::testing::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, ServerAlgorithms, SshTestServer, SshTestServerConfig,
    generate_ed25519_key, generate_host_key,
};
use connection_supervisor::{Connection, FailureKind, OpenError, ResolvedConnectionParams};
use russh::keys::{Algorithm, EcdsaCurve, PrivateKey, PublicKey};
use serde_json::json;

/// A fixed 2048-bit RSA host key (made with `ssh-keygen -t rsa -b 2048`): generating one takes
/// seconds in a debug build.
const RSA_HOST_KEY: &str = "
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAABFwAAAAdzc2gtcn
NhAAAAAwEAAQAAAQEAwkAsJvHONYg7YQAukbRkdjU2dvqfTiDS4jlbvuKyALh8XF109fEh
0LrQtMlglMmiwI2L7zEp6WCAUeGatObdAl/qDDjD0TszBhXZD2morqXYyPH0SLJe21UiRe
WgfPeXjMkdqaZfAB2PjVFs8W414hukJygsH9IOOitRpCU0oKzqNJC5/P+Bx0h5eEvkEatj
mGwO/w4UIC6BTZLuLIIqCxLQRpk2rIUTr67Vgdj0HlNPkAqdoN/mjKfKvc4xU/oVfqQxW7
ahT2Xdfq6eP7kTOJO25UoZWculKu2PUzyWlZtTZPx3j+G+AhaBIggcW5cCIUBkit7tTHhd
Ywg/vW/dYwAAA7jUhM4q1ITOKgAAAAdzc2gtcnNhAAABAQDCQCwm8c41iDthAC6RtGR2NT
Z2+p9OINLiOVu+4rIAuHxcXXT18SHQutC0yWCUyaLAjYvvMSnpYIBR4Zq05t0CX+oMOMPR
OzMGFdkPaaiupdjI8fRIsl7bVSJF5aB895eMyR2ppl8AHY+NUWzxbjXiG6QnKCwf0g46K1
GkJTSgrOo0kLn8/4HHSHl4S+QRq2OYbA7/DhQgLoFNku4sgioLEtBGmTashROvrtWB2PQe
U0+QCp2g3+aMp8q9zjFT+hV+pDFbtqFPZd1+rp4/uRM4k7blShlZy6Uq7Y9TPJaVm1Nk/H
eP4b4CFoEiCBxblwIhQGSK3u1MeF1jCD+9b91jAAAAAwEAAQAAAQAtOFQu8r6e7qpoD+tH
Zxe1/vhBZWGdhf2hxVmKy+pFSa1FsUnvkSVemobId1LBAFmferQXSDoqBpmItjzWHSJZEa
wCEVrgg+gCZCamNGIc2iXnzY+hNsjnRV/XpregL+E7WHxLyJu4Aqmu68QxRgdMLkQeC3eO
Js/CEeCNFk40kvQ2Mo7TrJvrJLniGTixpTOu9IR5ovqg7CPu6XLH48bF7vr/iOEZYx97Xx
xTxLLjx1cp42mLt7XkoFFYNbDnkQJW3zs78EHmNiW6r9zwqZ2mDJYLmuJPCGG9ahRyk6hJ
BiEdro0JkqDdpBbkgXmd7jOB1GughzhN47+LX3UZIL5dAAAAgHrRHowpwyjWAJP/Q87aZd
MK1eEtajHO5j6mg9T600IMqM58jXn9RYhoKXhqMhm44nDnd92G55H5/xshe09QWMZmHGib
QDgpstsQNI1Ilb2d6R4YmvElW+ILmTOBQzx90ho24fedWvHHiJ45ITVYu8GVw5IjjezPKE
uHc9vr2fmRAAAAgQDyqwEtHe3+jO/Cs2NYa3LzeleYXP9LbZ/PLabxzGY3Otb30/VQx4U1
3+Uc8dtq+HFYE+Z3LWFFMrZP9j2EAj+6rR3LLnCxdSop+z209Frj2ROP/hUCoG/0Qij1ji
NMd+f8nYVzbrhnHA4tXNqc/2hJL9tKuWKoIMs5lV8oVSak1wAAAIEAzOw0SxUgGd0drIt8
gz6w9hWRuayDJaAUEmoQp5tfzZE4u+e9WcMzjNuiBnBxrIuSiE6VPQJi9WmC5tLkD97ltO
+eRmBb9ooq/VayRCf+y6GtCUIwMux9v9RxPcOWO9VbLQjLQ3REysiEieRDr8eTay0/2+TA
SicAlinhw/XXrlUAAAAAAQID
-----END OPENSSH PRIVATE KEY-----
";

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-ssh-algo-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rsa_key() -> PrivateKey {
    PrivateKey::from_openssh(RSA_HOST_KEY.trim()).unwrap()
}

async fn legacy_device() -> SshTestServer {
    SshTestServer::start(SshTestServerConfig {
        host_key: Some(rsa_key()),
        algorithms: ServerAlgorithms::LegacyOnly,
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap()
}

fn params(server: &SshTestServer, extras: Option<serde_json::Value>) -> ResolvedConnectionParams {
    ResolvedConnectionParams {
        hostname: "127.0.0.1".into(),
        port: Some(server.port()),
        username: Some(DEFAULT_USERNAME.into()),
        password: Some(DEFAULT_PASSWORD.into()),
        extras: extras.map(|value| {
            value
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        ..ResolvedConnectionParams::default()
    }
}

/// Opens one connection and runs `hostname` on it.
async fn open(options: SshOptions, params: &ResolvedConnectionParams) -> Result<String, OpenError> {
    let mut connection = SshConnection::new(Arc::new(options));
    connection.open(params).await?;
    let output = connection.execute_command("hostname").await.unwrap();
    connection.close().await;
    Ok(output)
}

fn known_hosts_line(server: &SshTestServer, key: &PublicKey) -> String {
    let key = PublicKey::new(key.key_data().clone(), "");
    format!(
        "[127.0.0.1]:{} {}",
        server.port(),
        key.to_openssh().unwrap()
    )
}

fn write(lines: &[String]) -> PathBuf {
    let path = scratch_dir().join("known_hosts");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test]
async fn a_legacy_only_device_needs_the_legacy_policy_and_the_error_says_so() {
    let server = legacy_device().await;
    let strict = HostKeyPolicy::Strict(write(&[server.known_hosts_line().unwrap()]));
    let options = SshOptions::default().host_key_policy(strict);

    let error = open(options.clone(), &params(&server, None))
        .await
        .expect_err("modern algorithms cannot reach a legacy-only device");
    assert_eq!(error.kind(), FailureKind::Negotiation, "{error}");
    assert!(error.kind().is_permanent());
    let message = error.message();
    let address = format!("127.0.0.1:{}", server.port());
    for part in [
        address.as_str(),
        "curve25519-sha256",
        "[diffie-hellman-group14-sha1]",
        "algorithms = \"legacy\"",
        "kex = \"+diffie-hellman-group14-sha1\"",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert_eq!(server.auth_attempts(), 0);

    // The policy per host, through the extra, and as the factory's default.
    let legacy = params(&server, Some(json!({"algorithms": "legacy"})));
    assert_eq!(open(options.clone(), &legacy).await.unwrap(), "device\n");
    let default_legacy = options.clone().algorithms(AlgorithmPolicy::Legacy);
    assert_eq!(
        open(default_legacy, &params(&server, None)).await.unwrap(),
        "device\n"
    );
    // Explicit lists as `ssh -o KexAlgorithms=+... -o Ciphers=+... -o MACs=+...` would give.
    let lists = params(
        &server,
        Some(json!({"algorithms": {
            "kex": "+diffie-hellman-group14-sha1",
            "ciphers": "+aes128-cbc",
            "macs": ["hmac-sha1"],
        }})),
    );
    assert_eq!(open(options, &lists).await.unwrap(), "device\n");
}

#[tokio::test]
async fn an_unknown_algorithm_name_is_a_config_error_before_any_connection() {
    let server = legacy_device().await;
    let bad = params(
        &server,
        Some(json!({"algorithms": {"ciphers": "+aes128-cbc,blowfish-cbc"}})),
    );
    let error = open(
        SshOptions::default().host_key_policy(HostKeyPolicy::AcceptAny),
        &bad,
    )
    .await
    .expect_err("blowfish is not implemented");
    assert_eq!(error.kind(), FailureKind::Config, "{error}");
    assert!(error.message().contains("blowfish-cbc"), "{error}");
    assert!(error.message().contains("Ciphers"), "{error}");
    assert!(
        error
            .message()
            .contains(&format!("127.0.0.1:{}", server.port())),
        "{error}"
    );
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn known_hosts_with_only_other_key_types_still_connects() {
    // The server offers Ed25519 (russh's and OpenSSH's first choice) and ECDSA; known_hosts
    // holds only the ECDSA key.
    let ecdsa = generate_host_key(Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    })
    .unwrap();
    let ecdsa_public = ecdsa.public_key().clone();
    let server = SshTestServer::start(SshTestServerConfig {
        host_key: Some(generate_ed25519_key().unwrap()),
        extra_host_keys: vec![ecdsa, rsa_key()],
        ..SshTestServerConfig::default()
    })
    .await
    .unwrap();
    let path = write(&[
        "# only ECDSA for this server".to_owned(),
        known_hosts_line(&server, &ecdsa_public),
    ]);
    let options = SshOptions::default().host_key_policy(HostKeyPolicy::Strict(path.clone()));
    assert_eq!(
        open(options, &params(&server, None)).await.unwrap(),
        "device\n"
    );

    // Only RSA recorded: RSA is asked for first, whichever hash signs.
    let path = write(&[known_hosts_line(&server, rsa_key().public_key())]);
    let options = SshOptions::default().host_key_policy(HostKeyPolicy::Strict(path));
    assert_eq!(
        open(options, &params(&server, None)).await.unwrap(),
        "device\n"
    );
}

#[tokio::test]
async fn host_key_refusals_say_which_case_it_is() {
    let server = SshTestServer::start(SshTestServerConfig::default())
        .await
        .unwrap();
    let port = server.port();
    let address = format!("127.0.0.1:{port}");
    let refusal = |policy: HostKeyPolicy| {
        let params = params(&server, None);
        async move {
            let error = open(SshOptions::default().host_key_policy(policy), &params)
                .await
                .expect_err("refused");
            assert_eq!(error.kind(), FailureKind::HostKey, "{error}");
            error.message().to_owned()
        }
    };

    let missing = scratch_dir().join("no_such_known_hosts");
    let message = refusal(HostKeyPolicy::Strict(missing.clone())).await;
    assert!(
        message.contains("does not exist") && message.contains(&address),
        "{message}"
    );
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );

    let other = generate_ed25519_key().unwrap();
    let path = write(&[format!(
        "[10.9.9.9]:{port} {}",
        other.public_key().to_openssh().unwrap()
    )]);
    let message = refusal(HostKeyPolicy::Strict(path.clone())).await;
    assert!(
        message.contains("the host is not listed there"),
        "{message}"
    );
    assert!(
        message.contains("SHA256:") && message.contains(&address),
        "{message}"
    );

    let path = write(&[known_hosts_line(&server, other.public_key())]);
    let message = refusal(HostKeyPolicy::Strict(path)).await;
    assert!(
        message.contains("CHANGED") && message.contains("line 1"),
        "{message}"
    );

    let good = server.known_hosts_line().unwrap();
    let revoked = format!(
        "@revoked * {}",
        PublicKey::new(server.host_key_public().key_data().clone(), "")
            .to_openssh()
            .unwrap()
    );
    let path = write(&[good.clone(), revoked.clone()]);
    let message = refusal(HostKeyPolicy::Strict(path)).await;
    assert!(
        message.contains("REVOKED") && message.contains("line 2"),
        "{message}"
    );
    // Even trust on first use does not take a revoked key.
    let path = write(&[revoked]);
    let message = refusal(HostKeyPolicy::AcceptNew(path.clone())).await;
    assert!(message.contains("REVOKED"), "{message}");
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
}
