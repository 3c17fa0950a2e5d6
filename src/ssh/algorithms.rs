//! Which algorithms a connection offers: a policy per host, OpenSSH's list syntax, and the
//! russh [`Preferred`] lists built from them.
//!
//! The section "Algorithms and host keys" of the [module docs](super) describes the policy.

use std::borrow::Cow;
use std::fmt;

use russh::keys::{Algorithm, HashAlg};
use russh::{Preferred, cipher, kex, mac};

use crate::connection::{FailureKind, OpenError, ResolvedConnectionParams};

use super::known_hosts::{glob, is_rsa};

mod names;

use names::{
    CERT_SUFFIX, HOST_CERTIFICATE_NAMES, HOST_KEY_NAMES, KEX_EXTENSIONS, LEGACY_CIPHERS,
    LEGACY_KEX, LEGACY_MACS, OPENSSH_ONLY,
};

/// Which algorithms a connection offers, per host through the `algorithms` extra (see
/// [`from_extra`](Self::from_extra)) or for every host through
/// [`SshOptions::algorithms`](super::SshOptions::algorithms). See the [module docs](super).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlgorithmPolicy {
    /// russh's defaults: no SHA-1 key exchange, no CBC, no SHA-1 MAC.
    #[default]
    Modern,
    /// Modern plus SHA-1 key exchanges, CBC ciphers and `hmac-sha1` (and 3DES and DSA with the
    /// crate feature `legacy-crypto`), for old devices.
    Legacy,
    /// Explicit lists, in OpenSSH's syntax, each applied to the Modern default.
    Lists(AlgorithmLists),
}

/// The four lists an OpenSSH client configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AlgorithmList {
    /// Key exchange (`KexAlgorithms`).
    Kex,
    /// Ciphers (`Ciphers`).
    Ciphers,
    /// Message authentication codes (`MACs`).
    Macs,
    /// Host-key and host-certificate algorithms (`HostKeyAlgorithms`).
    HostKeyAlgorithms,
}

impl AlgorithmList {
    const ALL: [Self; 4] = [
        Self::Kex,
        Self::Ciphers,
        Self::Macs,
        Self::HostKeyAlgorithms,
    ];

    /// The extras key of this list (`kex`, `ciphers`, `macs`, `host_key_algorithms`).
    pub fn extras_key(self) -> &'static str {
        match self {
            Self::Kex => "kex",
            Self::Ciphers => "ciphers",
            Self::Macs => "macs",
            Self::HostKeyAlgorithms => "host_key_algorithms",
        }
    }

    /// OpenSSH's name for this list (`KexAlgorithms`, ...).
    pub fn openssh_name(self) -> &'static str {
        match self {
            Self::Kex => "KexAlgorithms",
            Self::Ciphers => "Ciphers",
            Self::Macs => "MACs",
            Self::HostKeyAlgorithms => "HostKeyAlgorithms",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Kex => 0,
            Self::Ciphers => 1,
            Self::Macs => 2,
            Self::HostKeyAlgorithms => 3,
        }
    }

    /// Every name this list accepts, in the Modern order, then the rest.
    fn known(self) -> Vec<String> {
        match self {
            Self::Kex => {
                let mut names: Vec<String> = modern_kex().iter().map(|n| name_of(&n)).collect();
                for name in kex::ALL_KEX_ALGORITHMS {
                    let name = name_of(*name);
                    if name != "none" && !names.contains(&name) {
                        names.push(name);
                    }
                }
                names
            }
            Self::Ciphers => {
                let mut names: Vec<String> =
                    Preferred::DEFAULT.cipher.iter().map(name_of).collect();
                for name in cipher::ALL_CIPHERS {
                    let name = name_of(*name);
                    if !matches!(name.as_str(), "none" | "clear") && !names.contains(&name) {
                        names.push(name);
                    }
                }
                names
            }
            Self::Macs => {
                let mut names: Vec<String> = Preferred::DEFAULT.mac.iter().map(name_of).collect();
                for name in mac::ALL_MAC_ALGORITHMS {
                    let name = name_of(*name);
                    if name != "none" && !names.contains(&name) {
                        names.push(name);
                    }
                }
                names
            }
            Self::HostKeyAlgorithms => HOST_KEY_NAMES
                .iter()
                .chain(HOST_CERTIFICATE_NAMES)
                .map(|name| (*name).to_owned())
                .collect(),
        }
    }
}

