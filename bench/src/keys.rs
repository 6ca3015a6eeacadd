//! Signed devices: each publisher registered with a fresh key in the
//! broker's registry, for `--signed`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use sealmq_audit::store::{DeviceSettings, Policy, Registry};

/// Registers each publisher as a `signed` device with a fresh key in the
/// registry of `data`, and waits until the running broker has logged the
/// keys (it reloads the registry within a second of a change).
pub async fn register(data: &std::path::Path, device_ids: &[String]) -> Result<Vec<SigningKey>> {
    let registry = Registry::open(data).await.with_context(|| format!("opening the registry in {}", data.display()))?;
    let mut keys = Vec::with_capacity(device_ids.len());
    for id in device_ids {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a device key: {e}"))?;
        let key = SigningKey::from_bytes(&seed);
        let settings = DeviceSettings {
            policy: Some(Policy::Signed),
            key: Some(key.verifying_key().to_bytes()),
            ..Default::default()
        };
        registry.add_device(id, &settings).await.with_context(|| format!("registering device {id}"))?;
        keys.push(key);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if registry.snapshot().await?.unlogged == 0 {
            break;
        }
        if Instant::now() > deadline {
            registry.close().await;
            bail!("the broker did not log the new device keys within 30 s: is it running on {}?", data.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry.close().await;
    // The broker swaps in its new view right after draining the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(keys)
}
