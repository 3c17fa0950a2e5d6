//! Keys and lines made with OpenSSH 9.2's ssh-keygen (`-H` for the hashed names, `-s CA -h`
//! for the host certificates), so the parser is checked against what `ssh` writes.

use super::*;

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM9OXB4P6vX0t/fG6A/8Zx+SXLYKhekfhSD8oaJ0xTMt";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKc5UzXXp4zxgLyWn2/0SaQwLMp2IqfhmcVRl9JCy/nXFxI+Sxpi7Be6/jT8VJs5hwVNrTXqB/OnsgO9K2PEeM8=";
const OTHER_ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFdYA/LCmC+adHrN2EKwpXJGSx/UVilZrQ1YBBZuoePt";
const CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDz5AmBBgZhjJ6xpLU35EDNyD317fLLiXAnhXup5OCQx";
/// ED25519 certified by CA as a host key for principal `router1`, valid 2020 to 2099.
const CERTIFICATE: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIKtAWMmsaUnwt9AlXwSYbDsZdU2Vru3jaDeIsqTnb0vBAAAAIM9OXB4P6vX0t/fG6A/8Zx+SXLYKhekfhSD8oaJ0xTMtAAAAAAAAAAAAAAACAAAABGhvc3QAAAALAAAAB3JvdXRlcjEAAAAAXgvhAAAAAADypSOAAAAAAAAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACA8+QJgQYGYYyesaS1N+RAzcg99e3yy4lwJ4V7qeTgkMQAAAFMAAAALc3NoLWVkMjU1MTkAAABA15ceJwMx8oM9EioWXuNWHtsb2aIG9do8sqGFiFUOj1tJZZppzJtg6HdtXYfp9Did2o49u9e1bAAdhgeD/FE4Dw==";
/// OTHER_ED25519 certified by CA for `router1`, valid only during 2020.
const EXPIRED_CERTIFICATE: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIMfXeXyRU4pf24ukcOVNV2MsXwaTSXWJMr3x2ZDuwG/1AAAAIFdYA/LCmC+adHrN2EKwpXJGSx/UVilZrQ1YBBZuoePtAAAAAAAAAAAAAAACAAAABGhvc3QAAAALAAAAB3JvdXRlcjEAAAAAXgvhAAAAAABf7mYAAAAAAAAAABkAAAARbm8tdG91Y2gtcmVxdWlyZWQAAAAAAAAAAAAAADMAAAALc3NoLWVkMjU1MTkAAAAgPPkCYEGBmGMnrGktTfkQM3IPfXt8suJcCeFe6nk4JDEAAABTAAAAC3NzaC1lZDI1NTE5AAAAQPQrumfkjFijY/MTenKKsgKml58P8LGgYFoFI+EQgVOL8XryB5lHl+pe1D6aG/j2oDjLYgFwpMcW93Gc4TH1qAs=";
/// `ssh-keygen -H` of `router1 ED25519` and `[127.0.0.1]:2222 ECDSA`.
const HASHED: &str = "|1|r5Ezd2wQaA+mXfgSDkC2zPZFUgw=|XR/fsHLHUkOglX9Zys+caZp6dTI=";
const HASHED_PORT: &str = "|1|Q+KNJSZ5KIMy5NObmyiD2iiLCMs=|gHoUMiGywRPEZONjVMwRRqrFxBI=";
/// 2026-01-01, inside CERTIFICATE's validity.
const NOW: u64 = 1_767_225_600;

fn key(text: &str) -> PublicKey {
    text.parse().expect("a valid public key")
}

fn file(text: &str) -> KnownHosts {
    KnownHosts::parse(Path::new("/test/known_hosts"), text, None)
}

fn certificate(text: &str) -> Certificate {
    Certificate::from_openssh(text).expect("a valid certificate")
}

#[test]
fn plain_and_bracketed_entries_match_their_host_and_port_only() {
    let hosts = file(&format!("router1 {ED25519}\n[127.0.0.1]:2222 {ECDSA}\n"));
    assert_eq!(
        hosts.check_key("router1", 22, &key(ED25519)),
        Verdict::Known
    );
    assert_eq!(
        hosts.check_key("ROUTER1", 22, &key(ED25519)),
        Verdict::Known
    );
    assert_eq!(
        hosts.check_key("127.0.0.1", 2222, &key(ECDSA)),
        Verdict::Known
    );
    assert!(matches!(
        hosts.check_key("router1", 2222, &key(ED25519)),
        Verdict::Unknown { .. }
    ));
    assert!(matches!(
        hosts.check_key("127.0.0.1", 22, &key(ECDSA)),
        Verdict::Unknown { .. }
    ));
}

