//! C2SP tlog-tiles: tile paths, tile and entry-bundle bodies. Format code
//! only, no I/O: the store's archive writes and reads these files, the
//! broker serves them.
//!
//! A tile at level L holds up to 256 hashes of tree level 8·L; tile N
//! covers those with indices `[256·N, 256·N + W)`. A full tile (W = 256)
//! is at `tile/<L>/<N>`, a partial one at `tile/<L>/<N>.p/<W>`; entry
//! bundles (the leaves' data) at `tile/entries/<N>[.p/<W>]`. N is written
//! in 3-digit path elements, all but the last prefixed with `x`.

use thiserror::Error;

use crate::Hash;

/// Hashes or entries in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels per tile level.
pub const TILE_HEIGHT: u8 = 8;

/// A tile bundle's body is not what its path says.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TileError {
    /// A tile's length is not 32 bytes per hash of its width.
    #[error("{len} bytes, not {width} hashes of 32 bytes")]
    HashTileLength {
        /// Bytes found.
        len: usize,
        /// Hashes expected.
        width: u64,
    },
    /// An entry bundle ends inside an entry, or holds another number of entries.
    #[error("entry bundle holds {found} whole entries (and {trailing} bytes), not {width}")]
    BundleShape {
        /// Whole entries found.
        found: u64,
        /// Bytes left after them.
        trailing: usize,
        /// Entries expected.
        width: u64,
    },
    /// An entry is too long for the u16 length prefix of a bundle.
    #[error("entry {index} is {len} bytes, more than an entry bundle's 65535")]
    EntryTooLong {
        /// The entry's log index.
        index: u64,
        /// Its length.
        len: usize,
    },
}

/// The index part of a tile path: `x001/x234/067` for 1234067.
pub fn encode_index(index: u64) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

/// `tile/<level>/<N>[.p/<W>]`, or `tile/entries/…` when `level` is `None`.
/// `width` is the number of hashes or entries, 1 to 256.
pub fn tile_path(level: Option<u8>, index: u64, width: u64) -> String {
    let level = level.map_or_else(|| "entries".to_string(), |l| l.to_string());
    let mut path = format!("tile/{level}/{}", encode_index(index));
    if width < TILE_WIDTH {
        path.push_str(&format!(".p/{width}"));
    }
    path
}

/// The tiles of tile level `level` a tree of `size` leaves has, as (index,
/// width), left to right: full ones, then the partial one if any.
pub fn tiles_at(level: u8, size: u64) -> impl Iterator<Item = (u64, u64)> {
    let count = size.checked_shr(u32::from(level) * u32::from(TILE_HEIGHT)).unwrap_or(0);
    let full = count / TILE_WIDTH;
    let partial = count % TILE_WIDTH;
    (0..full).map(|n| (n, TILE_WIDTH)).chain((partial > 0).then_some((full, partial)))
}

/// The tile levels a tree of `size` leaves has tiles at (0 for the leaves).
pub fn tile_levels(size: u64) -> impl Iterator<Item = u8> {
    (0..8u8).take_while(move |l| size.checked_shr(u32::from(*l) * u32::from(TILE_HEIGHT)).unwrap_or(0) > 0)
}

/// Splits a hash tile's body into its hashes.
pub fn split_hashes(body: &[u8], width: u64) -> Result<Vec<Hash>, TileError> {
    if body.len() as u64 != width * 32 {
        return Err(TileError::HashTileLength { len: body.len(), width });
    }
    Ok(body.chunks_exact(32).map(|c| c.try_into().expect("chunks of 32")).collect())
}

/// Appends one entry (u16 big-endian length, then the bytes) to a bundle.
pub fn push_entry(bundle: &mut Vec<u8>, index: u64, entry: &[u8]) -> Result<(), TileError> {
    let len = u16::try_from(entry.len()).map_err(|_| TileError::EntryTooLong { index, len: entry.len() })?;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
    Ok(())
}

/// Splits an entry bundle that must hold exactly `width` entries.
pub fn split_bundle(body: &[u8], width: u64) -> Result<Vec<&[u8]>, TileError> {
    let mut entries = Vec::with_capacity(usize::try_from(width).unwrap_or(0));
    let mut rest = body;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 2 + len {
            break;
        }
        entries.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    if !rest.is_empty() || entries.len() as u64 != width {
        return Err(TileError::BundleShape { found: entries.len() as u64, trailing: rest.len(), width });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_c2sp_examples() {
        // The spec's own example: tile/1/x001/x234/067.p/8 for index 1234067, width 8.
        assert_eq!(tile_path(Some(1), 1_234_067, 8), "tile/1/x001/x234/067.p/8");
        assert_eq!(tile_path(None, 0, 256), "tile/entries/000");
        assert_eq!(tile_path(Some(0), 1000, 256), "tile/0/x001/000");
    }

    #[test]
    fn a_tree_has_the_tiles_its_size_implies() {
        assert_eq!(tiles_at(0, 513).collect::<Vec<_>>(), vec![(0, 256), (1, 256), (2, 1)]);
        assert_eq!(tiles_at(1, 513).collect::<Vec<_>>(), vec![(0, 2)]);
        assert_eq!(tiles_at(1, 255).count(), 0);
        assert_eq!(tile_levels(65_536).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn bundles_round_trip_and_refuse_bad_shapes() {
        let mut bundle = Vec::new();
        push_entry(&mut bundle, 0, b"ab").unwrap();
        push_entry(&mut bundle, 1, b"").unwrap();
        assert_eq!(split_bundle(&bundle, 2).unwrap(), vec![&b"ab"[..], &b""[..]]);
        assert!(split_bundle(&bundle, 3).is_err());
        assert!(split_bundle(&bundle[..bundle.len() - 1], 2).is_err());
        assert!(matches!(push_entry(&mut bundle, 7, &[0; 65_536]), Err(TileError::EntryTooLong { index: 7, .. })));
    }
}
