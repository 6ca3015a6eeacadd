//! Block headers (`spec/log.md`): each sealed block commits to its records'
//! Merkle root, the block before it, and the whole log's root at its end.

use crate::codec::Reader;
use crate::{DecodeError, Hash, sha256};

/// Encoded length of a [`BlockHeader`].
pub const HEADER_LEN: usize = 1 + 8 + 32 + 8 + 4 + 32 + 8 + 32 + 8;
const VERSION: u8 = 1;

/// One block's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// 0 for the first block.
    pub height: u64,
    /// [`BlockHeader::hash`] of the previous block; all zero at height 0.
    pub prev_block_hash: Hash,
    /// Log index of the block's first record.
    pub first_index: u64,
    /// Number of records in the block, at least 1.
    pub leaf_count: u32,
    /// MTH over the block's records.
    pub block_root: Hash,
    /// `first_index + leaf_count`: the log's size after this block.
    pub tree_size: u64,
    /// MTH over records `[0, tree_size)`.
    pub tree_root: Hash,
    /// When the block was sealed, Unix ms.
    pub sealed_ms: u64,
}

impl BlockHeader {
    /// The header's canonical bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut pos = 0;
        let mut put = |bytes: &[u8]| {
            out[pos..pos + bytes.len()].copy_from_slice(bytes);
            pos += bytes.len();
        };
        put(&[VERSION]);
        put(&self.height.to_be_bytes());
        put(&self.prev_block_hash);
        put(&self.first_index.to_be_bytes());
        put(&self.leaf_count.to_be_bytes());
        put(&self.block_root);
        put(&self.tree_size.to_be_bytes());
        put(&self.tree_root);
        put(&self.sealed_ms.to_be_bytes());
        out
    }

    /// Decodes a header, checking its version, `leaf_count ≥ 1` and
    /// `tree_size = first_index + leaf_count`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Invalid { field: "version", value: version.into() });
        }
        let header = Self {
            height: r.u64("height")?,
            prev_block_hash: r.array("prev_block_hash")?,
            first_index: r.u64("first_index")?,
            leaf_count: r.u32("leaf_count")?,
            block_root: r.array("block_root")?,
            tree_size: r.u64("tree_size")?,
            tree_root: r.array("tree_root")?,
            sealed_ms: r.u64("sealed_ms")?,
        };
        r.finish()?;
        if header.leaf_count == 0 {
            return Err(DecodeError::Invalid { field: "leaf_count", value: 0 });
        }
        if header.first_index.checked_add(header.leaf_count.into()) != Some(header.tree_size) {
            return Err(DecodeError::Invalid { field: "tree_size", value: header.tree_size });
        }
        Ok(header)
    }

    /// `SHA-256(0x02 || header)`: what the next block links to.
    pub fn hash(&self) -> Hash {
        let mut input = [0u8; HEADER_LEN + 1];
        input[0] = 0x02;
        input[1..].copy_from_slice(&self.encode());
        sha256(&input)
    }
}
