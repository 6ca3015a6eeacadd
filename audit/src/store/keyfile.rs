//! The log's private key file: a 32-byte Ed25519 seed, hex, mode 0600.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::{StoreError, io_error};

/// Reads the seed at `path`, creating it (mode 0600, fsynced) when missing.
pub(crate) fn load_or_create(path: &Path) -> Result<[u8; 32], StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => return parse(path, &text),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path)(e)),
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| StoreError::Key(format!("no randomness for a new key: {e}")))?;
    // Written whole and fsynced under a temporary name, then linked into
    // place: a crash leaves either no key or a complete one, never an empty
    // file, and a key another process linked first is never overwritten.
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        // Another process created it first: use theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return load(path),
        Err(e) => return Err(io_error(path)(e)),
    }
    if let Some(dir) = path.parent() {
        // Make the new directory entry durable too.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    }
    tracing::info!(path = %path.display(), "created a new signing key");
    Ok(seed)
}

/// Reads an existing seed.
pub(crate) fn load(path: &Path) -> Result<[u8; 32], StoreError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<[u8; 32], StoreError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| StoreError::Key(format!("{} does not hold a 32-byte hex seed", path.display())))
}