impl fmt::Display for AlgorithmList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.extras_key(), self.openssh_name())
    }
}

/// A name in an algorithm list that the plugin does not know, or a list it cannot read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} {name:?} in the {list} list; known: {known}", if *.unimplemented { "no algorithm the plugin implements in" } else { "unknown algorithm" })]
pub struct AlgorithmError {
    /// The list the name was in.
    pub list: AlgorithmList,
    /// The name as written (for a list of names OpenSSH knows but the plugin does not
    /// implement, the whole list).
    pub name: String,
    known: String,
    unimplemented: bool,
}

impl AlgorithmError {
    fn new(list: AlgorithmList, name: &str) -> Self {
        Self {
            list,
            name: name.to_owned(),
            known: list.known().join(","),
            unimplemented: false,
        }
    }
}

/// Explicit algorithm lists, each in OpenSSH's syntax and applied to the Modern default; a list
/// left unset keeps the default. Names are checked when a list is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlgorithmLists {
    /// The resolved names of each list, in [`AlgorithmList::index`] order; `None` is the
    /// default.
    lists: [Option<Vec<String>>; 4],
}

impl AlgorithmLists {
    /// No list set: the Modern default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one list from an OpenSSH value (`KexAlgorithms`, `Ciphers`, `MACs`,
    /// `HostKeyAlgorithms`): `a,b` replaces the default list, `+a,b` appends, `-a,b` removes
    /// (patterns with `*` and `?` allowed), `^a,b` puts them first. Fails on a name the plugin
    /// does not know, naming it and the list.
    pub fn set(mut self, list: AlgorithmList, spec: &str) -> Result<Self, AlgorithmError> {
        self.lists[list.index()] = Some(apply(list, spec)?);
        Ok(self)
    }

    /// Sets one list to exactly `names`, in this order.
    pub fn set_names<S: AsRef<str>>(
        mut self,
        list: AlgorithmList,
        names: &[S],
    ) -> Result<Self, AlgorithmError> {
        let names: Vec<&str> = names.iter().map(|name| name.as_ref().trim()).collect();
        let resolved = resolve_all(list, &list.known(), &names)?;
        if resolved.is_empty() {
            return Err(AlgorithmError {
                unimplemented: true,
                ..AlgorithmError::new(list, &names.join(","))
            });
        }
        self.lists[list.index()] = Some(resolved);
        Ok(self)
    }

    /// The names a list resolves to, or `None` when it keeps the default.
    pub fn get(&self, list: AlgorithmList) -> Option<&[String]> {
        self.lists[list.index()].as_deref()
    }
}

impl AlgorithmPolicy {
    /// Reads the `algorithms` extra: `"modern"`, `"legacy"`, or an object of lists whose values
    /// are OpenSSH-syntax strings or arrays of names. The error says what is wrong, for a
    /// [`FailureKind::Config`](crate::FailureKind::Config) message.
    pub fn from_extra(value: &serde_json::Value) -> Result<Self, String> {
        use serde_json::Value;
        match value {
            Value::String(name) => Self::from_name(name),
            Value::Object(fields) => {
                let mut lists = AlgorithmLists::new();
                for (key, value) in fields {
                    let list = AlgorithmList::ALL
                        .into_iter()
                        .find(|list| list.extras_key() == key)
                        .ok_or_else(|| {
                            format!(
                                "unknown key {key:?} in the algorithms extra (expected kex, ciphers, macs, host_key_algorithms)"
                            )
                        })?;
                    lists = match value {
                        Value::String(spec) => lists.set(list, spec),
                        Value::Array(items) => {
                            let names = items
                                .iter()
                                .map(|item| {
                                    item.as_str().ok_or_else(|| {
                                        format!("algorithms.{key} holds a non-string: {item}")
                                    })
                                })
                                .collect::<Result<Vec<_>, _>>()?;
                            lists.set_names(list, &names)
                        }
                        other => {
                            return Err(format!(
                                "algorithms.{key} must be a string or an array of names, not {other}"
                            ));
                        }
                    }
                    .map_err(|error| error.to_string())?;
                }
                Ok(Self::Lists(lists))
            }
            other => Err(format!(
                "the algorithms extra must be \"modern\", \"legacy\" or an object of lists, not {other}"
            )),
        }
    }

