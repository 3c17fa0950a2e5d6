//! Connection limits: make room by evicting the least recently used idle connection in the
//! same scope, or refuse.

use tracing::debug;

use crate::config::AtLimit;
use crate::connection::ConnectionKey;
use crate::error::{Error, LimitScope};
use crate::events::CloseReason;

use super::SupervisorState;
use super::slots::Slot;

impl SupervisorState {
    /// Makes room for one more connection of `key`'s plugin under the configured limits, by
    /// evicting the least recently used idle connection in the same scope, or refuses.
    pub(super) fn make_room(&mut self, key: &ConnectionKey) -> Result<(), Error> {
        let plugin = &key.plugin_name;
        if let Some(&limit) = self.config.max_connections_per_plugin.get(plugin) {
            let count = self.pooled_per_plugin.get(plugin).copied().unwrap_or(0);
            if count >= limit {
                self.evict_one(key, Some(plugin.as_str()), limit)?;
            }
        }
        if let Some(limit) = self.config.max_connections
            && self.pooled >= limit
        {
            self.evict_one(key, None, limit)?;
        }
        Ok(())
    }

    pub(super) fn evict_one(
        &mut self,
        key: &ConnectionKey,
        plugin: Option<&str>,
        limit: usize,
    ) -> Result<(), Error> {
        let refused = || Error::LimitReached {
            key: key.clone(),
            scope: plugin.map_or(LimitScope::Total, |p| LimitScope::Plugin(p.to_owned())),
            limit,
        };
        if self.config.at_limit == AtLimit::Refuse {
            return Err(refused());
        }
        let victim = self
            .pool
            .iter()
            .filter_map(|(candidate, slot)| match slot {
                Slot::Ready(pooled)
                    if plugin.is_none_or(|p| candidate.plugin_name == p)
                        && !pooled.activity.is_busy() =>
                {
                    Some((pooled.activity.last_used_ms(), candidate.clone()))
                }
                _ => None,
            })
            .min()
            .map(|(_, victim)| victim);
        let victim = victim.ok_or_else(refused)?;
        debug!(%victim, for_key = %key, "evicting the least recently used idle connection");
        let (reply, _) = tokio::sync::oneshot::channel();
        self.close(victim, reply.into(), CloseReason::Evicted);
        Ok(())
    }
}
