//! The algorithm names the policy knows: those russh implements, those it adds for legacy
//! devices, and those OpenSSH knows but russh does not.

use russh::{cipher, kex, mac};

pub(super) const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

pub(super) const HOST_KEY_NAMES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
    #[cfg(feature = "legacy-crypto")]
    "ssh-dss",
];

pub(super) const HOST_CERTIFICATE_NAMES: &[&str] = &[
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
];

pub(super) const LEGACY_KEX: [kex::Name; 3] = [kex::DH_G14_SHA1, kex::DH_GEX_SHA1, kex::DH_G1_SHA1];

pub(super) const LEGACY_CIPHERS: &[cipher::Name] = &[
    cipher::AES_256_CBC,
    cipher::AES_192_CBC,
    cipher::AES_128_CBC,
    #[cfg(feature = "legacy-crypto")]
    cipher::TRIPLE_DES_CBC,
];

pub(super) const LEGACY_MACS: [mac::Name; 2] = [mac::HMAC_SHA1_ETM, mac::HMAC_SHA1];

/// The names russh adds to the kex list to announce extensions (ext-info, strict kex against
/// the Terrapin attack): kept whatever list the user gives, as OpenSSH keeps them.
pub(super) const KEX_EXTENSIONS: [kex::Name; 2] = [
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// Names OpenSSH 9 accepts that russh does not implement.
pub(super) const OPENSSH_ONLY: &[&str] = &[
    "sntrup761x25519-sha512@openssh.com",
    "sntrup761x25519-sha512",
    "umac-64@openssh.com",
    "umac-128@openssh.com",
    "umac-64-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha1-96",
    "hmac-sha1-96-etm@openssh.com",
    "hmac-md5",
    "hmac-md5-96",
    "hmac-md5-etm@openssh.com",
    "hmac-md5-96-etm@openssh.com",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    #[cfg(not(feature = "legacy-crypto"))]
    "ssh-dss",
    #[cfg(not(feature = "legacy-crypto"))]
    "3des-cbc",
];
