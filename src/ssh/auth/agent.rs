//! Public keys through an ssh-agent: its identities, signed by the agent, offered before the
//! key files, as `ssh` offers them.

use std::path::Path;

use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PublicKey};
use russh::{AgentAuthError, MethodKind};

use super::{Progress, broken};
use crate::connection::OpenError;
use crate::ssh::host_keys::Session;

/// Offers each identity the agent at `socket` holds; `true` once one is accepted. The
/// plain keys offered are added to `offered_keys`, so key files holding them are skipped.
/// An agent that cannot be reached or listed is a problem noted in `progress`.
pub(super) async fn offer(
    session: &mut Session,
    socket: Option<&Path>,
    user: &str,
    hash: Option<HashAlg>,
    addr: &str,
    progress: &mut Progress,
    offered_keys: &mut Vec<PublicKey>,
) -> Result<bool, OpenError> {
    let Some(socket) = socket else {
        progress.cannot_use(
            "the ssh-agent: no socket is set (SSH_AUTH_SOCK or SshOptions::agent_socket)"
                .to_owned(),
        );
        return Ok(false);
    };
    let mut client = match connect(socket).await {
        Ok(client) => client,
        Err(e) => {
            progress.cannot_use(format!("the ssh-agent at {}: {e}", socket.display()));
            return Ok(false);
        }
    };
    // OpenSSH agents only release destination-constrained keys to a bound session; an
    // agent without the extension refuses the binding, which changes nothing else.
    if let Some(binding) = session.agent_session_binding() {
        let _ = client.bind_session(binding, false).await;
    }
    let identities = match client.request_identities().await {
        Ok(identities) => identities,
        Err(e) => {
            progress.cannot_use(format!(
                "the ssh-agent at {}: cannot list its keys: {e}",
                socket.display()
            ));
            return Ok(false);
        }
    };
    for identity in identities {
        if !progress.offers(MethodKind::PublicKey) {
            break;
        }
        let result = match &identity {
            AgentIdentity::PublicKey { key, .. } => {
                progress.keys += 1;
                offered_keys.push(key.clone());
                session
                    .authenticate_publickey_with(user, key.clone(), hash, &mut client)
                    .await
            }
            AgentIdentity::Certificate { certificate, .. } => {
                progress.certificates += 1;
                session
                    .authenticate_certificate_with(user, certificate.clone(), hash, &mut client)
                    .await
            }
        };
        match result {
            Ok(result) => {
                if progress.record(result) {
                    return Ok(true);
                }
            }
            Err(AgentAuthError::Send(_)) => {
                return Err(broken(addr, russh::Error::SendError));
            }
            // The agent refused to sign (a confirm-only key, a locked agent): the next key.
            Err(AgentAuthError::Key(e)) => progress.cannot_use(format!(
                "the ssh-agent at {} did not sign with one of its keys: {e}",
                socket.display()
            )),
        }
    }
    Ok(false)
}

#[cfg(unix)]
async fn connect(
    socket: &Path,
) -> Result<russh::keys::agent::client::AgentClient<tokio::net::UnixStream>, String> {
    russh::keys::agent::client::AgentClient::connect_uds(socket)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

#[cfg(not(unix))]
async fn connect(
    _socket: &Path,
) -> Result<russh::keys::agent::client::AgentClient<tokio::net::TcpStream>, String> {
    Err("agents are supported on Unix only".to_owned())
}