#[test]
fn hashed_entries_written_by_ssh_keygen_match() {
    let hosts = file(&format!("{HASHED} {ED25519}\n{HASHED_PORT} {ECDSA}\n"));
    assert_eq!(
        hosts.check_key("router1", 22, &key(ED25519)),
        Verdict::Known
    );
    assert_eq!(
        hosts.check_key("127.0.0.1", 2222, &key(ECDSA)),
        Verdict::Known
    );
    assert!(matches!(
        hosts.check_key("router2", 22, &key(ED25519)),
        Verdict::Unknown { .. }
    ));
    assert_eq!(
        hosts.recorded_types("127.0.0.1", 2222),
        vec![key(ECDSA).algorithm()]
    );
}

#[test]
fn a_different_key_of_a_recorded_type_is_a_change_and_another_type_is_unknown() {
    let hosts = file(&format!(
        "# comment\n\nrouter1 {ECDSA}\nrouter1\t{ED25519}\n"
    ));
    assert_eq!(
        hosts.check_key("router1", 22, &key(OTHER_ED25519)),
        Verdict::Changed { line: 4 }
    );
    let hosts = file(&format!("router1 {ECDSA}\n"));
    assert_eq!(
        hosts.check_key("router1", 22, &key(ED25519)),
        Verdict::Unknown {
            recorded: vec!["ecdsa-sha2-nistp256".to_owned()]
        }
    );
}

#[test]
fn wildcards_and_negations_follow_openssh() {
    let hosts = file(&format!("*.lab,!bad.lab,10.0.0.? {ED25519}\n"));
    assert_eq!(hosts.check_key("r1.lab", 22, &key(ED25519)), Verdict::Known);
    assert_eq!(
        hosts.check_key("10.0.0.7", 22, &key(ED25519)),
        Verdict::Known
    );
    assert!(matches!(
        hosts.check_key("bad.lab", 22, &key(ED25519)),
        Verdict::Unknown { .. }
    ));
    assert!(matches!(
        hosts.check_key("10.0.0.17", 22, &key(ED25519)),
        Verdict::Unknown { .. }
    ));
}

#[test]
fn a_revoked_key_is_refused_even_when_also_listed() {
    let hosts = file(&format!("router1 {ED25519}\n@revoked * {ED25519}\n"));
    assert_eq!(
        hosts.check_key("router1", 22, &key(ED25519)),
        Verdict::Revoked { line: 2 }
    );
    // Its type is not asked for first: another recorded type is.
    let hosts = file(&format!(
        "router1 {ED25519}\nrouter1 {ECDSA}\n@revoked * {ED25519}\n"
    ));
    assert_eq!(
        hosts.recorded_types("router1", 22),
        vec![key(ECDSA).algorithm()]
    );
}

#[test]
fn an_unparsable_line_is_skipped_but_remembered_for_its_hosts() {
    let hosts = file(&format!(
        "router1 ssh-ed25519 not-base64!\nrouter1 {ED25519}\n"
    ));
    assert_eq!(
        hosts.check_key("router1", 22, &key(ED25519)),
        Verdict::Known
    );
    assert_eq!(
        hosts.invalid_entry("router1", 22).map(|(line, _)| line),
        Some(1)
    );
    assert_eq!(hosts.invalid_entry("router2", 22), None);
    // Hosts that cannot be read either: it may be about any host.
    let hosts = file("|1|not-base64|x ssh-ed25519 AAAA\n");
    assert!(hosts.invalid_entry("router2", 22).is_some());
}

#[test]
fn a_host_certificate_from_a_listed_authority_is_trusted_for_its_principal() {
    let hosts = file(&format!("@cert-authority router* {CA}\n"));
    assert!(hosts.has_authority("router1", 22));
    assert!(!hosts.has_authority("switch1", 22));
    let cert = certificate(CERTIFICATE);
    assert_eq!(
        hosts.check_certificate("router1", 22, &cert, NOW),
        Verdict::Known
    );
    // router2 matches the authority's pattern but is not a principal of the certificate.
    assert!(matches!(
        hosts.check_certificate("router2", 22, &cert, NOW),
        Verdict::BadCertificate(reason) if reason.contains("principals")
    ));
    assert!(matches!(
        hosts.check_certificate("router1", 22, &certificate(EXPIRED_CERTIFICATE), NOW),
        Verdict::BadCertificate(reason) if reason.contains("valid from")
    ));
}

#[test]
fn a_certificate_without_a_listed_authority_is_checked_by_its_key() {
    let cert = certificate(CERTIFICATE);
    let hosts = file(&format!("router1 {ED25519}\n"));
    assert_eq!(
        hosts.check_certificate("router1", 22, &cert, NOW),
        Verdict::Known
    );
    let hosts = file(&format!("@cert-authority switch* {CA}\n"));
    assert!(matches!(
        hosts.check_certificate("router1", 22, &cert, NOW),
        Verdict::Unknown { .. }
    ));
}

#[test]
fn a_revoked_authority_revokes_its_certificates() {
    let hosts = file(&format!("@cert-authority * {CA}\n@revoked * {CA}\n"));
    assert_eq!(
        hosts.check_certificate("router1", 22, &certificate(CERTIFICATE), NOW),
        Verdict::Revoked { line: 2 }
    );
}

