//! A known_hosts file as OpenSSH reads it: host patterns with `*`, `?` and `!`, `[host]:port`
//! for ports other than 22, hashed names (`|1|salt|hash`), and the `@revoked` and
//! `@cert-authority` markers.
//!
//! Lines are parsed by `ssh-key`'s known_hosts [`Entry`] (the key parser russh itself uses);
//! matching is ours, since neither russh nor ssh-key matches patterns, hashes or markers the way
//! `ssh` does (russh's own helper compares host names literally and reads marker lines as
//! hosts). A line that cannot be parsed is skipped, as `ssh` skips it.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::ssh_key::{Certificate, certificate::CertType};
use russh::keys::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;
use tracing::debug;

/// One parsed line, with its line number (from 1) for messages.
#[derive(Debug)]
struct Line {
    number: usize,
    entry: Entry,
}

/// The lines of one known_hosts file.
#[derive(Debug)]
pub(super) struct KnownHosts {
    lines: Vec<Line>,
    /// Lines that cannot be parsed: their number, their host patterns when those can be read,
    /// and why.
    invalid: Vec<(usize, Option<HostPatterns>, String)>,
}

/// What a known_hosts file says of the key a server showed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The key (or the authority that signed its certificate) is recorded for the host.
    Known,
    /// The key is listed under `@revoked` on this line.
    Revoked { line: usize },
    /// Another key of the same type is recorded for the host, on this line.
    Changed { line: usize },
    /// The host is not listed with a key of this type; `recorded` names the types it is listed
    /// with, if any.
    Unknown { recorded: Vec<String> },
    /// A certificate from a trusted authority, but unusable for this reason.
    BadCertificate(String),
}

