//! The inventory keys of issue 11: what reaches the plugin's extras, and the one line a wrong
//! value gets.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A directory of this test process's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fleet-inventory-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a scratch file");
        path
    }

    fn load(&self, inventory: &str) -> Result<Loaded, String> {
        load_inventory(&self.write("inventory.toml", inventory))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const DEFAULTS: &str = "[defaults]\nuser = \"admin\"\npassword = \"pw\"\nssh_config = \"none\"\n";

fn extras_of(loaded: &Loaded, index: usize) -> serde_json::Map<String, Value> {
    loaded.targets[index]
        .params
        .extras
        .clone()
        .map(|extras| extras.into_iter().collect())
        .unwrap_or_default()
}

/// The error of an inventory that must be refused; it is one line and names what it says.
fn refused(scratch: &Scratch, inventory: &str, needles: &[&str]) -> String {
    let error = match scratch.load(inventory) {
        Ok(_) => panic!("accepted, should be refused:\n{inventory}"),
        Err(error) => error,
    };
    assert!(!error.contains('\n'), "not one line: {error}");
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} missing from: {error}");
    }
    error
}

#[test]
fn the_new_keys_reach_the_plugin_under_the_contract_names() {
    let scratch = Scratch::new();
    let key = scratch.write("id", "not really a key");
    let inventory = format!(
        "[defaults]\nuser = \"admin\"\nssh_config = \"none\"\nconnect_timeout = 2.5\n\
         algorithms = \"legacy\"\n\n\
         [[hosts]]\nname = \"bastion\"\nhost = \"10.0.0.1\"\nagent = true\n\n\
         [[hosts]]\nname = \"r1\"\nhost = \"10.0.0.2\"\nkey = \"{}\"\npassphrase = \"sesame\"\n\
         jump = \"bastion\"\nconnect_timeout = 4\n\
         algorithms = {{ kex = \"+diffie-hellman-group14-sha1\", ciphers = [\"aes128-cbc\"] }}\n",
        key.display()
    );
    let loaded = scratch.load(&inventory).expect("a valid inventory");
    assert_eq!(loaded.ssh_config, None);
    let bastion = extras_of(&loaded, 0);
    assert_eq!(bastion["agent"], Value::Bool(true));
    assert_eq!(bastion["connect_timeout"], serde_json::json!(2.5));
    assert_eq!(bastion["algorithms"], serde_json::json!("legacy"));
    assert!(!bastion.contains_key("jump"));
    let r1 = extras_of(&loaded, 1);
    assert_eq!(r1["private_key_passphrase"], serde_json::json!("sesame"));
    assert_eq!(r1["jump"], serde_json::json!("bastion"));
    assert_eq!(r1["connect_timeout"], serde_json::json!(4.0));
    assert_eq!(
        r1["algorithms"],
        serde_json::json!({ "kex": "+diffie-hellman-group14-sha1", "ciphers": ["aes128-cbc"] })
    );
    assert_eq!(
        loaded.targets[1].params.port, None,
        "no port given: the ssh config's or 22"
    );
}

#[test]
fn wrong_values_get_one_line_naming_the_entry_and_the_key() {
    let scratch = Scratch::new();
    let host = |extra: &str| {
        format!("{DEFAULTS}\n[[hosts]]\nname = \"r1\"\nhost = \"10.0.0.2\"\n{extra}\n")
    };
    for bad in [
        "connect_timeout = 0",
        "connect_timeout = -1",
        "connect_timeout = \"5\"",
    ] {
        refused(
            &scratch,
            &host(bad),
            &["host \"r1\" (entry 1)", "`connect_timeout`"],
        );
    }
    refused(
        &scratch,
        &format!("{DEFAULTS}connect_timeout = 0\n[[hosts]]\nhost = \"10.0.0.2\"\n"),
        &["[defaults]", "`connect_timeout`"],
    );
    refused(
        &scratch,
        &host("algorithms = \"ancient\""),
        &["`algorithms`", "\"ancient\""],
    );
    refused(
        &scratch,
        &host("algorithms = { kex = [] }"),
        &["`algorithms`", "kex"],
    );
    refused(
        &scratch,
        &host("algorithms = { compression = \"none\" }"),
        &["`algorithms`", "\"compression\""],
    );
    refused(&scratch, &host("algorithms = 3"), &["`algorithms`"]);
    refused(
        &scratch,
        &host("algorithms = { kex = \"+diffie-hellman-group99-sha7\" }"),
        &["`algorithms`", "diffie-hellman-group99-sha7"],
    );
    refused(
        &scratch,
        &host("jump = \"nowhere\""),
        &["`jump`", "\"nowhere\"", "not an entry"],
    );
    refused(
        &scratch,
        &host("ssh_config = \"/x\""),
        &["host \"r1\"", "`ssh_config`", "[defaults]"],
    );
    refused(
        &scratch,
        &host("agent = \"yes\""),
        &["line 9, `agent`", "boolean"],
    );
    refused(
        &scratch,
        &host("passphrase = \"p\""),
        &["`passphrase` without a `key`"],
    );
}

