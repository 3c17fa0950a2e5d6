use super::*;

fn names(lists: &AlgorithmLists, list: AlgorithmList) -> Vec<String> {
    lists.get(list).map(<[String]>::to_vec).unwrap_or_default()
}

fn kex(preferred: &Preferred) -> Vec<&str> {
    preferred.kex.iter().map(AsRef::as_ref).collect()
}

#[test]
fn modern_is_russhs_default_and_legacy_adds_sha1_and_cbc() {
    let modern = AlgorithmPolicy::Modern.preferred();
    assert_eq!(kex(&modern), kex(&Preferred::default()));
    let legacy = AlgorithmPolicy::Legacy.preferred();
    for name in [
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group1-sha1",
        "diffie-hellman-group-exchange-sha1",
        // The extension markers stay, so strict kex still guards against Terrapin.
        "kex-strict-c-v00@openssh.com",
        "ext-info-c",
    ] {
        assert!(kex(&legacy).contains(&name), "{name} in {:?}", kex(&legacy));
    }
    // Modern algorithms keep their precedence.
    assert_eq!(kex(&legacy)[0], kex(&modern)[0]);
    let ciphers: Vec<&str> = legacy.cipher.iter().map(AsRef::as_ref).collect();
    assert!(ciphers.contains(&"aes128-cbc") && ciphers.contains(&"aes256-cbc"));
    let macs: Vec<&str> = legacy.mac.iter().map(AsRef::as_ref).collect();
    assert!(macs.contains(&"hmac-sha1"));
    assert_eq!(
        ciphers.contains(&"3des-cbc"),
        cfg!(feature = "legacy-crypto")
    );
    assert!(legacy.key.iter().any(|key| key.as_str() == "ssh-rsa"));
}

#[test]
fn openssh_syntax_replaces_appends_removes_and_prepends() {
    let default_ciphers = default_names(AlgorithmList::Ciphers);
    let set = |spec: &str| {
        names(
            &AlgorithmLists::new()
                .set(AlgorithmList::Ciphers, spec)
                .expect("valid"),
            AlgorithmList::Ciphers,
        )
    };
    assert_eq!(set("aes128-cbc, aes128-ctr"), ["aes128-cbc", "aes128-ctr"]);
    let appended = set("+aes128-cbc,aes128-ctr");
    assert_eq!(appended[..default_ciphers.len()], default_ciphers[..]);
    assert_eq!(appended.last().map(String::as_str), Some("aes128-cbc"));
    assert_eq!(appended.len(), default_ciphers.len() + 1);
    let removed = set("-aes*-ctr");
    assert!(removed.iter().all(|name| !name.ends_with("-ctr")));
    assert!(removed.contains(&"chacha20-poly1305@openssh.com".to_owned()));
    let prepended = set("^aes128-ctr");
    assert_eq!(prepended[0], "aes128-ctr");
    assert_eq!(prepended.len(), default_ciphers.len());
}

#[test]
fn an_unknown_name_is_an_error_naming_it_and_its_list() {
    let error = AlgorithmLists::new()
        .set(AlgorithmList::Kex, "+diffie-hellman-group14-sha7")
        .expect_err("unknown name");
    assert_eq!(error.list, AlgorithmList::Kex);
    assert_eq!(error.name, "diffie-hellman-group14-sha7");
    let text = error.to_string();
    assert!(
        text.contains("KexAlgorithms") && text.contains("diffie-hellman-group14-sha1"),
        "{text}"
    );
    assert!(
        AlgorithmLists::new()
            .set(AlgorithmList::Ciphers, "none")
            .is_err()
    );
    assert!(
        AlgorithmLists::new()
            .set(AlgorithmList::Macs, "-nothing*")
            .is_err()
    );
    assert!(AlgorithmLists::new().set(AlgorithmList::Macs, "+").is_err());
}

#[test]
fn replaced_kex_lists_keep_the_extension_markers() {
    let lists = AlgorithmLists::new()
        .set(AlgorithmList::Kex, "diffie-hellman-group14-sha1")
        .expect("valid");
    let preferred = AlgorithmPolicy::Lists(lists).preferred();
    assert_eq!(
        kex(&preferred),
        [
            "diffie-hellman-group14-sha1",
            "ext-info-c",
            "kex-strict-c-v00@openssh.com"
        ]
    );
}

#[test]
fn host_key_lists_split_plain_and_certificate_algorithms() {
    let lists = AlgorithmLists::new()
        .set(
            AlgorithmList::HostKeyAlgorithms,
            "rsa-sha2-256-cert-v01@openssh.com,ssh-rsa,ecdsa-sha2-nistp256",
        )
        .expect("valid");
    let preferred = AlgorithmPolicy::Lists(lists).preferred();
    let keys: Vec<&str> = preferred.key.iter().map(Algorithm::as_str).collect();
    assert_eq!(keys, ["ssh-rsa", "ecdsa-sha2-nistp256"]);
    assert_eq!(
        preferred
            .host_key_certificates
            .iter()
            .map(Algorithm::to_certificate_type)
            .collect::<Vec<_>>(),
        ["rsa-sha2-256-cert-v01@openssh.com"]
    );
}