#[test]
fn glob_matches_like_openssh() {
    assert!(glob("*", ""));
    assert!(glob("a*c", "abbbc"));
    assert!(glob("a?c", "abc"));
    assert!(!glob("a?c", "ac"));
    assert!(glob("*-sha1", "diffie-hellman-group14-sha1"));
    assert!(!glob("*-sha1", "hmac-sha1-etm@openssh.com"));
    assert!(glob("[*]:2222", "[r1]:2222"));
}

#[test]
fn a_file_read_for_one_host_keeps_only_its_lines() {
    let text = format!(
        "router1 {ED25519}\nrouter2 ssh-ed25519 broken\n{HASHED_PORT} {ECDSA}\n@revoked * {OTHER_ED25519}\n"
    );
    let hosts = KnownHosts::parse(
        Path::new("/test/known_hosts"),
        &text,
        Some("[127.0.0.1]:2222"),
    );
    assert_eq!(hosts.lines.len(), 2, "{hosts:?}");
    assert_eq!(
        hosts.check_key("127.0.0.1", 2222, &key(ECDSA)),
        Verdict::Known
    );
    assert_eq!(
        hosts.check_key("127.0.0.1", 2222, &key(OTHER_ED25519)),
        Verdict::Revoked { line: 4 }
    );
    // The broken line is about router2 only.
    assert_eq!(hosts.invalid_entry("127.0.0.1", 2222), None);
}

/// A file with every kind of line, CRLF endings on some, for `load` against a full parse.
fn mixed_file() -> String {
    format!(
        "# fleet\r\nRouter1,10.0.0.1 {ED25519}\r\n[127.0.0.1]:2222 {ECDSA}\n\
         {HASHED} {ED25519}\n{HASHED_PORT} {ECDSA}\n*.lab,!bad.lab {OTHER_ED25519}\n\
         r?uter9 {ECDSA}\n@revoked bad.lab,10.0.0.1 {OTHER_ED25519}\n\
         @cert-authority *.lab {CA}\nrouter2 ssh-ed25519 broken\n|1|not-base64|x {ECDSA}\n\
         \n   spaced.lab    {ED25519}   comment\n"
    )
}

#[test]
fn a_file_loaded_for_one_host_says_what_the_whole_file_says_of_it() {
    let path = std::env::temp_dir().join(format!("cs-known-hosts-{}", std::process::id()));
    std::fs::write(&path, mixed_file()).expect("a temporary known_hosts file");
    let whole = KnownHosts::parse(&path, &mixed_file(), None);
    let hosts = [
        ("router1", 22),
        ("ROUTER1", 22),
        ("10.0.0.1", 22),
        ("127.0.0.1", 2222),
        ("a.lab", 22),
        ("bad.lab", 22),
        ("spaced.lab", 22),
        ("router9", 22),
        ("router2", 22),
        ("nowhere", 22),
    ];
    for (host, port) in hosts {
        let loaded = KnownHosts::load(&path, host, port)
            .expect("readable")
            .expect("present");
        for shown in [ED25519, ECDSA, OTHER_ED25519] {
            assert_eq!(
                loaded.check_key(host, port, &key(shown)),
                whole.check_key(host, port, &key(shown)),
                "{host}:{port} showing {shown}"
            );
        }
        assert_eq!(
            loaded.recorded_types(host, port),
            whole.recorded_types(host, port),
            "{host}:{port}"
        );
        assert_eq!(
            loaded.has_authority(host, port),
            whole.has_authority(host, port),
            "{host}:{port}"
        );
        assert_eq!(
            loaded.invalid_entry(host, port),
            whole.invalid_entry(host, port),
            "{host}:{port}"
        );
    }
    // Lines are numbered as in the file, CRLF or not, and a literal pattern matches whatever
    // its case.
    let router1 = KnownHosts::load(&path, "router1", 22)
        .expect("readable")
        .expect("present");
    assert_eq!(
        router1.check_key("router1", 22, &key(OTHER_ED25519)),
        Verdict::Changed { line: 2 }
    );
    assert_eq!(
        router1.check_key("router1", 22, &key(ED25519)),
        Verdict::Known
    );
    let lab = KnownHosts::load(&path, "bad.lab", 22)
        .expect("readable")
        .expect("present");
    assert_eq!(
        lab.check_key("bad.lab", 22, &key(OTHER_ED25519)),
        Verdict::Revoked { line: 8 }
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_known_hosts_file_that_is_not_text_cannot_be_read_and_a_missing_one_is_none() {
    let path = std::env::temp_dir().join(format!("cs-known-hosts-bin-{}", std::process::id()));
    std::fs::write(&path, b"router1 \xff\xfe\n").expect("a temporary file");
    let error = KnownHosts::load(&path, "router1", 22).expect_err("not UTF-8");
    assert!(error.contains(&path.display().to_string()), "{error}");
    let _ = std::fs::remove_file(&path);
    assert!(matches!(KnownHosts::load(&path, "router1", 22), Ok(None)));
}
