//! The archive directory: C2SP tlog-tiles files plus `sealmq/` beside them.
//!
//! ```text
//! checkpoint                      the signed note of the archived size
//! tile/<L>/<N>[.p/<W>]            hash tiles
//! tile/entries/<N>[.p/<W>]        entry bundles: the records' bytes
//! sealmq/payloads/<N>[.p/<W>]     per entry: u32 length and the payload,
//!                                 or u32::MAX when none was stored
//! sealmq/blocks/<N>[.p/<W>]       256 block headers per file, by height
//! ```
//!
//! Files are written to a temporary name, fsynced and renamed, so a crash
//! leaves each file whole or absent; full tiles never change, and partial
//! tiles of older sizes are left in place, so a reader holding an older
//! checkpoint still finds every tile it names.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::Hash;
use crate::tiles::{TILE_WIDTH, encode_index, split_bundle, split_hashes, tile_path};

/// Threads writing (and fsyncing) archive files at once.
const WRITERS: usize = 8;

/// `u32` length of a payload that is not in the archive.
pub(crate) const NO_PAYLOAD: u32 = u32::MAX;

/// The path of a `sealmq/<kind>` file, numbered like the entry bundles.
pub(crate) fn sidecar_path(kind: &str, index: u64, width: u64) -> String {
    let mut path = format!("sealmq/{kind}/{}", encode_index(index));
    if width < TILE_WIDTH {
        path.push_str(&format!(".p/{width}"));
    }
    path
}

/// An archive directory.
#[derive(Debug, Clone)]
pub struct ArchiveDir {
    root: PathBuf,
}