impl KnownHosts {
    /// Reads the lines of the file at `path` that may be about `host:port`: `Ok(None)` when
    /// it does not exist, an error (naming the path) when it cannot be read.
    ///
    /// A fleet's file lists every device and is read on every open: it is read a line at a
    /// time into one buffer, and a line naming other hosts literally is passed over without an
    /// allocation. Reading it whole and parsing every line's host patterns cost 5,000 opens
    /// against a 5,000-line file 45,000 allocations and a 550 KB buffer each (measured by
    /// bench/benches/ssh_scale.rs); raw russh's own check reads it the same way as this.
    pub(super) fn load(path: &Path, host: &str, port: u16) -> Result<Option<Self>, String> {
        let cannot_read = |error: io::Error| format!("cannot read {}: {error}", path.display());
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(cannot_read(error)),
        };
        let name = lookup_name(host, port);
        let mut reader = BufReader::new(file);
        let mut hosts = Self::empty();
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(cannot_read)? == 0 {
                return Ok(Some(hosts));
            }
            number += 1;
            hosts.add(path, number, &line, Some(&name));
        }
    }

    fn empty() -> Self {
        Self {
            lines: Vec::new(),
            invalid: Vec::new(),
        }
    }

    /// The lines of `text` whose host patterns match `name` (every line when `None`), as
    /// [`load`](Self::load) keeps them from a file.
    #[cfg(test)]
    fn parse(path: &Path, text: &str, name: Option<&str>) -> Self {
        let mut hosts = Self::empty();
        for (index, line) in text.lines().enumerate() {
            hosts.add(path, index + 1, line, name);
        }
        hosts
    }

    /// Line `number` of the file, kept if it may be about `name` (any line when `None`). Only
    /// kept lines have their key decoded: a fleet's known_hosts may hold tens of thousands of
    /// lines (measured, release build: 20,000 lines took 63 ms to decode in full).
    fn add(&mut self, path: &Path, number: usize, line: &str, name: Option<&str>) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        let field = line
            .split_whitespace()
            .find(|field| !field.starts_with('@'));
        if let (Some(field), Some(name)) = (field, name)
            && field_matches(field, name) == Some(false)
        {
            return;
        }
        // ssh-key splits fields on one space; OpenSSH on any run of blanks.
        let normalised = line.split_whitespace().collect::<Vec<_>>().join(" ");
        match normalised.parse::<Entry>() {
            Ok(entry) => self.lines.push(Line { number, entry }),
            Err(error) => {
                debug!(path = %path.display(), line = number, %error, "skipped a known_hosts line");
                let hosts = field.and_then(|field| field.parse::<HostPatterns>().ok());
                self.invalid.push((number, hosts, error.to_string()));
            }
        }
    }

    /// The lines with `marker` (none for plain keys) whose patterns match `host:port`.
    fn matching(&self, host: &str, port: u16, marker: Option<Marker>) -> Vec<&Line> {
        let name = lookup_name(host, port);
        self.lines
            .iter()
            .filter(|line| {
                line.entry.marker().copied() == marker
                    && host_matches(line.entry.host_patterns(), &name)
            })
            .collect()
    }

    /// The key types recorded for `host:port`, in file order, each once: what `ssh` puts first
    /// in its host-key algorithm list. A revoked key does not count, as `ssh` does not count it
    /// (asking for its type first would only get it refused).
    pub(super) fn recorded_types(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let mut types: Vec<Algorithm> = Vec::new();
        for line in self.matching(host, port, None) {
            if self.revoked(host, port, line.entry.public_key()).is_some() {
                continue;
            }
            let algorithm = line.entry.public_key().algorithm();
            if !types.contains(&algorithm) {
                types.push(algorithm);
            }
        }
        types
    }

    /// The first line that cannot be parsed and may be about `host:port` (its patterns match,
    /// or cannot be read either), with why: the key it records is unknowable, not unknown, so
    /// an unknown key must not be trusted on first use past it.
    pub(super) fn invalid_entry(&self, host: &str, port: u16) -> Option<(usize, &str)> {
        let name = lookup_name(host, port);
        self.invalid
            .iter()
            .find(|(_, hosts, _)| {
                hosts
                    .as_ref()
                    .is_none_or(|hosts| host_matches(hosts, &name))
            })
            .map(|(line, _, error)| (*line, error.as_str()))
    }

    /// Whether a `@cert-authority` line covers `host:port`: only then are certificates asked
    /// for, as `ssh` asks for them.
    pub(super) fn has_authority(&self, host: &str, port: u16) -> bool {
        !self
            .matching(host, port, Some(Marker::CertAuthority))
            .is_empty()
    }

    fn revoked(&self, host: &str, port: u16, key: &PublicKey) -> Option<usize> {
        self.matching(host, port, Some(Marker::Revoked))
            .into_iter()
            .find(|line| line.entry.public_key().key_data() == key.key_data())
            .map(|line| line.number)
    }

    /// What the file says of the plain key `key` shown by `host:port`.
    pub(super) fn check_key(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        if let Some(line) = self.revoked(host, port, key) {
            return Verdict::Revoked { line };
        }
        let mut changed = None;
        for line in self.matching(host, port, None) {
            let recorded = line.entry.public_key();
            if recorded.key_data() == key.key_data() {
                return Verdict::Known;
            }
            if changed.is_none() && same_type(&recorded.algorithm(), &key.algorithm()) {
                changed = Some(line.number);
            }
        }
        match changed {
            Some(line) => Verdict::Changed { line },
            None => Verdict::Unknown {
                recorded: self
                    .recorded_types(host, port)
                    .iter()
                    .map(|algorithm| algorithm.as_str().to_owned())
                    .collect(),
            },
        }
    }

    /// What the file says of the host certificate `certificate` shown by `host:port` at
    /// `now` (Unix seconds): trusted when a matching `@cert-authority` line holds its signer,
    /// it is a host certificate within its validity period, and its principals (if any) name
    /// `host`, as `ssh` checks it. Without a matching authority, the certified key is checked
    /// as a plain key.
    pub(super) fn check_certificate(
        &self,
        host: &str,
        port: u16,
        certificate: &Certificate,
        now: u64,
    ) -> Verdict {
        let certified = PublicKey::new(certificate.public_key().clone(), "");
        if let Some(line) = self.revoked(host, port, &certified) {
            return Verdict::Revoked { line };
        }
        let signer = PublicKey::new(certificate.signature_key().clone(), "");
        if let Some(line) = self.revoked(host, port, &signer) {
            return Verdict::Revoked { line };
        }
        let trusted = self
            .matching(host, port, Some(Marker::CertAuthority))
            .iter()
            .any(|line| line.entry.public_key().key_data() == signer.key_data());
        if !trusted {
            return self.check_key(host, port, &certified);
        }
        if certificate.cert_type() != CertType::Host {
            return Verdict::BadCertificate("it is a user certificate, not a host one".into());
        }
        if now < certificate.valid_after() || now >= certificate.valid_before() {
            return Verdict::BadCertificate(format!(
                "it is valid from {} to {} (Unix seconds), not now ({now})",
                certificate.valid_after(),
                certificate.valid_before()
            ));
        }
        let principals = certificate.valid_principals();
        if !principals.is_empty() && !principals.iter().any(|principal| principal == host) {
            return Verdict::BadCertificate(format!(
                "its principals {principals:?} do not name {host}"
            ));
        }
        if !certificate.critical_options().is_empty() {
            return Verdict::BadCertificate("it carries critical options".into());
        }
        let authority = signer.fingerprint(HashAlg::Sha256);
        match certificate.validate_at(now, [&authority]) {
            Ok(()) => Verdict::Known,
            Err(error) => {
                Verdict::BadCertificate(format!("its signature does not verify: {error}"))
            }
        }
    }
}

