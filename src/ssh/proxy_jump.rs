//! OpenSSH's `ProxyJump` syntax: hops `[user@]host[:port]`, comma-separated, as the jump
//! hosts of `extras.jump` and the ssh-config reader's `ProxyJump` values are written.

use std::fmt;

use crate::connection::{FailureKind, OpenError};

/// One hop of an OpenSSH `ProxyJump` chain: `[user@]host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyJumpHop {
    /// The user, when the hop names one; otherwise [`SshOptions::username`](super::SshOptions::username).
    pub user: Option<String>,
    /// The host: a name, an IPv4 address, or an IPv6 address (written in brackets when a
    /// port follows).
    pub host: String,
    /// The port, when the hop names one; otherwise [`SshOptions::port`](super::SshOptions::port).
    pub port: Option<u16>,
}

impl fmt::Display for ProxyJumpHop {
    /// The hop as `ProxyJump` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (self.port, self.host.contains(':')) {
            (Some(port), true) => write!(f, "[{}]:{port}", self.host),
            (Some(port), false) => write!(f, "{}:{port}", self.host),
            (None, _) => f.write_str(&self.host),
        }
    }
}

/// Parses an OpenSSH `ProxyJump` value: hops `[user@]host[:port]` (or
/// `ssh://[user@]host[:port]`) separated by commas, reached in that order, the last one next to
/// the destination. IPv6 addresses with a port go in brackets (`[2001:db8::1]:2222`). `none`
/// (OpenSSH's "no jump host") and an empty value give no hops.
///
/// Fails with [`FailureKind::Config`] on an empty hop, an empty host or a port that is not a
/// number from 1 to 65535, naming the hop.
pub fn parse_proxy_jump(spec: &str) -> Result<Vec<ProxyJumpHop>, OpenError> {
    let spec = spec.trim();
    if spec.is_empty() || spec.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    spec.split(',').map(parse_hop).collect()
}

fn parse_hop(text: &str) -> Result<ProxyJumpHop, OpenError> {
    let bad = |why: &str| {
        OpenError::new(
            FailureKind::Config,
            format!("jump host {text:?} cannot be used: {why}"),
        )
    };
    let hop = text.trim();
    let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
    // The last '@', as OpenSSH splits it: a user name may contain one.
    let (user, rest) = match hop.rsplit_once('@') {
        Some(("", _)) => return Err(bad("the user before '@' is empty")),
        Some((user, rest)) => (Some(user.to_owned()), rest),
        None => (None, hop),
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("'[' without ']'"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("something other than ':port' after ']'")),
            },
        }
    } else {
        match rest.split_once(':') {
            // More than one ':' is an IPv6 address without a port.
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err(bad("the port is not a number from 1 to 65535")),
        },
    };
    Ok(ProxyJumpHop {
        user,
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop_of(user: Option<&str>, host: &str, port: Option<u16>) -> ProxyJumpHop {
        ProxyJumpHop {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn proxy_jump_chains_parse_as_openssh_writes_them() {
        let parsed = parse_proxy_jump("admin@b1:2201, b2 ,ssh://ops@[2001:db8::1]:2222,::1")
            .expect("a valid chain");
        assert_eq!(
            parsed,
            vec![
                hop_of(Some("admin"), "b1", Some(2201)),
                hop_of(None, "b2", None),
                hop_of(Some("ops"), "2001:db8::1", Some(2222)),
                hop_of(None, "::1", None),
            ]
        );
        assert_eq!(parsed[0].to_string(), "admin@b1:2201");
        assert_eq!(parsed[2].to_string(), "ops@[2001:db8::1]:2222");
        assert!(parse_proxy_jump("none").expect("none").is_empty());
        assert!(parse_proxy_jump("  ").expect("empty").is_empty());
        // A user may contain '@': the last one splits.
        assert_eq!(
            parse_proxy_jump("a@corp@b1").expect("valid")[0],
            hop_of(Some("a@corp"), "b1", None)
        );
    }

    #[test]
    fn malformed_proxy_jump_hops_are_config_errors_that_name_the_hop() {
        for bad in [
            "b1,,b2", "b1:0", "b1:99999", "b1:ssh", "@b1", "[::1", "[::1]x", "u@",
        ] {
            let error = parse_proxy_jump(bad).expect_err(bad);
            assert_eq!(error.kind(), FailureKind::Config, "{bad}: {error}");
            assert!(error.message().contains("jump host"), "{bad}: {error}");
        }
    }
}