    /// The policy an OpenSSH client config gives (its `KexAlgorithms`, `Ciphers`, `MACs` and
    /// `HostKeyAlgorithms` values, each in OpenSSH's syntax): `Ok(None)` when it sets none of
    /// them, so the options' default applies.
    pub fn from_openssh(
        kex: Option<&str>,
        ciphers: Option<&str>,
        macs: Option<&str>,
        host_key_algorithms: Option<&str>,
    ) -> Result<Option<Self>, AlgorithmError> {
        let given = [
            (AlgorithmList::Kex, kex),
            (AlgorithmList::Ciphers, ciphers),
            (AlgorithmList::Macs, macs),
            (AlgorithmList::HostKeyAlgorithms, host_key_algorithms),
        ];
        if given.iter().all(|(_, spec)| spec.is_none()) {
            return Ok(None);
        }
        let mut lists = AlgorithmLists::new();
        for (list, spec) in given {
            if let Some(spec) = spec {
                lists = lists.set(list, spec)?;
            }
        }
        Ok(Some(Self::Lists(lists)))
    }

    /// The russh lists this policy offers, before host-key ordering.
    pub(super) fn preferred(&self) -> Preferred {
        let mut preferred = Preferred::default();
        match self {
            Self::Modern => {}
            Self::Legacy => {
                let mut kex = modern_kex();
                kex.extend(LEGACY_KEX);
                preferred.kex = Cow::Owned(with_kex_extensions(kex));
                let mut ciphers = preferred.cipher.to_vec();
                ciphers.extend(LEGACY_CIPHERS);
                preferred.cipher = Cow::Owned(ciphers);
                let mut macs = preferred.mac.to_vec();
                macs.extend(LEGACY_MACS);
                preferred.mac = Cow::Owned(macs);
                #[cfg(feature = "legacy-crypto")]
                {
                    let mut keys = preferred.key.to_vec();
                    keys.push(Algorithm::Dsa);
                    preferred.key = Cow::Owned(keys);
                }
            }
            Self::Lists(lists) => {
                if let Some(names) = lists.get(AlgorithmList::Kex) {
                    let kex = names
                        .iter()
                        .filter_map(|n| kex::Name::try_from(n.as_str()).ok());
                    preferred.kex = Cow::Owned(with_kex_extensions(kex.collect()));
                }
                if let Some(names) = lists.get(AlgorithmList::Ciphers) {
                    let ciphers = names
                        .iter()
                        .filter_map(|n| cipher::Name::try_from(n.as_str()).ok());
                    preferred.cipher = Cow::Owned(ciphers.collect());
                }
                if let Some(names) = lists.get(AlgorithmList::Macs) {
                    let macs = names
                        .iter()
                        .filter_map(|n| mac::Name::try_from(n.as_str()).ok());
                    preferred.mac = Cow::Owned(macs.collect());
                }
                if let Some(names) = lists.get(AlgorithmList::HostKeyAlgorithms) {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let (certificates, keys): (Vec<&str>, Vec<&str>) =
                        names.iter().partition(|name| name.ends_with(CERT_SUFFIX));
                    preferred.key = Cow::Owned(
                        keys.iter()
                            .filter_map(|name| Algorithm::new(name).ok())
                            .collect(),
                    );
                    preferred.host_key_certificates = Cow::Owned(
                        certificates
                            .iter()
                            .filter_map(|name| Algorithm::new_certificate(name).ok())
                            .map(|algorithm| certificate_signature(&algorithm, &names))
                            .collect(),
                    );
                }
            }
        }
        preferred
    }

