//! The uniqueness check: every block of IDs the bench received goes into one list, which is
//! sorted by first ID and swept once; a block that starts before the furthest end seen so far
//! overlaps an earlier one. O(n log n) time and 16 bytes per block, so ten seconds of
//! 4,096-ID leases is a few megabytes, and even one-ID leases at a million per second stay
//! within a few hundred megabytes.
//!
//! The client modes hand out single IDs; [`Runs`] folds consecutive ones into blocks as they
//! arrive so the same sweep applies without keeping every ID.

use serde::Serialize;

use crate::stats::thousands;

/// A block of consecutive IDs: `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Block {
    /// First ID.
    pub first: u64,
    /// How many IDs.
    pub count: u32,
}

impl Block {
    /// One past the last ID, wide enough that no block can overflow it.
    fn end(&self) -> u128 {
        u128::from(self.first) + u128::from(self.count)
    }
}

/// What the sweep found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Blocks checked.
    pub blocks: u64,
    /// IDs in them.
    pub ids: u64,
    /// Blocks that share at least one ID with an earlier block.
    pub overlaps: u64,
    /// Blocks of zero IDs (a protocol violation: LEASED carries at least one).
    pub empty: u64,
    /// The first overlapping pair found, for the report.
    pub example: Option<(Block, Block)>,
}

impl Verdict {
    /// No overlap and no empty block.
    pub fn ok(&self) -> bool {
        self.overlaps == 0 && self.empty == 0
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let head = format!(
            "{} blocks, {} IDs",
            thousands(self.blocks),
            thousands(self.ids)
        );
        match (&self.example, self.ok()) {
            (_, true) => format!("ok: {head}, all disjoint"),
            (Some((a, b)), false) => format!(
                "FAILED: {head}, {} overlapping, {} empty; e.g. {}+{} overlaps {}+{}",
                self.overlaps, self.empty, a.first, a.count, b.first, b.count
            ),
            (None, false) => format!("FAILED: {head}, {} empty blocks", self.empty),
        }
    }
}

/// Sorts `blocks` and checks that no two share an ID.
pub fn check_disjoint(blocks: &mut [Block]) -> Verdict {
    blocks.sort_unstable();
    let mut verdict = Verdict {
        blocks: blocks.len() as u64,
        ids: 0,
        overlaps: 0,
        empty: 0,
        example: None,
    };
    // The block reaching furthest so far: any later block starting below its end overlaps it.
    let mut furthest: Option<Block> = None;
    for &block in blocks.iter() {
        if block.count == 0 {
            verdict.empty += 1;
            continue;
        }
        verdict.ids += u64::from(block.count);
        if let Some(prev) = furthest {
            if u128::from(block.first) < prev.end() {
                verdict.overlaps += 1;
                verdict.example.get_or_insert((prev, block));
            }
            if block.end() > prev.end() {
                furthest = Some(block);
            }
        } else {
            furthest = Some(block);
        }
    }
    verdict
}

/// Single IDs folded into blocks of consecutive IDs as they arrive.
#[derive(Debug, Default)]
pub struct Runs {
    blocks: Vec<Block>,
}

impl Runs {
    /// Adds one ID: it extends the last block when it is that block's next ID.
    pub fn push(&mut self, id: u64) {
        if let Some(last) = self.blocks.last_mut() {
            if last.count < u32::MAX && last.end() == u128::from(id) {
                last.count += 1;
                return;
            }
        }
        self.blocks.push(Block {
            first: id,
            count: 1,
        });
    }

    /// The blocks collected.
    pub fn into_blocks(self) -> Vec<Block> {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn b(first: u64, count: u32) -> Block {
        Block { first, count }
    }

    #[test]
    fn disjoint_blocks_in_any_order_pass() {
        let mut blocks = vec![b(100, 10), b(0, 50), b(50, 50), b(110, 1)];
        let v = check_disjoint(&mut blocks);
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.blocks, v.ids), (4, 111));
        assert!(v.describe().starts_with("ok: 4 blocks, 111 IDs"));
    }

    #[test]
    fn a_block_sharing_one_id_is_an_overlap() {
        let mut blocks = vec![b(0, 10), b(9, 5)];
        let v = check_disjoint(&mut blocks);
        assert_eq!(v.overlaps, 1);
        assert_eq!(v.example, Some((b(0, 10), b(9, 5))));
        assert!(
            v.describe().contains("0+10 overlaps 9+5"),
            "{}",
            v.describe()
        );
    }

    #[test]
    fn a_block_inside_a_long_earlier_block_is_caught_past_a_short_one() {
        // The short middle block must not hide the long first block's reach.
        let mut blocks = vec![b(0, 100), b(10, 1), b(50, 1)];
        let v = check_disjoint(&mut blocks);
        assert_eq!(v.overlaps, 2);
    }

    #[test]
    fn duplicates_and_empty_blocks_fail() {
        let v = check_disjoint(&mut [b(5, 1), b(5, 1)]);
        assert_eq!(v.overlaps, 1);
        let v = check_disjoint(&mut [b(5, 0)]);
        assert!(!v.ok());
        assert_eq!(v.empty, 1);
    }

    #[test]
    fn blocks_at_the_top_of_u64_do_not_overflow() {
        let v = check_disjoint(&mut [b(u64::MAX - 1, 2), b(u64::MAX, 1)]);
        assert_eq!(v.overlaps, 1);
    }

    #[test]
    fn runs_fold_consecutive_ids_and_keep_repeats_apart() {
        let mut runs = Runs::default();
        for id in [10, 11, 12, 20, 21, 21] {
            runs.push(id);
        }
        let mut blocks = runs.into_blocks();
        assert_eq!(blocks, vec![b(10, 3), b(20, 2), b(21, 1)]);
        assert_eq!(check_disjoint(&mut blocks).overlaps, 1);
    }
}