/// RSA keys are one type whatever hash signs with them.
pub(super) fn same_type(a: &Algorithm, b: &Algorithm) -> bool {
    (is_rsa(a) && is_rsa(b)) || a == b
}

pub(super) fn is_rsa(algorithm: &Algorithm) -> bool {
    matches!(algorithm, Algorithm::Rsa { .. })
}

/// The name a host is recorded under: `host` for port 22, `[host]:port` otherwise.
fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// Whether a line's host field matches `name`; `None` when the field cannot be read as host
/// patterns. Only a hashed field is decoded: a list of patterns is matched where it stands.
fn field_matches(field: &str, name: &str) -> Option<bool> {
    if field.starts_with(HASHED_PREFIX) {
        let patterns = field.parse::<HostPatterns>().ok()?;
        return Some(host_matches(&patterns, name));
    }
    // As ssh-key splits the list (an empty field is not a list, but never reaches here).
    let mut matched = false;
    for pattern in field.split_terminator(',') {
        match pattern_hit(pattern, name) {
            Hit::Excluded => return Some(false),
            Hit::Matched => matched = true,
            Hit::Missed => {}
        }
    }
    Some(matched)
}

/// How ssh-key tells a hashed host name from a list of patterns.
const HASHED_PREFIX: &str = "|1|";

/// OpenSSH's rule: a negated pattern that matches excludes the host, whatever else matches.
fn host_matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => Hmac::<Sha1>::new_from_slice(salt)
            .map(|mac| mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok())
            .unwrap_or(false),
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                match pattern_hit(pattern, name) {
                    Hit::Excluded => return false,
                    Hit::Matched => matched = true,
                    Hit::Missed => {}
                }
            }
            matched
        }
    }
}

/// What one pattern of a list says of a host.
enum Hit {
    Matched,
    /// A negated pattern matched: the host is excluded.
    Excluded,
    Missed,
}

/// `name` is in lower case; a pattern matches it whatever the pattern's case.
fn pattern_hit(pattern: &str, name: &str) -> Hit {
    let (negated, pattern) = match pattern.strip_prefix('!') {
        Some(pattern) => (true, pattern),
        None => (false, pattern),
    };
    // Most lines name their hosts literally: compared without `glob`'s allocations.
    let hit = if pattern.contains(['*', '?']) {
        glob(&pattern.to_ascii_lowercase(), name)
    } else {
        pattern.eq_ignore_ascii_case(name)
    };
    match (hit, negated) {
        (false, _) => Hit::Missed,
        (true, false) => Hit::Matched,
        (true, true) => Hit::Excluded,
    }
}

/// Shell-style matching with `*` (any run) and `?` (one character), as OpenSSH's
/// `match_pattern`.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests;