    /// The setting that would make a server offering `theirs` acceptable, for the message of a
    /// failed negotiation: the legacy policy when it covers them, else the list to extend.
    pub(super) fn suggest_fix(list: AlgorithmList, theirs: &[String]) -> String {
        let legacy = AlgorithmPolicy::Legacy.preferred();
        let legacy_names: Vec<&str> = match list {
            AlgorithmList::Kex => legacy.kex.iter().map(AsRef::as_ref).collect(),
            AlgorithmList::Ciphers => legacy.cipher.iter().map(AsRef::as_ref).collect(),
            AlgorithmList::Macs => legacy.mac.iter().map(AsRef::as_ref).collect(),
            AlgorithmList::HostKeyAlgorithms => legacy.key.iter().map(Algorithm::as_str).collect(),
        };
        let known = list.known();
        let usable = theirs
            .iter()
            .find(|name| known.contains(name))
            .map(String::as_str);
        match usable {
            Some(name) if legacy_names.contains(&name) => format!(
                "set algorithms = \"legacy\" (or {} = \"+{name}\")",
                list.extras_key()
            ),
            Some(name) => format!("set {} = \"+{name}\"", list.extras_key()),
            None => "the plugin implements none of the server's algorithms".to_owned(),
        }
    }
}

impl AlgorithmPolicy {
    /// `"modern"` or `"legacy"` (any case), as the `algorithms` extra and the fleet inventory
    /// name them.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "modern" | "default" => Ok(Self::Modern),
            "legacy" => Ok(Self::Legacy),
            _ => Err(format!(
                "unknown algorithm policy {name:?} (expected \"modern\", \"legacy\" or lists)"
            )),
        }
    }
}

fn is_kex_extension(name: &kex::Name) -> bool {
    name.as_ref().starts_with("ext-info-") || name.as_ref().starts_with("kex-strict-")
}

/// The default key exchanges, without the extension markers.
fn modern_kex() -> Vec<kex::Name> {
    Preferred::DEFAULT
        .kex
        .iter()
        .copied()
        .filter(|name| !is_kex_extension(name))
        .collect()
}

fn with_kex_extensions(mut kex: Vec<kex::Name>) -> Vec<kex::Name> {
    kex.extend(KEX_EXTENSIONS);
    kex
}

fn name_of<N: AsRef<str> + ?Sized>(name: &N) -> String {
    name.as_ref().to_owned()
}

/// The RSA certificate variant a listed RSA certificate name stands for; other algorithms are
/// already exact.
fn certificate_signature(algorithm: &Algorithm, names: &[&str]) -> Algorithm {
    if !is_rsa(algorithm) {
        return algorithm.clone();
    }
    let hash = [
        ("rsa-sha2-512-cert-v01@openssh.com", Some(HashAlg::Sha512)),
        ("rsa-sha2-256-cert-v01@openssh.com", Some(HashAlg::Sha256)),
    ]
    .into_iter()
    .find(|(name, _)| names.contains(name))
    .and_then(|(_, hash)| hash);
    Algorithm::Rsa { hash }
}

/// The names of the default (Modern) list.
fn default_names(list: AlgorithmList) -> Vec<String> {
    let preferred = Preferred::DEFAULT;
    match list {
        AlgorithmList::Kex => modern_kex().iter().map(|n| name_of(&n)).collect(),
        AlgorithmList::Ciphers => preferred.cipher.iter().map(name_of).collect(),
        AlgorithmList::Macs => preferred.mac.iter().map(name_of).collect(),
        AlgorithmList::HostKeyAlgorithms => preferred
            .key
            .iter()
            .filter_map(|key| HOST_KEY_NAMES.iter().find(|n| **n == key.as_str()))
            .map(|name| (*name).to_owned())
            .collect(),
    }
}

/// The names the plugin implements among `names`, in order. A name OpenSSH knows but the plugin
/// does not implement is left out (a list copied from an ssh config still works); any other
/// name is an error.
fn resolve_all(
    list: AlgorithmList,
    known: &[String],
    names: &[&str],
) -> Result<Vec<String>, AlgorithmError> {
    let mut resolved = Vec::new();
    for name in names {
        if let Some(known) = known.iter().find(|known| known == name) {
            resolved.push(known.clone());
        } else if OPENSSH_ONLY.contains(name) {
            tracing::debug!(%list, name, "an OpenSSH algorithm the plugin does not implement: left out");
        } else {
            return Err(AlgorithmError::new(list, name));
        }
    }
    Ok(resolved)
}

