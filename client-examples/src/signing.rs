//! A device's signing key, created once and kept.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use sealmq_audit::mqs1::{self};

use crate::*;
/// DER of an Ed25519 PKCS#8 private key (RFC 8410) up to the 32-byte seed,
/// as `openssl genpkey -algorithm ed25519` writes it.
pub(crate) const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Loads a device's signing key from `path`, or creates one there (mode
/// 0600) when the file does not exist. Returns the key and whether it was
/// created.
///
/// The file holds the 32-byte Ed25519 seed as 64 hex characters — the
/// format of the `.key` file `sealmq device keygen --out PREFIX` writes —
/// or a PEM "PRIVATE KEY" (PKCS#8, `openssl genpkey -algorithm ed25519`).
pub fn load_or_create_device_key(path: &Path) -> Result<(SigningKey, bool)> {
    if path.extension().is_some_and(|e| e == "pub") {
        bail!("{} is a public key file; give the device its private .key file", path.display());
    }
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            Ok((parse_device_key(&text).with_context(|| format!("device key file {}", path.display()))?, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for a new key: {e}"))?;
            let mut file = create_private(path)?;
            file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            sync_parent(path)?;
            Ok((SigningKey::from_bytes(&seed), true))
        }
        Err(e) => Err(e).with_context(|| format!("reading device key file {}", path.display())),
    }
}

/// A seed as 64 hex characters, or a PEM PKCS#8 Ed25519 private key.
pub(crate) fn parse_device_key(text: &str) -> Result<SigningKey> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let seed: [u8; 32] = hex::decode(text)?.try_into().map_err(|_| anyhow!("not 32 bytes"))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    if let Some(rest) = text.strip_prefix("-----BEGIN PRIVATE KEY-----") {
        let body = rest.split("-----END PRIVATE KEY-----").next().unwrap_or_default();
        let der = STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .map_err(|e| anyhow!("PEM body is not base64: {e}"))?;
        return match der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) {
            Some(seed) if seed.len() == 32 => Ok(SigningKey::from_bytes(&seed.try_into()?)),
            _ => bail!("the PEM private key is not an Ed25519 PKCS#8 key"),
        };
    }
    bail!("expected a 64-hex-character seed (as `sealmq device keygen` writes) or a PEM \"PRIVATE KEY\"")
}

/// Creates a new file readable by its owner only.
fn create_private(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| format!("creating {}", path.display()))
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by other users (mode {:o}); a device key should be 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The hex public key and key id of a device key.
pub fn public_identity(key: &SigningKey) -> (String, String) {
    let public = key.verifying_key().to_bytes();
    (hex::encode(public), hex::encode(mqs1::kid(&public)))
}
