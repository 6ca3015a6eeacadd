//! RFC 6962 hashing: leaves, interior nodes, block hashes.

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// `SHA-256(data)`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// `SHA-256(0x00 || record)`: the tree leaf that commits to one record.
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(record);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: an interior tree node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The Merkle tree hash of zero leaves, `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(b"")
}

/// The RFC 6962 hasher for `rs_merkle`: a lone node is promoted unchanged,
/// which makes rs_merkle's level-by-level tree the RFC 6962 tree.
#[derive(Clone, Copy, Debug)]
pub struct Rfc6962;

impl rs_merkle::Hasher for Rfc6962 {
    type Hash = Hash;

    /// Only used by rs_merkle for leaves it hashes itself; sealmq hands it
    /// leaf hashes already, so this is plain SHA-256.
    fn hash(data: &[u8]) -> Hash {
        sha256(data)
    }

    fn concat_and_hash(left: &Hash, right: Option<&Hash>) -> Hash {
        match right {
            Some(right) => node_hash(left, right),
            None => *left,
        }
    }
}

/// MTH over the given leaf hashes (a block's root), computed with rs_merkle.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    rs_merkle::MerkleTree::<Rfc6962>::from_leaves(leaves).root().expect("a tree with leaves has a root")
}