/// OpenSSH's list syntax applied to the default list.
fn apply(list: AlgorithmList, spec: &str) -> Result<Vec<String>, AlgorithmError> {
    let spec = spec.trim();
    let known = list.known();
    let (mode, rest) = match spec.chars().next() {
        Some(mode @ ('+' | '-' | '^')) => (mode, &spec[1..]),
        _ => (' ', spec),
    };
    let names: Vec<&str> = rest
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return Err(AlgorithmError::new(list, spec));
    }
    let defaults = default_names(list);
    if mode == '-' {
        // Removal takes patterns, as OpenSSH's does; a pattern that matches no known name is
        // most likely a typo.
        for pattern in &names {
            let openssh = OPENSSH_ONLY.iter().copied();
            if !known
                .iter()
                .map(String::as_str)
                .chain(openssh)
                .any(|name| glob(pattern, name))
            {
                return Err(AlgorithmError::new(list, pattern));
            }
        }
        return Ok(defaults
            .into_iter()
            .filter(|name| !names.iter().any(|pattern| glob(pattern, name)))
            .collect());
    }
    let named = resolve_all(list, &known, &names)?;
    if named.is_empty() && mode == ' ' {
        return Err(AlgorithmError {
            unimplemented: true,
            ..AlgorithmError::new(list, spec)
        });
    }
    Ok(match mode {
        '+' => {
            let mut result = defaults;
            for name in named {
                if !result.contains(&name) {
                    result.push(name);
                }
            }
            result
        }
        '^' => {
            let mut result = named.clone();
            result.extend(defaults.into_iter().filter(|name| !named.contains(name)));
            result
        }
        _ => named,
    })
}

/// The policy for one open: the params' `algorithms` extra, else the options' default. A bad
/// extra is a [`FailureKind::Config`] error naming `host:port`.
pub(super) fn for_host(
    default: &AlgorithmPolicy,
    params: &ResolvedConnectionParams,
    port: u16,
) -> Result<AlgorithmPolicy, OpenError> {
    let extra = params
        .extras
        .as_ref()
        .and_then(|extras| extras.get("algorithms"));
    match extra {
        None => Ok(default.clone()),
        Some(value) => AlgorithmPolicy::from_extra(value).map_err(|reason| {
            OpenError::new(
                FailureKind::Config,
                format!(
                    "{}:{port}: bad algorithms setting: {reason}",
                    params.hostname
                ),
            )
        }),
    }
}

/// The open failed in key exchange because no algorithm of one list is in common: a
/// [`FailureKind::Negotiation`] error naming `address` (`host:port`), both sides' lists and
/// the setting that would fix it.
pub(super) fn negotiation_error(
    kind: &russh::AlgorithmKind,
    ours: &[String],
    theirs: &[String],
    address: &str,
) -> OpenError {
    let (name, fix) = match list_of(kind) {
        Some(list) => (list.to_string(), AlgorithmPolicy::suggest_fix(list, theirs)),
        None => (
            "compression".to_owned(),
            "the plugin offers none, zlib and zlib@openssh.com".to_owned(),
        ),
    };
    OpenError::new(
        FailureKind::Negotiation,
        format!(
            "key exchange with {address} failed: no {name} algorithm in common; we offered [{}], the server offers [{}]; to connect, {fix}",
            ours.join(","),
            theirs.join(",")
        ),
    )
}

/// What russh calls a list, in our names, for negotiation errors.
fn list_of(kind: &russh::AlgorithmKind) -> Option<AlgorithmList> {
    match kind {
        russh::AlgorithmKind::Kex => Some(AlgorithmList::Kex),
        russh::AlgorithmKind::Key => Some(AlgorithmList::HostKeyAlgorithms),
        russh::AlgorithmKind::Cipher => Some(AlgorithmList::Ciphers),
        russh::AlgorithmKind::Mac => Some(AlgorithmList::Macs),
        russh::AlgorithmKind::Compression => None,
    }
}

#[cfg(test)]
mod tests;
