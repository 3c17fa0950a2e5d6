//! OpenSSH client configuration (`ssh_config(5)`): which file to read, and what it says about
//! one host, as plain data.
//!
//! The file is parsed by the `ssh2-config` crate, which applies OpenSSH's rules: `Host`
//! patterns with `*`, `?` and `!` negation, the first value obtained for a keyword wins (so
//! specific blocks go before `Host *`), options before the first `Host` apply to every host,
//! `IdentityFile` accumulates, and `Include` is followed. It knows no `Match`: a `Match all`
//! block is read as `Host *`, any other `Match` block is skipped with a warning (its options
//! apply to no host), and a `Match` inside an included file is refused.
//!
//! Keywords this plugin does not know are ignored, as `IgnoreUnknown *` would: `ssh` refuses
//! them, but a parser that lags behind OpenSSH must not refuse a file `ssh` reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2_config::{Algorithms, DefaultAlgorithms, HostParams, ParseRule};
use tracing::{debug, warn};

use crate::connection::{FailureKind, OpenError};

/// Which OpenSSH client config file the SSH plugin reads (see
/// [`SshOptions::ssh_config`](super::SshOptions::ssh_config)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SshConfigFile {
    /// `~/.ssh/config` of the account the program runs as, when that file exists; no config
    /// when it does not.
    User,
    /// This file. A file that is missing, unreadable or malformed fails every open with
    /// [`FailureKind::Config`].
    Path(PathBuf),
}

impl SshConfigFile {
    /// The file this names: `None` for [`SshConfigFile::User`] when there is no home directory
    /// or no `~/.ssh/config` in it.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Self::Path(path) => Some(path.clone()),
            Self::User => home()
                .map(|home| home.join(".ssh").join("config"))
                .filter(|path| path.exists()),
        }
    }

    /// Reads and parses the file this names; `Ok(None)` when it names no file (see
    /// [`SshConfigFile::path`]).
    pub fn load(&self) -> Result<Option<SshClientConfig>, OpenError> {
        self.path()
            .map(|path| SshClientConfig::load(&path))
            .transpose()
    }
}

/// `StrictHostKeyChecking`: what to do with a host key known_hosts does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrictHostKeyChecking {
    /// `yes`: refuse unknown and changed keys.
    Yes,
    /// `accept-new`: record unknown keys, refuse changed ones.
    AcceptNew,
    /// `no` or `off`: accept any key.
    No,
    /// `ask`: `ssh` asks on the terminal; without one (as here) it refuses, as with `yes`.
    Ask,
}

/// What an OpenSSH client config says about one host: the values of the keywords the SSH
/// plugin uses, `None` (or empty) where the file sets none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshHostConfig {
    /// `HostName`: the name or address to connect to instead of the one matched, with `%h`
    /// replaced by the matched name.
    pub host_name: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `User`.
    pub user: Option<String>,
    /// `IdentityFile`, every one that applies, in order (`~` expanded, other `%` tokens left).
    pub identity_files: Vec<PathBuf>,
    /// `ProxyJump` as written (`[user@]host[:port]`, comma-separated); `None` also for
    /// `ProxyJump none`.
    pub proxy_jump: Option<String>,
    /// `Ciphers` in OpenSSH syntax: `a,b` replaces the defaults, `+a` appends, `-a` removes,
    /// `^a` puts first.
    pub ciphers: Option<String>,
    /// `KexAlgorithms`, in OpenSSH syntax (see `ciphers`).
    pub kex_algorithms: Option<String>,
    /// `HostKeyAlgorithms`, in OpenSSH syntax (see `ciphers`).
    pub host_key_algorithms: Option<String>,
    /// `MACs`, in OpenSSH syntax (see `ciphers`).
    pub macs: Option<String>,
    /// `ConnectTimeout` (`0` is taken as unset, as OpenSSH does).
    pub connect_timeout: Option<Duration>,
    /// `ServerAliveInterval` (`0` turns keepalives off).
    pub server_alive_interval: Option<Duration>,
    /// `StrictHostKeyChecking`.
    pub strict_host_key_checking: Option<StrictHostKeyChecking>,
    /// The first `UserKnownHostsFile` (`~` and `%d` expanded; `none` is `/dev/null`).
    pub user_known_hosts_file: Option<PathBuf>,
}