#[test]
fn the_extra_takes_names_objects_strings_and_arrays() {
    use serde_json::json;
    assert_eq!(
        AlgorithmPolicy::from_extra(&json!("Legacy")),
        Ok(AlgorithmPolicy::Legacy)
    );
    assert_eq!(
        AlgorithmPolicy::from_extra(&json!("modern")),
        Ok(AlgorithmPolicy::Modern)
    );
    let policy = AlgorithmPolicy::from_extra(&json!({
        "kex": "+diffie-hellman-group14-sha1",
        "macs": ["hmac-sha1"],
    }))
    .expect("valid");
    let AlgorithmPolicy::Lists(lists) = policy else {
        panic!("lists expected, got {policy:?}");
    };
    assert_eq!(names(&lists, AlgorithmList::Macs), ["hmac-sha1"]);
    assert!(names(&lists, AlgorithmList::Kex).contains(&"diffie-hellman-group14-sha1".to_owned()));
    assert!(lists.get(AlgorithmList::Ciphers).is_none());
    for bad in [
        json!("ancient"),
        json!(3),
        json!({"kex": 3}),
        json!({"kexalgorithms": "curve25519-sha256"}),
        json!({"ciphers": ["aes128-cbc", 1]}),
        json!({"ciphers": "rot13"}),
    ] {
        assert!(AlgorithmPolicy::from_extra(&bad).is_err(), "{bad}");
    }
}

#[test]
fn a_failed_negotiation_names_both_lists_and_the_fix() {
    let ours: Vec<String> = kex(&Preferred::default())
        .iter()
        .map(|n| n.to_string())
        .collect();
    let theirs = vec!["diffie-hellman-group14-sha1".to_owned()];
    let error = negotiation_error(&russh::AlgorithmKind::Kex, &ours, &theirs, "r1:2222");
    assert_eq!(error.kind(), FailureKind::Negotiation);
    let text = error.message();
    assert!(text.contains("r1:2222"), "{text}");
    assert!(
        text.contains("curve25519-sha256") && text.contains("[diffie-hellman-group14-sha1]"),
        "{text}"
    );
    assert!(
        text.contains("algorithms = \"legacy\"")
            && text.contains("kex = \"+diffie-hellman-group14-sha1\""),
        "{text}"
    );
    // A cipher the legacy policy does not add, but the plugin knows.
    let theirs = vec!["aes128-gcm@openssh.com".to_owned()];
    let error = negotiation_error(&russh::AlgorithmKind::Cipher, &[], &theirs, "r1:22");
    assert!(
        error
            .message()
            .contains("set ciphers = \"+aes128-gcm@openssh.com\""),
        "{error}"
    );
    let theirs = vec!["rijndael-cbc@lysator.liu.se".to_owned()];
    let error = negotiation_error(&russh::AlgorithmKind::Cipher, &[], &theirs, "r1:22");
    assert!(error.message().contains("implements none"), "{error}");
}

#[test]
fn openssh_names_the_plugin_lacks_are_left_out_not_fatal() {
    // As copied from an ssh config or a hardening guide.
    let lists = AlgorithmLists::new()
        .set(
            AlgorithmList::Kex,
            "sntrup761x25519-sha512@openssh.com,curve25519-sha256",
        )
        .and_then(|lists| {
            lists.set(
                AlgorithmList::Macs,
                "umac-128-etm@openssh.com,hmac-sha2-256",
            )
        })
        .and_then(|lists| lists.set(AlgorithmList::Ciphers, "-3des-cbc,aes*-cbc"))
        .expect("valid for OpenSSH");
    assert_eq!(names(&lists, AlgorithmList::Kex), ["curve25519-sha256"]);
    assert_eq!(names(&lists, AlgorithmList::Macs), ["hmac-sha2-256"]);
    let error = AlgorithmLists::new()
        .set(AlgorithmList::Macs, "umac-64@openssh.com")
        .expect_err("nothing left");
    assert!(
        error
            .to_string()
            .contains("no algorithm the plugin implements"),
        "{error}"
    );
    assert!(
        AlgorithmLists::new()
            .set_names(AlgorithmList::Macs, &["hmac-md5"])
            .is_err()
    );
}

#[test]
fn an_openssh_config_gives_lists_or_nothing() {
    assert_eq!(
        AlgorithmPolicy::from_openssh(None, None, None, None),
        Ok(None)
    );
    let policy = AlgorithmPolicy::from_openssh(
        Some("+diffie-hellman-group14-sha1"),
        None,
        Some("hmac-sha1"),
        None,
    )
    .expect("valid")
    .expect("lists");
    let AlgorithmPolicy::Lists(lists) = policy else {
        panic!("lists expected, got {policy:?}");
    };
    assert_eq!(names(&lists, AlgorithmList::Macs), ["hmac-sha1"]);
    assert!(lists.get(AlgorithmList::Ciphers).is_none());
    let error = AlgorithmPolicy::from_openssh(None, Some("aes128-cbc,twofish-cbc"), None, None)
        .expect_err("twofish is unknown");
    assert_eq!(error.list, AlgorithmList::Ciphers);
}
