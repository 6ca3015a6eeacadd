//! State files written atomically, and the MQS1 counter a device persists.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sealmq_audit::mqs1::Kid;
use serde::{Deserialize, Serialize};

/// Replaces `path` with `contents` so that a crash leaves either the old or
/// the new file, never a torn one: write a temporary file beside it, sync
/// it, rename it over `path`, sync the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().context("a state file path needs a file name")?.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// Syncs the directory holding `path`, so a rename or create in it is durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A device's MQS1 counters, one per key id, in a small JSON file:
/// `{"counters": {"<kid hex>": <last counter used>}}`.
///
/// The broker refuses a counter at or below `highest − 64` and silently
/// drops one it has seen (a retransmission), so a device must never reuse a
/// counter, even after a crash: [`CounterState::reserve_next`] writes the new value
/// to disk *before* it is used. A crash between the write and the publish
/// only skips a counter, which is harmless.
pub struct CounterState {
    path: PathBuf,
    kid: Kid,
    counters: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct CounterFile {
    counters: BTreeMap<String, u64>,
}

impl CounterState {
    /// Opens the state at `path` for the key `kid`; a missing file starts at 0.
    pub fn open(path: &Path, kid: Kid) -> Result<Self> {
        let counters = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<CounterFile>(&bytes)
                    .with_context(|| {
                        format!(
                            "state file {} is not valid (expected {{\"counters\": {{\"KID\": N}}}}); \
                             do not delete it: a device that reuses counters has its messages dropped",
                            path.display()
                        )
                    })?
                    .counters
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading state file {}", path.display())),
        };
        Ok(Self { path: path.to_path_buf(), kid, counters })
    }

    /// The last counter used with this key (0: none yet).
    pub fn last(&self) -> u64 {
        self.counters.get(&hex::encode(self.kid)).copied().unwrap_or(0)
    }

    /// Reserves the next counter: persists it, then returns it.
    pub fn reserve_next(&mut self) -> Result<u64> {
        let next = self.last().checked_add(1).context("the counter is exhausted")?;
        let mut counters = self.counters.clone();
        counters.insert(hex::encode(self.kid), next);
        let json = serde_json::to_vec_pretty(&CounterFile { counters: counters.clone() })?;
        write_atomically(&self.path, &json)?;
        self.counters = counters;
        Ok(next)
    }
}