/// An OpenSSH client config file, parsed. [`SshClientConfig::host`] resolves one host.
#[derive(Clone, Debug)]
pub struct SshClientConfig {
    /// Where it was read from, for error messages.
    path: PathBuf,
    /// Parsed against OpenSSH's default algorithm lists, as `ssh` resolves them.
    resolved: ssh2_config::SshConfig,
    /// Parsed against a marker as the only default algorithm: how an algorithm keyword was
    /// written (`+`, `^` or a plain list) shows in where the marker ends up. `ssh2-config`
    /// keeps the written form private and prints only its operator.
    marked: ssh2_config::SshConfig,
}

/// Stands for "the defaults" in [`SshClientConfig::marked`]'s algorithm lists: no algorithm
/// name contains a space.
const DEFAULTS_MARKER: &str = "<defaults>";

impl SshClientConfig {
    /// Reads and parses the file at `path`. A file that cannot be read or parsed is a
    /// [`FailureKind::Config`] error naming it (and the line, for a parse error).
    pub fn load(path: &Path) -> Result<Self, OpenError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            OpenError::new(
                FailureKind::Config,
                format!("cannot read the ssh config {}: {error}", path.display()),
            )
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`, the content of the file at `path` (used in messages, and to tell which
    /// file a relative `Include` is relative to: `~/.ssh`, as for OpenSSH's user config).
    pub fn parse(text: &str, path: &Path) -> Result<Self, OpenError> {
        let text = without_match_blocks(text, path);
        let resolved = parse_with(&text, path, DefaultAlgorithms::default())?;
        let marker = vec![DEFAULTS_MARKER.to_owned()];
        let marked = parse_with(
            &text,
            path,
            DefaultAlgorithms {
                ca_signature_algorithms: marker.clone(),
                ciphers: marker.clone(),
                host_key_algorithms: marker.clone(),
                kex_algorithms: marker.clone(),
                mac: marker.clone(),
                pubkey_accepted_algorithms: marker,
            },
        )?;
        Ok(Self {
            path: path.to_owned(),
            resolved,
            marked,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file says about `host`, the name given to connect to (matched against the
    /// `Host` patterns, as `ssh NAME` does). A value that cannot be used (an unknown
    /// `StrictHostKeyChecking`) is a [`FailureKind::Config`] error naming the file and host.
    pub fn host(&self, host: &str) -> Result<SshHostConfig, OpenError> {
        let params = self.resolved.query(host);
        let marked = self.marked.query(host);
        let defaults = DefaultAlgorithms::default();
        if params
            .ignored_fields
            .keys()
            .any(|field| field.eq_ignore_ascii_case("match"))
        {
            return Err(self.error(format!(
                "a `Match` block in a file it includes applies to {host}, and `Match` is only \
                 supported in the file itself"
            )));
        }
        if !params.ignored_fields.is_empty() {
            debug!(path = %self.path.display(), %host, fields = ?params.ignored_fields.keys(),
                "ssh config keywords ignored");
        }
        Ok(SshHostConfig {
            host_name: params
                .host_name
                .as_deref()
                .map(|name| percent_h(name, host)),
            port: params.port,
            user: params.user.clone(),
            identity_files: params.identity_file.clone().unwrap_or_default(),
            proxy_jump: params
                .proxy_jump
                .as_ref()
                .map(|hops| hops.join(","))
                .filter(|jump| !jump.eq_ignore_ascii_case("none")),
            ciphers: written(&marked.ciphers, &params.ciphers, &defaults.ciphers),
            kex_algorithms: written(
                &marked.kex_algorithms,
                &params.kex_algorithms,
                &defaults.kex_algorithms,
            ),
            host_key_algorithms: written(
                &marked.host_key_algorithms,
                &params.host_key_algorithms,
                &defaults.host_key_algorithms,
            ),
            macs: written(&marked.mac, &params.mac, &defaults.mac),
            connect_timeout: params.connect_timeout.filter(|t| !t.is_zero()),
            server_alive_interval: params.server_alive_interval,
            strict_host_key_checking: self.strict_host_key_checking(&params, host)?,
            user_known_hosts_file: unsupported(&params, "userknownhostsfile")
                .and_then(|files| files.first())
                .map(|file| known_hosts_path(file)),
        })
    }

    fn strict_host_key_checking(
        &self,
        params: &HostParams,
        host: &str,
    ) -> Result<Option<StrictHostKeyChecking>, OpenError> {
        let Some(args) = unsupported(params, "stricthostkeychecking") else {
            return Ok(None);
        };
        let value = args.join(" ");
        Ok(Some(match value.to_ascii_lowercase().as_str() {
            "yes" | "true" => StrictHostKeyChecking::Yes,
            "accept-new" => StrictHostKeyChecking::AcceptNew,
            "no" | "off" | "false" => StrictHostKeyChecking::No,
            "ask" => StrictHostKeyChecking::Ask,
            _ => {
                return Err(self.error(format!(
                    "StrictHostKeyChecking {value:?} (for {host}) is not yes, accept-new, no, \
                     off or ask"
                )));
            }
        }))
    }

    fn error(&self, problem: String) -> OpenError {
        OpenError::new(
            FailureKind::Config,
            format!("ssh config {}: {problem}", self.path.display()),
        )
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

fn parse_with(
    text: &str,
    path: &Path,
    defaults: DefaultAlgorithms,
) -> Result<ssh2_config::SshConfig, OpenError> {
    let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
    let parse = |text: &str| {
        ssh2_config::SshConfig::default()
            .default_algorithms(defaults.clone())
            .parse(&mut text.as_bytes(), rules)
    };
    parse(text).map_err(|error| {
        // ssh2-config does not say where it stopped: the first line whose addition makes the
        // text fail is the one (an error in an included file shows at its `Include`).
        let mut end = 0;
        let line = text.split_inclusive('\n').position(|line| {
            end += line.len();
            parse(&text[..end]).is_err()
        });
        let at = line.map(|n| format!(" line {}", n + 1)).unwrap_or_default();
        OpenError::new(
            FailureKind::Config,
            format!(
                "cannot parse the ssh config {}{at}: {error}",
                path.display()
            ),
        )
    })
}

/// `text` with each `Match` line turned into a `Host` line ssh2-config reads: `Match all` into
/// `Host *`, any other into a block no host matches (`Host !*`), so its options are not taken
/// for the block before it.
fn without_match_blocks(text: &str, path: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        let keyword_end = trimmed
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(trimmed.len());
        if !trimmed[..keyword_end].eq_ignore_ascii_case("match") {
            out.push_str(line);
            continue;
        }
        let criteria = trimmed[keyword_end..]
            .trim_start_matches(|c: char| c.is_whitespace() || c == '=')
            .trim();
        if criteria.eq_ignore_ascii_case("all") {
            out.push_str("Host *\n");
        } else {
            warn!(
                path = %path.display(),
                line = number + 1,
                "ssh config: `Match {criteria}` is not supported; the options of its block are \
                 not applied"
            );
            out.push_str("Host !*\n");
        }
    }
    out
}

/// The arguments of a keyword ssh2-config parses but does not model.
fn unsupported<'a>(params: &'a HostParams, keyword: &str) -> Option<&'a Vec<String>> {
    params.unsupported_fields.get(keyword)
}

/// `HostName` with OpenSSH's `%h` (the name matched) and `%%` expanded.
fn percent_h(value: &str, host: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('%', Some('h')) => {
                out.push_str(host);
                chars.next();
            }
            ('%', Some('%')) => {
                out.push('%');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

fn known_hosts_path(file: &str) -> PathBuf {
    if file.eq_ignore_ascii_case("none") {
        return PathBuf::from("/dev/null");
    }
    match (file.strip_prefix("~/").or(file.strip_prefix("%d/")), home()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(file),
    }
}

/// An algorithm keyword as written in the file, from where the defaults marker ended up in
/// `marked` (the list parsed against the marker alone) and, for a removal, from what
/// `resolved` lost of OpenSSH's `defaults`.
fn written(marked: &Algorithms, resolved: &Algorithms, defaults: &[String]) -> Option<String> {
    if marked.is_default() {
        return None;
    }
    let list = marked.algorithms();
    let at = list.iter().position(|name| name == DEFAULTS_MARKER);
    match at {
        None => Some(list.join(",")),
        Some(0) if list.len() > 1 => Some(format!("+{}", list[1..].join(","))),
        Some(last) if last + 1 == list.len() && last > 0 => {
            Some(format!("^{}", list[..last].join(",")))
        }
        // Only the marker left: a removal.
        Some(_) => {
            let removed: Vec<&str> = defaults
                .iter()
                .filter(|name| !resolved.algorithms().contains(name))
                .map(String::as_str)
                .collect();
            (!removed.is_empty()).then(|| format!("-{}", removed.join(",")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> SshClientConfig {
        SshClientConfig::parse(text, Path::new("/test/config")).expect("the config parses")
    }

    #[test]
    fn host_patterns_first_value_wins_and_hostname_substitution() {
        let config = config(
            "Host r1\n  HostName 10.0.0.1\n  Port 2201\n\
             Host r* !r9\n  User netops\n  Port 2222\n  HostName %h.lab\n\
             Host *\n  User fallback\n  ConnectTimeout 7\n",
        );
        let r1 = config.host("r1").expect("r1 resolves");
        assert_eq!(r1.host_name.as_deref(), Some("10.0.0.1"));
        assert_eq!(r1.port, Some(2201), "the first Port obtained wins");
        assert_eq!(r1.user.as_deref(), Some("netops"));
        assert_eq!(r1.connect_timeout, Some(Duration::from_secs(7)));
        let r2 = config.host("r2").expect("r2 resolves");
        assert_eq!(r2.host_name.as_deref(), Some("r2.lab"));
        assert_eq!(r2.port, Some(2222));
        let r9 = config.host("r9").expect("r9 resolves");
        assert_eq!(r9.host_name, None, "negated pattern");
        assert_eq!(r9.user.as_deref(), Some("fallback"));
    }

    #[test]
    fn algorithms_keep_their_openssh_form() {
        let config = config(
            "Host a\n  KexAlgorithms +diffie-hellman-group14-sha1\n  Ciphers aes128-cbc,aes128-ctr\n\
             \x20 MACs ^hmac-sha1\n  HostKeyAlgorithms -ssh-ed25519\n",
        );
        let a = config.host("a").expect("a resolves");
        assert_eq!(
            a.kex_algorithms.as_deref(),
            Some("+diffie-hellman-group14-sha1")
        );
        assert_eq!(a.ciphers.as_deref(), Some("aes128-cbc,aes128-ctr"));
        assert_eq!(a.macs.as_deref(), Some("^hmac-sha1"));
        assert_eq!(a.host_key_algorithms.as_deref(), Some("-ssh-ed25519"));
        assert_eq!(config.host("b").expect("b resolves").ciphers, None);
    }

    #[test]
    fn host_keys_and_other_keywords() {
        let config = config(
            "Host a\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile /k/hosts /k/other\n\
             \x20 ProxyJump admin@bastion:2200,jump2\n  IdentityFile /k/id1\n  ServerAliveInterval 0\n\
             Host b\n  StrictHostKeyChecking maybe\n  ProxyJump none\n\
             Host *\n  IdentityFile /k/id2\n  SomeFutureKeyword yes\n",
        );
        let a = config.host("a").expect("a resolves");
        assert_eq!(
            a.strict_host_key_checking,
            Some(StrictHostKeyChecking::AcceptNew)
        );
        assert_eq!(a.user_known_hosts_file, Some(PathBuf::from("/k/hosts")));
        assert_eq!(a.proxy_jump.as_deref(), Some("admin@bastion:2200,jump2"));
        assert_eq!(
            a.identity_files,
            vec![PathBuf::from("/k/id1"), PathBuf::from("/k/id2")]
        );
        assert_eq!(a.server_alive_interval, Some(Duration::ZERO));
        let error = config.host("b").expect_err("an unknown value is refused");
        assert_eq!(error.kind(), FailureKind::Config);
        assert!(error.message().contains("/test/config"), "{error}");
        assert!(error.message().contains("\"maybe\""), "{error}");
    }

    #[test]
    fn match_all_is_host_star_and_other_match_blocks_apply_nowhere() {
        let config = config(
            "Host a\n  Port 2201\nMatch exec \"true\"\n  User wrong\nMatch all\n  User right\n",
        );
        let a = config.host("a").expect("a resolves");
        assert_eq!(a.user.as_deref(), Some("right"));
        assert_eq!(a.port, Some(2201));
    }

    #[test]
    fn a_malformed_file_names_its_path_and_line() {
        let error = SshClientConfig::parse(
            "Host a\n  Port 22\n  Port notaport\n",
            Path::new("/etc/cfg"),
        )
        .expect_err("a bad port is refused");
        assert_eq!(error.kind(), FailureKind::Config);
        assert!(error.message().contains("/etc/cfg line 3"), "{error}");
        let missing = SshClientConfig::load(Path::new("/nonexistent/ssh_config"))
            .expect_err("a missing file is refused");
        assert_eq!(missing.kind(), FailureKind::Config);
        assert!(missing.message().contains("/nonexistent/ssh_config"));
    }

    #[test]
    fn percent_h_and_percent_percent() {
        assert_eq!(percent_h("%h.example", "r1"), "r1.example");
        assert_eq!(percent_h("100%%", "r1"), "100%");
        assert_eq!(percent_h("a%x", "r1"), "a%x");
    }
}
