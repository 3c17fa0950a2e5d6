//! Keys and params between genja-core's types and this crate's: the same fields, so every
//! conversion is total. Extras are a JSON object in both crates (a map here, a wrapped
//! `serde_json::Value` in genja); genja extras that are not an object have no counterpart
//! here and convert to none.

use genja_core::inventory as genja;

use crate::connection::{ConnectionKey, Extras, ResolvedConnectionParams};

/// genja's key as this crate's.
pub fn key_from_genja(key: &genja::ConnectionKey) -> ConnectionKey {
    ConnectionKey::new(key.hostname.clone(), key.plugin_name.clone())
}

/// This crate's key as genja's.
pub fn key_to_genja(key: &ConnectionKey) -> genja::ConnectionKey {
    genja::ConnectionKey::new(key.hostname.clone(), key.plugin_name.clone())
}

/// genja's resolved params as this crate's (whose `Debug` redacts the password).
pub fn params_from_genja(params: &genja::ResolvedConnectionParams) -> ResolvedConnectionParams {
    let extras = params.extras.as_ref().and_then(|extras| match &**extras {
        serde_json::Value::Object(map) => Some(
            map.iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<Extras>(),
        ),
        _ => None,
    });
    ResolvedConnectionParams {
        hostname: params.hostname.clone(),
        port: params.port,
        username: params.username.clone(),
        password: params.password.clone(),
        platform: params.platform.clone(),
        extras,
    }
}

/// This crate's params as genja's, for a genja plugin's `open`. genja's params print the
/// password in `Debug`: never log what this returns.
pub fn params_to_genja(params: &ResolvedConnectionParams) -> genja::ResolvedConnectionParams {
    let extras = params.extras.as_ref().map(|extras| {
        let map = extras
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<serde_json::Map<_, _>>();
        genja::Extras::new(serde_json::Value::Object(map))
    });
    genja::ResolvedConnectionParams {
        hostname: params.hostname.clone(),
        port: params.port,
        username: params.username.clone(),
        password: params.password.clone(),
        platform: params.platform.clone(),
        extras,
    }
}
