//! Committed records not yet in a block, hashed into the blocks they will
//! form as they commit.
//!
//! Sealing a block of 4096 records used to hash all of them at once (the
//! tree's new nodes, then the block root through a full in-memory tree):
//! about 1.4 ms of the sequencer's time during which no append committed.
//! Pushing each leaf into its block's frontiers as it commits spreads that
//! over the appends (two or three hashes per record), and leaves the seal
//! nothing to hash but its header.

use std::collections::VecDeque;

use crate::tree::is_stored_level;
use crate::{Frontier, Hash, NodeId};

/// One future block's records, from a block boundary.
#[derive(Debug, Clone)]
pub(super) struct OpenBlock {
    /// Its records.
    pub(super) count: usize,
    /// The whole tree once this block is in it.
    pub(super) tree: Frontier,
    /// The block's own leaves: its `root()` is the block root (RFC 6962
    /// MTH over the block's leaves, as `merkle_root` computes it).
    pub(super) block: Frontier,
    /// The tree hashes this block completes at stored levels, to insert
    /// into `tree_nodes` when it seals.
    pub(super) nodes: Vec<(NodeId, Hash)>,
}

/// The pending records as blocks of at most `max` records.
#[derive(Debug)]
pub(super) struct Pending {
    /// The sealed tree's frontier.
    sealed: Frontier,
    blocks: VecDeque<OpenBlock>,
    max: usize,
    len: usize,
}

impl Pending {
    /// Nothing pending after the sealed tree `sealed`.
    pub(super) fn new(sealed: Frontier, max: usize) -> Self {
        Self { sealed, blocks: VecDeque::new(), max: max.max(1), len: 0 }
    }

    /// Records pending.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sealed tree's frontier.
    pub(super) fn sealed(&self) -> &Frontier {
        &self.sealed
    }

    /// Takes in one committed record's leaf hash.
    pub(super) fn push(&mut self, leaf: Hash) {
        if self.blocks.back().is_none_or(|open| open.count >= self.max) {
            let tree = self.blocks.back().map_or_else(|| self.sealed.clone(), |open| open.tree.clone());
            self.blocks.push_back(OpenBlock { count: 0, tree, block: Frontier::new(), nodes: Vec::new() });
        }
        let open = self.blocks.back_mut().expect("pushed above");
        let nodes = &mut open.nodes;
        open.tree.push(leaf, |id, hash| {
            if id.level > 0 && is_stored_level(id.level) {
                nodes.push((id, *hash));
            }
        });
        open.block.push(leaf, |_, _| {});
        open.count += 1;
        self.len += 1;
    }

    /// The block that seals next: the oldest pending records, at most `max`.
    pub(super) fn next_block(&self) -> Option<&OpenBlock> {
        self.blocks.front()
    }

    /// The next block was sealed: its records are no longer pending.
    pub(super) fn sealed_next(&mut self) {
        if let Some(open) = self.blocks.pop_front() {
            self.len -= open.count;
            self.sealed = open.tree;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle_root;

    #[test]
    fn blocks_hash_as_sealing_them_at_once_does() {
        let leaves: Vec<Hash> = (0u32..23).map(|i| crate::leaf_hash(&i.to_be_bytes())).collect();
        let mut pending = Pending::new(Frontier::new(), 10);
        for leaf in &leaves {
            pending.push(*leaf);
        }
        assert_eq!(pending.len(), 23);
        let mut tree = Frontier::new();
        for chunk in leaves.chunks(10) {
            let open = pending.next_block().unwrap().clone();
            assert_eq!(open.count, chunk.len());
            assert_eq!(open.block.root(), merkle_root(chunk));
            let mut nodes = Vec::new();
            for leaf in chunk {
                tree.push(*leaf, |id, hash| {
                    if id.level > 0 && is_stored_level(id.level) {
                        nodes.push((id, *hash));
                    }
                });
            }
            assert_eq!(open.tree, tree);
            assert_eq!(open.nodes, nodes);
            pending.sealed_next();
            assert_eq!(pending.sealed(), &tree);
        }
        assert!(pending.is_empty() && pending.next_block().is_none());
    }
}