impl ArchiveDir {
    /// The archive at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, rel: &str) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
        let path = self.root.join(rel);
        move |source| ArchiveError::Io { path, source }
    }

    /// A file's bytes, `None` if it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        match std::fs::read(self.root.join(rel)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(rel)(e)),
        }
    }

    /// A file that must exist.
    pub fn read_required(&self, rel: &str) -> Result<Vec<u8>, ArchiveError> {
        self.read(rel)?
            .ok_or_else(|| self.io(rel)(std::io::Error::new(std::io::ErrorKind::NotFound, "missing from the archive")))
    }

    /// The signed checkpoint, if the directory holds an archive.
    pub fn checkpoint(&self) -> Result<Option<String>, ArchiveError> {
        self.read("checkpoint")?
            .map(|bytes| String::from_utf8(bytes).map_err(|_| ArchiveError::Refused("checkpoint is not UTF-8".into())))
            .transpose()
    }

    /// Writes `rel` atomically: a temporary file in the same directory,
    /// fsynced, then renamed over `rel`. The directory's own fsync is left
    /// to [`ArchiveDir::sync_dirs`], once per directory per run.
    pub(crate) fn write(&self, rel: &str, bytes: &[u8], dirs: &mut BTreeSet<PathBuf>) -> Result<(), ArchiveError> {
        let path = self.root.join(rel);
        let parent = path.parent().expect("archive files are inside the archive").to_path_buf();
        if !dirs.contains(&parent) {
            std::fs::create_dir_all(&parent).map_err(self.io(rel))?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(self.io(rel))?;
        dirs.insert(parent);
        Ok(())
    }

    /// [`ArchiveDir::write`] for many files at once, on a few threads: each
    /// file's fsync waits for the disk, and they need not wait in turn.
    pub(crate) fn write_many(
        &self,
        files: &[(String, Vec<u8>)],
        dirs: &mut BTreeSet<PathBuf>,
    ) -> Result<(), ArchiveError> {
        for (rel, _) in files {
            let parent = self.root.join(rel).parent().expect("inside the archive").to_path_buf();
            if !dirs.contains(&parent) {
                std::fs::create_dir_all(&parent).map_err(self.io(rel))?;
                dirs.insert(parent);
            }
        }
        let per_thread = files.len().div_ceil(WRITERS).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        let mut seen = BTreeSet::new();
                        chunk.iter().try_for_each(|(rel, bytes)| self.write(rel, bytes, &mut seen))
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("an archive writer panicked"))
        })
    }

    /// Fsyncs the directories files were renamed into, so the renames are
    /// durable before the log forgets what they hold.
    pub(crate) fn sync_dirs(&self, dirs: &BTreeSet<PathBuf>) -> Result<(), ArchiveError> {
        for dir in dirs.iter().chain([&self.root]) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| ArchiveError::Io { path: dir.clone(), source })?;
        }
        Ok(())
    }

    /// The bytes of entry `index` from its bundle, in an archive of `size`.
    pub fn entry(&self, index: u64, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let (tile, width) = tile_of(index, size);
        let path = tile_path(None, tile, width);
        let body = self.read_required(&path)?;
        let entries = split_bundle(&body, width).map_err(|source| ArchiveError::Tile { path, source })?;
        Ok(entries[usize::try_from(index % TILE_WIDTH).expect("below 256")].to_vec())
    }

    /// The bytes of entries `[start, end)` of an archive of `size`.
    pub fn entries(&self, start: u64, end: u64, size: u64) -> Result<Vec<Vec<u8>>, ArchiveError> {
        let mut out = Vec::new();
        let mut index = start;
        while index < end {
            let (tile, width) = tile_of(index, size);
            let path = tile_path(None, tile, width);
            let body = self.read_required(&path)?;
            let entries = split_bundle(&body, width).map_err(|source| ArchiveError::Tile { path, source })?;
            let to = (end - tile * TILE_WIDTH).min(width);
            let from = usize::try_from(index - tile * TILE_WIDTH).unwrap_or(0);
            out.extend(entries[from..usize::try_from(to).unwrap_or(0)].iter().map(|e| e.to_vec()));
            index = tile * TILE_WIDTH + to;
        }
        Ok(out)
    }

    /// The leaf hashes `[start, end)` from the level-0 tiles of an archive of `size`.
    pub fn leaf_hashes(&self, start: u64, end: u64, size: u64) -> Result<Vec<Hash>, ArchiveError> {
        let mut hashes = Vec::new();
        let mut index = start;
        while index < end {
            let (tile, width) = tile_of(index, size);
            let path = tile_path(Some(0), tile, width);
            let body = self.read_required(&path)?;
            let tile_hashes = split_hashes(&body, width).map_err(|source| ArchiveError::Tile { path, source })?;
            let from = index - tile * TILE_WIDTH;
            let to = (end - tile * TILE_WIDTH).min(width);
            hashes
                .extend_from_slice(&tile_hashes[usize::try_from(from).unwrap_or(0)..usize::try_from(to).unwrap_or(0)]);
            index = tile * TILE_WIDTH + to;
        }
        Ok(hashes)
    }

    /// The payload stored with entry `index`, if the archive has one.
    pub fn payload(&self, index: u64, size: u64) -> Result<Option<Vec<u8>>, ArchiveError> {
        let (tile, width) = tile_of(index, size);
        let path = sidecar_path("payloads", tile, width);
        let body = self.read_required(&path)?;
        let payloads = split_payloads(&body, width).map_err(|what| ArchiveError::Refused(format!("{path}: {what}")))?;
        Ok(payloads[usize::try_from(index % TILE_WIDTH).expect("below 256")].map(<[u8]>::to_vec))
    }
}

/// The tile holding `index` in an archive of `size`, and its width there.
pub(crate) fn tile_of(index: u64, size: u64) -> (u64, u64) {
    let tile = index / TILE_WIDTH;
    (tile, (size - tile * TILE_WIDTH).min(TILE_WIDTH))
}

/// Appends one payload (or its absence) to a `sealmq/payloads` file.
pub(crate) fn push_payload(file: &mut Vec<u8>, payload: Option<&[u8]>) {
    match payload {
        Some(data) => {
            file.extend_from_slice(&u32::try_from(data.len()).unwrap_or(NO_PAYLOAD - 1).to_be_bytes());
            file.extend_from_slice(data);
        }
        None => file.extend_from_slice(&NO_PAYLOAD.to_be_bytes()),
    }
}

/// Splits a `sealmq/payloads` file that must hold `width` entries.
pub(crate) fn split_payloads(body: &[u8], width: u64) -> Result<Vec<Option<&[u8]>>, String> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        if len == NO_PAYLOAD {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if rest.len() < len {
            return Err(format!("payload {} runs past the end of the file", out.len()));
        }
        out.push(Some(&rest[..len]));
        rest = &rest[len..];
    }
    if !rest.is_empty() || out.len() as u64 != width {
        return Err(format!("holds {} payload slots and {} stray bytes, not {width} slots", out.len(), rest.len()));
    }
    Ok(out)
}
