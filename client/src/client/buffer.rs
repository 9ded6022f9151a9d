//! The shared ID buffer: a queue of leased ranges that callers pop from and the driver pushes
//! to.
//!
//! Ranges enter at the back in the order their LEASED replies were verified (so the front is
//! always the oldest), callers take IDs from the front under one short `std::sync::Mutex`
//! (pure memory work: no clock read, no syscall, never held across an await), and the driver
//! drops ranges from the front once they pass `max_age`. The buffer also carries the
//! low-water trigger: each take compares what is left with `wake_below`, which the driver
//! sets, and reports the first crossing so the caller wakes the driver exactly once until the
//! driver re-arms it.

use std::collections::VecDeque;
use std::time::Instant;

use super::IdRange;

/// One leased range, partly used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// Next ID to hand out.
    pub next: u64,
    /// One past the last ID.
    pub end: u64,
    /// When the reply arrived; the age that `max_age` limits.
    pub received: Instant,
}

impl Block {
    fn remaining(&self) -> u64 {
        self.end - self.next
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Buffer {
    blocks: VecDeque<Block>,
    /// Sum of `remaining()` over `blocks`.
    available: u64,
    /// IDs ever taken (wrapping); the driver samples it for the draw rate.
    drawn: u64,
    /// IDs ever added (wrapping); waiting callers watch it for progress.
    pushed: u64,
    /// A take that leaves fewer than this many IDs wakes the driver.
    wake_below: u64,
    /// The wake for the current crossing was already reported.
    wake_sent: bool,
}

impl Buffer {
    /// An empty buffer whose first take wakes the driver.
    pub fn new() -> Buffer {
        Buffer {
            blocks: VecDeque::new(),
            available: 0,
            drawn: 0,
            pushed: 0,
            wake_below: 1,
            wake_sent: false,
        }
    }

    /// Takes one ID: the hot path.
    #[inline]
    pub fn pop(&mut self) -> Option<u64> {
        let block = self.blocks.front_mut()?;
        let id = block.next;
        block.next += 1;
        if block.next == block.end {
            self.blocks.pop_front();
        }
        self.available -= 1;
        self.drawn = self.drawn.wrapping_add(1);
        Some(id)
    }

    /// Appends IDs to `out` until it holds `want` or the buffer is empty.
    pub fn take_into(&mut self, out: &mut Vec<u64>, want: usize) {
        while out.len() < want {
            let Some(block) = self.blocks.front_mut() else {
                return;
            };
            let n = block
                .remaining()
                .min(u64::try_from(want - out.len()).unwrap_or(u64::MAX));
            out.extend(block.next..block.next + n);
            block.next += n;
            if block.next == block.end {
                self.blocks.pop_front();
            }
            self.available -= n;
            self.drawn = self.drawn.wrapping_add(n);
        }
    }

    /// Appends whole ranges (the last one cut) to `out`, oldest first, until `max` IDs are
    /// taken or the buffer is empty; returns how many IDs were taken. One step per range of
    /// up to a tick's IDs, however many IDs that is: the bulk consumer's path.
    pub fn take_ranges(&mut self, out: &mut Vec<IdRange>, max: u64) -> u64 {
        let mut taken = 0;
        while taken < max {
            let Some(block) = self.blocks.front_mut() else {
                break;
            };
            // Blocks come from single ticks, so a block's size fits a LEASE count (u32).
            let n = block.remaining().min(max - taken).min(u64::from(u32::MAX));
            out.push(IdRange {
                first: block.next,
                count: n as u32,
            });
            block.next += n;
            if block.next == block.end {
                self.blocks.pop_front();
            }
            taken += n;
        }
        self.available -= taken;
        self.drawn = self.drawn.wrapping_add(taken);
        taken
    }

    /// Takes `n` consecutive IDs from the oldest range that still has `n`, or nothing.
    pub fn take_range(&mut self, n: u32) -> Option<IdRange> {
        let want = u64::from(n);
        let i = self.blocks.iter().position(|b| b.remaining() >= want)?;
        let block = &mut self.blocks[i];
        let first = block.next;
        block.next += want;
        if block.next == block.end {
            self.blocks.remove(i);
        }
        self.available -= want;
        self.drawn = self.drawn.wrapping_add(want);
        Some(IdRange { first, count: n })
    }

    /// Adds a verified range at the back. Empty ranges are ignored.
    pub fn push(&mut self, block: Block) {
        if block.end > block.next {
            self.available += block.remaining();
            self.pushed = self.pushed.wrapping_add(block.remaining());
            self.blocks.push_back(block);
        }
    }

    /// Drops ranges received at or before `cutoff`; returns how many IDs were dropped.
    pub fn expire(&mut self, cutoff: Instant) -> u64 {
        let mut dropped = 0;
        while let Some(front) = self.blocks.front() {
            if front.received > cutoff {
                break;
            }
            dropped += front.remaining();
            self.blocks.pop_front();
        }
        self.available -= dropped;
        dropped
    }

    /// Drops everything (the client is closing).
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.available = 0;
    }

    /// IDs on hand.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// IDs ever taken, wrapping.
    pub fn drawn(&self) -> u64 {
        self.drawn
    }

    /// IDs ever added, wrapping.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Reports, once per crossing, that a take left fewer than `wake_below` IDs.
    #[inline]
    pub fn wants_refill(&mut self) -> bool {
        if self.available < self.wake_below && !self.wake_sent {
            self.wake_sent = true;
            true
        } else {
            false
        }
    }

    /// Sets the low-water trigger and re-arms it. `0` means "do not wake me": the driver
    /// already has replies coming that will wake it.
    pub fn arm(&mut self, wake_below: u64) {
        self.wake_below = wake_below;
        self.wake_sent = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn block(next: u64, end: u64, received: Instant) -> Block {
        Block {
            next,
            end,
            received,
        }
    }

    #[test]
    fn pop_drains_ranges_oldest_first_then_returns_none() {
        let now = Instant::now();
        let mut b = Buffer::new();
        b.push(block(10, 12, now));
        b.push(block(100, 101, now));
        assert_eq!(b.available(), 3);
        let got: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(got, [10, 11, 100]);
        assert_eq!((b.available(), b.drawn()), (0, 3));
    }

    #[test]
    fn take_into_spans_ranges_and_stops_at_what_is_wanted() {
        let now = Instant::now();
        let mut b = Buffer::new();
        b.push(block(0, 3, now));
        b.push(block(50, 60, now));
        let mut out = vec![7];
        b.take_into(&mut out, 6);
        assert_eq!(out, [7, 0, 1, 2, 50, 51]);
        assert_eq!(b.available(), 8);
        assert_eq!(b.pop(), Some(52));
        let mut rest = Vec::new();
        b.take_into(&mut rest, 100);
        assert_eq!(rest.len(), 7);
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn take_range_uses_the_first_range_big_enough_and_keeps_the_rest() {
        let now = Instant::now();
        let mut b = Buffer::new();
        b.push(block(0, 2, now));
        b.push(block(100, 110, now));
        assert_eq!(
            b.take_range(5),
            Some(IdRange {
                first: 100,
                count: 5
            })
        );
        assert_eq!(
            b.take_range(5),
            Some(IdRange {
                first: 105,
                count: 5
            })
        );
        assert_eq!(b.take_range(3), None);
        assert_eq!(b.available(), 2);
        assert_eq!(b.pop(), Some(0));
    }

    #[test]
    fn take_ranges_hands_out_whole_ranges_and_cuts_only_the_last() {
        let now = Instant::now();
        let mut b = Buffer::new();
        b.push(block(0, 3, now));
        b.push(block(50, 60, now));
        b.push(block(100, 101, now));
        let mut out = Vec::new();
        assert_eq!(b.take_ranges(&mut out, 5), 5);
        let range = |first, count| IdRange { first, count };
        assert_eq!(out, [range(0, 3), range(50, 2)]);
        assert_eq!((b.available(), b.drawn()), (9, 5));
        out.clear();
        assert_eq!(b.take_ranges(&mut out, u64::MAX), 9);
        assert_eq!(out, [range(52, 8), range(100, 1)]);
        assert_eq!(b.take_ranges(&mut out, 1), 0, "empty");
        assert_eq!((b.available(), b.drawn(), b.pop()), (0, 14, None));
    }

    #[test]
    fn expire_drops_only_ranges_received_by_the_cutoff() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        let mut b = Buffer::new();
        b.push(block(0, 4, t0));
        b.pop();
        b.push(block(10, 14, t1));
        assert_eq!(b.expire(t0), 3);
        assert_eq!(b.available(), 4);
        assert_eq!(b.pop(), Some(10));
        assert_eq!(b.expire(t1), 3);
        assert_eq!(b.pop(), None);
    }

    #[test]
    fn the_low_water_wake_fires_once_per_arming() {
        let now = Instant::now();
        let mut b = Buffer::new();
        b.push(block(0, 10, now));
        b.arm(8);
        b.pop();
        assert!(!b.wants_refill(), "9 left, not below 8");
        b.pop();
        b.pop();
        assert!(b.wants_refill(), "7 left");
        b.pop();
        assert!(!b.wants_refill(), "already reported");
        b.arm(8);
        assert!(b.wants_refill(), "re-armed while still low");
        b.arm(0);
        while b.pop().is_some() {}
        assert!(!b.wants_refill(), "disarmed");
    }

    #[test]
    fn empty_ranges_are_ignored_and_clear_empties() {
        let now = Instant::now();
        let mut b = Buffer::new();
        b.push(block(5, 5, now));
        assert_eq!(b.pop(), None);
        b.push(block(5, 9, now));
        b.clear();
        assert_eq!((b.available(), b.pop()), (0, None));
    }
}
