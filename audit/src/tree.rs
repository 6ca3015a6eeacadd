//! The log's RFC 6962 / RFC 9162 Merkle tree, without holding it in memory.
//!
//! Every complete, aligned subtree of the log is a [`NodeId`]: `level` ℓ
//! and `index` i cover leaves `[i·2^ℓ, (i+1)·2^ℓ)`. Their hashes never
//! change once the subtree is full, so the store keeps them append-only and
//! a proof needs only the O(log n) of them that [`inclusion_plan`] or
//! [`consistency_plan`] name. [`Frontier`] is the right edge of the tree:
//! the one complete subtree per set bit of the size, enough to append a leaf
//! (amortized O(1) hashes) and to compute the root (O(log n)).

use crate::{Hash, ProofError, empty_root, node_hash};

/// Interior hashes a store keeps: those at levels that are multiples of
/// this. Any other node is rehashed from at most `2^(STORED_LEVEL_STEP-1)`
/// stored hashes below it. Levels 8, 16, … are among them, so the C2SP
/// tlog-tiles hashes are always stored.
pub const STORED_LEVEL_STEP: u8 = 4;

/// Whether a store keeps the hash of a node at `level` (level 0, the
/// leaves, is kept with the records).
pub fn is_stored_level(level: u8) -> bool {
    level.is_multiple_of(STORED_LEVEL_STEP)
}

/// The stored hashes under a node: their level and index range `[start, end)`.
pub fn stored_base(id: NodeId) -> (u8, u64, u64) {
    let base = id.level - id.level % STORED_LEVEL_STEP;
    let shift = id.level - base;
    (base, id.index << shift, (id.index + 1) << shift)
}

/// A complete, aligned subtree: leaves `[index << level, (index + 1) << level)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves; 0 is a leaf.
    pub level: u8,
    /// Position among the subtrees of that height.
    pub index: u64,
}

/// Largest power of two strictly below `n` (n ≥ 2): RFC 6962's split point.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The leaves `[start, end)` of an RFC 6962 subtree whose hash a proof needs.
///
/// Every range a proof plan yields starts at a multiple of a power of two
/// at least as large as its length, so its hash is the right fold of
/// [`Range::parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First leaf.
    pub start: u64,
    /// One past the last leaf.
    pub end: u64,
}

impl Range {
    /// The complete subtrees that make up this range, left to right.
    pub fn parts(&self) -> Vec<NodeId> {
        let mut parts = Vec::new();
        let mut pos = self.start;
        let len = self.end - self.start;
        for level in (0..64u8).rev() {
            if len & (1 << level) != 0 {
                parts.push(NodeId { level, index: pos >> level });
                pos += 1 << level;
            }
        }
        parts
    }