#[test]
fn jump_chains_must_not_loop() {
    let scratch = Scratch::new();
    let inventory = format!(
        "{DEFAULTS}\n[[hosts]]\nname = \"a\"\nhost = \"10.0.0.1\"\njump = \"b\"\n\
         [[hosts]]\nname = \"b\"\nhost = \"10.0.0.2\"\njump = \"c\"\n\
         [[hosts]]\nname = \"c\"\nhost = \"10.0.0.3\"\njump = \"a\"\n"
    );
    refused(&scratch, &inventory, &["host \"a\"", "a -> b -> c -> a"]);

    // A jump in [defaults] reaches the jump host too, unless it opts out.
    let through_bastion = format!(
        "{DEFAULTS}jump = \"bastion\"\n\n[[hosts]]\nname = \"bastion\"\nhost = \"10.0.0.1\"\n{{}}\n\
         [[hosts]]\nname = \"r1\"\nhost = \"10.0.0.2\"\n"
    );
    refused(
        &scratch,
        &through_bastion.replace("{}", ""),
        &["bastion -> bastion", "jump = \"none\""],
    );
    let loaded = scratch
        .load(&through_bastion.replace("{}", "jump = \"none\""))
        .expect("the bastion opts out");
    assert!(!extras_of(&loaded, 0).contains_key("jump"));
    assert_eq!(extras_of(&loaded, 1)["jump"], serde_json::json!("bastion"));
}

#[test]
fn the_ssh_config_supplies_user_and_port_and_must_parse() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "ssh_config",
        "Host r*\n  User netops\n  Port 2200\n  IdentityFile /nonexistent/id\n",
    );
    let inventory = format!(
        "[defaults]\nssh_config = \"{}\"\n\n[[hosts]]\nhost = \"r1\"\n",
        config.display()
    );
    let loaded = scratch
        .load(&inventory)
        .expect("user and key come from the ssh config");
    assert_eq!(loaded.ssh_config, Some(SshConfigFile::Path(config.clone())));
    assert_eq!(
        loaded.targets[0].params.username, None,
        "the plugin applies it"
    );
    refused(
        &scratch,
        &format!(
            "[defaults]\nssh_config = \"{}\"\n\n[[hosts]]\nhost = \"x1\"\n",
            config.display()
        ),
        &["host \"x1\"", "no `user`"],
    );

    let broken = scratch.write("broken", "Host a\n  Port many\n");
    refused(
        &scratch,
        &format!(
            "[defaults]\nssh_config = \"{}\"\n\n[[hosts]]\nhost = \"a\"\n",
            broken.display()
        ),
        &[
            "[defaults]",
            "`ssh_config`",
            &broken.display().to_string(),
            "line 2",
        ],
    );
    refused(
        &scratch,
        "[defaults]\nssh_config = \"/nonexistent/ssh_config\"\n\n[[hosts]]\nhost = \"a\"\n",
        &["/nonexistent/ssh_config"],
    );
}

#[test]
fn platform_and_secret_reach_the_params_and_the_extras() {
    let scratch = Scratch::new();
    let inventory = format!(
        "{DEFAULTS}platform = \"cisco_ios\"\nsecret = \"from-defaults\"\n\n\
         [[hosts]]\nname = \"r1\"\nhost = \"10.0.0.1\"\n\n\
         [[hosts]]\nname = \"r2\"\nhost = \"10.0.0.2\"\nplatform = \"junos\"\nsecret = \"own\"\n"
    );
    let loaded = scratch.load(&inventory).expect("a valid inventory");
    let (r1, r2) = (&loaded.targets[0].params, &loaded.targets[1].params);
    assert_eq!(r1.platform.as_deref(), Some("cisco_ios"));
    assert_eq!(
        extras_of(&loaded, 0)["secret"],
        serde_json::json!("from-defaults")
    );
    // A NAPALM alias is a name the plugin knows.
    assert_eq!(r2.platform.as_deref(), Some("junos"));
    assert_eq!(extras_of(&loaded, 1)["secret"], serde_json::json!("own"));

    let error = scratch
        .load(&format!(
            "{DEFAULTS}\n[[hosts]]\nname = \"r1\"\nhost = \"10.0.0.1\"\nplatform = \"ciscoios\"\n"
        ))
        .err()
        .expect("an unknown platform is refused");
    assert!(
        error.contains("host \"r1\" (entry 1): `platform` \"ciscoios\" is not a platform profile")
            && error.contains("cisco_ios"),
        "{error}"
    );
}