    /// Folds the parts' hashes (in [`Range::parts`] order) into the range's MTH.
    pub fn fold(hashes: &[Hash]) -> Hash {
        let mut iter = hashes.iter().rev();
        let Some(last) = iter.next() else { return empty_root() };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// The subtrees whose hashes form the RFC 9162 §2.1.3.1 inclusion path of
/// leaf `index` in a tree of `size` leaves, from the leaf upwards.
pub fn inclusion_plan(index: u64, size: u64) -> Result<Vec<Range>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::new();
    let (mut start, mut end) = (0, size);
    // Walk down from the root, remembering the sibling at each split; the
    // path lists siblings bottom-up, so reverse at the end.
    while end - start > 1 {
        let k = split_point(end - start);
        if index - start < k {
            path.push(Range { start: start + k, end });
            end = start + k;
        } else {
            path.push(Range { start, end: start + k });
            start += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The subtrees whose hashes form the RFC 9162 §2.1.4.1 consistency proof
/// from `old_size` to `new_size`. Empty when the sizes are equal or the old
/// tree is empty.
pub fn consistency_plan(old_size: u64, new_size: u64) -> Result<Vec<Range>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old: old_size, new: new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b), unrolled; entries are collected top-down
    // and emitted bottom-up.
    let mut proof = Vec::new();
    let (mut m, mut start, mut end, mut whole) = (old_size, 0u64, new_size, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(Range { start, end });
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(Range { start: start + k, end });
            end = start + k;
        } else {
            proof.push(Range { start, end: start + k });
            start += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// How many hashes an inclusion proof for `index` in `size` must have.
pub fn inclusion_len(index: u64, size: u64) -> Result<usize, ProofError> {
    inclusion_plan(index, size).map(|p| p.len())
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is at `index` in the tree of `size`
/// leaves with root `root`. The proof must have exactly the right length.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    let expected = inclusion_len(index, size)?;
    if proof.len() != expected {
        return Err(ProofError::WrongLength { expected, actual: proof.len() });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength { expected, actual: proof.len() });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength { expected, actual: proof.len() });
    }
    if &r != root {
        return Err(ProofError::RootMismatch { which: "tree" });
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` leaves with root `old_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    let expected = consistency_plan(old_size, new_size)?.len();
    if proof.len() != expected {
        return Err(ProofError::WrongLength { expected, actual: proof.len() });
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(ProofError::RootMismatch { which: "new" }) };
    }
    if old_size == 0 {
        return if old_root == &empty_root() { Ok(()) } else { Err(ProofError::RootMismatch { which: "old" }) };
    }
    // When the old tree is a complete subtree, its root is the proof's
    // implicit first element.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);

    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength { expected, actual: proof.len() });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength { expected, actual: proof.len() });
    }
    if &fr != old_root {
        return Err(ProofError::RootMismatch { which: "old" });
    }
    if &sr != new_root {
        return Err(ProofError::RootMismatch { which: "new" });
    }
    Ok(())
}

/// MTH of a complete subtree from its 2^k hashes at one level, in order.
pub fn subtree_root(hashes: &[Hash]) -> Hash {
    debug_assert!(hashes.len().is_power_of_two());
    let mut level = hashes.to_vec();
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
    }
    level.first().copied().unwrap_or_else(empty_root)
}

/// Resolves a proof plan into hashes, given a lookup of complete subtrees.
pub fn resolve(
    plan: &[Range],
    mut node: impl FnMut(NodeId) -> Result<Hash, ProofError>,
) -> Result<Vec<Hash>, ProofError> {
    plan.iter()
        .map(|range| {
            let hashes = range.parts().into_iter().map(&mut node).collect::<Result<Vec<_>, _>>()?;
            Ok(Range::fold(&hashes))
        })
        .collect()
}

/// The right edge of an append-only tree: one complete subtree per set bit
/// of the size, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node ids the frontier of a tree of `size` leaves consists of.
    pub fn ids(size: u64) -> Vec<NodeId> {
        Range { start: 0, end: size }.parts()
    }

    /// Rebuilds a frontier from the hashes of [`Frontier::ids`]`(size)`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, ProofError> {
        let expected = size.count_ones() as usize;
        if nodes.len() != expected {
            return Err(ProofError::WrongLength { expected, actual: nodes.len() });
        }
        Ok(Self { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash, reporting the leaf and every subtree it
    /// completes to `on_node`, lowest first.
    pub fn push(&mut self, leaf: Hash, mut on_node: impl FnMut(NodeId, &Hash)) {
        let mut id = NodeId { level: 0, index: self.size };
        let mut hash = leaf;
        on_node(id, &hash);
        while id.index & 1 == 1 {
            let left = self.nodes.pop().expect("a set bit has a frontier node");
            hash = node_hash(&left, &hash);
            id = NodeId { level: id.level + 1, index: id.index >> 1 };
            on_node(id, &hash);
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The tree's root, MTH over all leaves.
    pub fn root(&self) -> Hash {
        Range::fold(&self.nodes)
    }
}
