//! The lock-free lease generator every core shares.
//!
//! All state is one cache-padded `AtomicU64` holding a *position*: `tick << sequence_bits |
//! next_sequence`. Positions only grow, and the ID for a position is `compose(tick, worker,
//! sequence)`, which grows with it, so every ID issued is above every ID issued before it. A
//! lease reads the position and the clock, computes the run it may take with the pure
//! [`plan`] function, and claims it with one compare-and-swap; a lost race retries with the
//! position the winner left. Claiming the last sequence of a tick leaves the position at
//! `(tick + 1, 0)`, so "tick full" needs no separate state.
//!
//! Time flows in through a [`Clock`]. The generator may run up to `max_lead` ticks ahead of
//! it when demand exceeds one tick's worth. Past that, a caller may still *claim* a run up to
//! `horizon` further ticks ahead, but must hold it until the clock is within `max_lead` of
//! its tick ([`Lease::hold_until_unix_ms`]): claims are granted in arrival order, so callers
//! waiting for time are served first come, first served instead of racing for each new tick.
//! Past the horizon, and past the durable limit that the persistence task raises (see
//! `persist`), it refuses with [`Refusal`] saying when to retry, so the async caller waits
//! without spinning and without holding anything. With a claim limit
//! ([`Generator::with_claim_limit`]) only small leases may claim: large ones wait for time in
//! a first-come queue (see `lease`) instead of queueing whole ticks in front of everybody, which
//! is what keeps a count=1 lease fast while hundreds of connections drain whole ticks.
//!
//! A bulk lease ([`Generator::lease_run`]) takes every position from the current one up to
//! `max_lead` ticks ahead of the clock (and the durable limit) in one compare-and-swap: a run
//! of consecutive positions that may span many ticks, never a claim.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use snowlease_proto::Layout;

pub use crate::clock::{Clock, MonotonicClock, CLOCK_STEP_THRESHOLD_MS};

/// A contiguous run of IDs: `first_id .. first_id + count`, all in one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// First ID of the run.
    pub first_id: u64,
    /// How many IDs, at least 1.
    pub count: u32,
    /// The tick (ms since epoch) all of them carry.
    pub tick: u64,
    /// For a claim beyond `max_lead`: the clock reading (Unix ms) before which it must not be
    /// handed out. Worked out from the clock reading the lease already made.
    pub hold_until_unix_ms: Option<u64>,
}

/// Why a lease was not granted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The generator is `max_lead` ticks ahead of the clock; the next tick opens when the
    /// clock reads `until_unix_ms`.
    Lead {
        /// Clock reading at which to try again.
        until_unix_ms: u64,
    },
    /// The next tick is not yet covered by the durable reservation; the persistence task
    /// will raise it.
    NotDurable,
    /// The timestamp field is used up: this layout can issue no more IDs.
    Exhausted,
}

/// Why a generator could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorError {
    /// The worker id does not fit the layout's worker field.
    #[error("worker id {worker} does not fit in {bits} worker bits (valid: 0..={max})")]
    WorkerOutOfRange {
        /// Worker id given.
        worker: u64,
        /// Worker field width.
        bits: u8,
        /// Highest valid worker id.
        max: u16,
    },
}

/// Static settings the generator's arithmetic needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Width of the sequence field.
    pub sequence_bits: u8,
    /// IDs per tick.
    pub max_lease: u32,
    /// Highest tick the layout can carry.
    pub max_tick: u64,
    /// How many ticks ahead of the clock an ID may be handed out.
    pub max_lead: u64,
    /// How many ticks beyond `max_lead` a run may be claimed, to be held until its release.
    pub horizon: u64,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The position to store if the CAS wins.
    pub next: u64,
    /// Tick of the run.
    pub tick: u64,
    /// First sequence of the run.
    pub sequence: u32,
    /// IDs in the run.
    pub count: u32,
}

/// The pure step of a lease: from the current position, the clock's tick and the durable limit
/// (first tick *not* yet reserved), which run to claim. Separate from the atomics so the
/// exhaustive interleaving test can drive it. Works in ticks: a `Lead` refusal's time is a
/// tick here, and [`Generator::lease`] turns it into Unix ms.
pub fn plan(
    p: &Params,
    current: u64,
    now_tick: u64,
    durable_limit: u64,
    n: u32,
) -> Result<Plan, Refusal> {
    let mask = u64::from(p.max_lease) - 1;
    let (mut tick, mut sequence) = (current >> p.sequence_bits, (current & mask) as u32);
    if tick < now_tick {
        tick = now_tick;
        sequence = 0;
    }
    if tick > p.max_tick {
        return Err(Refusal::Exhausted);
    }
    if tick
        > now_tick
            .saturating_add(p.max_lead)
            .saturating_add(p.horizon)
    {
        return Err(Refusal::Lead {
            until_unix_ms: tick - p.max_lead - p.horizon,
        });
    }
    if tick >= durable_limit {
        return Err(Refusal::NotDurable);
    }
    let count = n.clamp(1, p.max_lease - sequence);
    let next = (tick << p.sequence_bits) + u64::from(sequence) + u64::from(count);
    Ok(Plan {
        next,
        tick,
        sequence,
        count,
    })
}

/// What [`Generator::lease_run`] took: `count` IDs at consecutive positions from `first_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLease {
    /// First ID of the run.
    pub first_id: u64,
    /// IDs in the run, at least 1.
    pub count: u32,
    /// Tick of the first ID.
    pub first_tick: u64,
    /// Tick of the last ID.
    pub last_tick: u64,
}

/// What [`plan_run`] decided: claim positions `start .. next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPlan {
    /// First position of the run.
    pub start: u64,
    /// The position to store if the CAS wins (one past the run).
    pub next: u64,
}

/// The pure step of a bulk lease: from the current position, the clock's tick and the durable
/// limit, the longest run of at most `max` positions that stays within `max_lead` of the
/// clock, below the durable limit and inside the layout. Refuses like [`plan`], but never
/// claims beyond `max_lead`.
pub fn plan_run(
    p: &Params,
    current: u64,
    now_tick: u64,
    durable_limit: u64,
    max: u32,
) -> Result<RunPlan, Refusal> {
    let sb = p.sequence_bits;
    let start = current.max(now_tick.saturating_mul(u64::from(p.max_lease)));
    let tick = start >> sb;
    if tick > p.max_tick {
        return Err(Refusal::Exhausted);
    }
    let frontier = now_tick.saturating_add(p.max_lead);
    if tick > frontier {
        return Err(Refusal::Lead {
            until_unix_ms: tick - p.max_lead,
        });
    }
    if tick >= durable_limit {
        return Err(Refusal::NotDurable);
    }
    let end_tick = frontier.min(durable_limit - 1).min(p.max_tick);
    let end = (end_tick + 1) << sb;
    let next = end.min(start + u64::from(max.max(1)));
    Ok(RunPlan { start, next })
}

/// Hands out runs of IDs to any number of threads. See the module docs.
#[derive(Debug)]
pub struct Generator<C> {
    position: CachePadded<AtomicU64>,
    /// First tick not yet durably reserved; `u64::MAX` without persistence. Written rarely.
    durable_limit: CachePadded<AtomicU64>,
    /// Ticks started ahead of the clock, and the highest tick a lease found not yet durable
    /// (what the persister must reserve next); each touched at most once per tick.
    borrowed: CachePadded<AtomicU64>,
    demand: AtomicU64,
    /// The position the generator started at: anything above it was issued by this process.
    start_position: u64,
    layout: Layout,
    worker: u16,
    params: Params,
    /// Leases above this count may not claim beyond `max_lead`.
    claim_limit: u32,
    clock: C,
}

impl<C: Clock> Generator<C> {
    /// Builds a generator whose first tick is at least `start_tick` (the persisted high-water
    /// mark after a restart; 0 without one).
    pub fn new(
        layout: Layout,
        worker: u64,
        max_lead_ms: u64,
        start_tick: u64,
        clock: C,
    ) -> Result<Self, GeneratorError> {
        let max = layout.max_worker();
        if worker > u64::from(max) {
            return Err(GeneratorError::WorkerOutOfRange {
                worker,
                bits: layout.worker_bits(),
                max,
            });
        }
        let params = Params {
            sequence_bits: layout.sequence_bits(),
            max_lease: layout.max_lease(),
            max_tick: layout.max_tick(),
            max_lead: max_lead_ms,
            horizon: 0,
        };
        let start = start_tick.min(params.max_tick + 1) << params.sequence_bits;
        Ok(Generator {
            position: CachePadded::new(AtomicU64::new(start)),
            durable_limit: CachePadded::new(AtomicU64::new(u64::MAX)),
            borrowed: CachePadded::new(AtomicU64::new(0)),
            demand: AtomicU64::new(0),
            start_position: start,
            layout,
            worker: worker as u16,
            claim_limit: u32::MAX,
            params,
            clock,
        })
    }

    /// Only leases of at most `count` IDs may claim beyond `max_lead` (see the module docs);
    /// larger ones are refused with [`Refusal::Lead`] instead. Without it every size may claim.
    pub fn with_claim_limit(mut self, count: u32) -> Self {
        self.claim_limit = count;
        self
    }

    /// Whether a lease of `n` may claim beyond `max_lead`.
    pub fn may_claim(&self, n: u32) -> bool {
        n <= self.claim_limit
    }

    /// Lets callers claim runs up to `ticks` beyond `max_lead`, to be held until the lease's
    /// `hold_until_unix_ms`. 0 (the default) refuses instead.
    pub fn with_horizon(mut self, ticks: u64) -> Self {
        self.params.horizon = ticks;
        self
    }

    /// Claims up to `n` consecutive IDs (at least 1; never more than is left of the tick).
    /// `n` outside `1..=max_lease` is clamped; callers validate counts from the wire first.
    pub fn lease(&self, n: u32) -> Result<Lease, Refusal> {
        let now_tick = self.now_tick();
        let limit = self.durable_limit.load(Ordering::Acquire);
        let mut current = self.position.load(Ordering::Acquire);
        let mut params = self.params;
        if !self.may_claim(n) {
            params.horizon = 0;
        }
        loop {
            let plan = plan(&params, current, now_tick, limit, n).map_err(|r| self.refusal(r))?;
            match self.position.compare_exchange_weak(
                current,
                plan.next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if plan.sequence == 0 && plan.tick > now_tick {
                        self.borrowed.fetch_add(1, Ordering::Relaxed);
                    }
                    let hold = plan
                        .tick
                        .checked_sub(self.params.max_lead)
                        .filter(|earliest| *earliest > now_tick)
                        .map(|earliest| earliest + self.layout.epoch_unix_ms());
                    return Ok(Lease {
                        first_id: self.layout.compose(plan.tick, self.worker, plan.sequence),
                        count: plan.count,
                        tick: plan.tick,
                        hold_until_unix_ms: hold,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes up to `max` IDs at consecutive positions in one step: from the current position
    /// to `max_lead` ticks ahead of the clock, the durable limit or the layout's end, whichever
    /// comes first. Never claims beyond `max_lead`.
    pub fn lease_run(&self, max: u32) -> Result<RunLease, Refusal> {
        let now_tick = self.now_tick();
        let limit = self.durable_limit.load(Ordering::Acquire);
        let mut current = self.position.load(Ordering::Acquire);
        loop {
            let run = plan_run(&self.params, current, now_tick, limit, max)
                .map_err(|r| self.refusal(r))?;
            match self.position.compare_exchange_weak(
                current,
                run.next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let sb = self.params.sequence_bits;
                    let first_tick = run.start >> sb;
                    let last_tick = (run.next - 1) >> sb;
                    // Ticks this run started ahead of the clock (each once: a tick is started
                    // by the lease that takes its sequence 0).
                    let first_new = first_tick + u64::from(run.start & self.mask() != 0);
                    let borrowed = (first_new.max(now_tick + 1)..=last_tick).count() as u64;
                    if borrowed > 0 {
                        self.borrowed.fetch_add(borrowed, Ordering::Relaxed);
                    }
                    return Ok(RunLease {
                        first_id: self.layout.compose(
                            first_tick,
                            self.worker,
                            (run.start & self.mask()) as u32,
                        ),
                        count: (run.next - run.start) as u32,
                        first_tick,
                        last_tick,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn mask(&self) -> u64 {
        u64::from(self.params.max_lease) - 1
    }

    /// A refusal from the pure planner, in Unix ms, noting the demand a durability refusal
    /// reveals so the persister reserves what leases are waiting for.
    fn refusal(&self, r: Refusal) -> Refusal {
        match r {
            Refusal::Lead {
                until_unix_ms: tick,
            } => Refusal::Lead {
                until_unix_ms: tick + self.layout.epoch_unix_ms(),
            },
            Refusal::NotDurable => {
                let wanted = self.next_tick().max(self.now_tick());
                self.demand.fetch_max(wanted, Ordering::AcqRel);
                Refusal::NotDurable
            }
            other => other,
        }
    }

    /// Whether this generator issued anything since it was built.
    pub fn issued_any(&self) -> bool {
        self.position.load(Ordering::Acquire) != self.start_position
    }

    /// The highest tick a lease found not yet durable (0 if none ever did).
    pub fn demand_tick(&self) -> u64 {
        self.demand.load(Ordering::Acquire)
    }

    /// The clock's current tick (0 before the epoch).
    pub fn now_tick(&self) -> u64 {
        self.clock
            .now_unix_ms()
            .saturating_sub(self.layout.epoch_unix_ms())
    }

    /// The tick the next lease would carry at the earliest: the high-water mark to persist.
    pub fn next_tick(&self) -> u64 {
        self.position.load(Ordering::Acquire) >> self.params.sequence_bits
    }

    /// The first tick no ID has been or can be issued from: the next tick, or the one after
    /// if the next is partly used. What a drained server persists as its mark.
    pub fn first_unused_tick(&self) -> u64 {
        let pos = self.position.load(Ordering::Acquire);
        let mask = u64::from(self.params.max_lease) - 1;
        (pos >> self.params.sequence_bits) + u64::from(pos & mask != 0)
    }

    /// How far the last issued tick is ahead of the clock, in ms (0 when not ahead).
    pub fn lead_ms(&self) -> u64 {
        let pos = self.position.load(Ordering::Acquire);
        // A position at sequence 0 has not issued from its tick yet.
        let last_tick = pos.saturating_sub(1) >> self.params.sequence_bits;
        last_tick.saturating_sub(self.now_tick())
    }

    /// Ticks started ahead of the clock since start.
    pub fn borrowed_ticks(&self) -> u64 {
        self.borrowed.load(Ordering::Relaxed)
    }

    /// Raises the first tick not yet durably reserved. Never lowers it.
    pub fn set_durable_limit(&self, tick: u64) {
        self.durable_limit.fetch_max(tick, Ordering::AcqRel);
    }

    /// Turns the durable limit on at `tick` (from "no persistence" = `u64::MAX`).
    pub fn init_durable_limit(&self, tick: u64) {
        self.durable_limit.store(tick, Ordering::Release);
    }

    /// The first tick not yet durably reserved.
    pub fn durable_limit(&self) -> u64 {
        self.durable_limit.load(Ordering::Acquire)
    }

    /// The layout IDs are composed with.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// This generator's worker id.
    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// The clock it reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The lead limit in ticks.
    pub fn max_lead(&self) -> u64 {
        self.params.max_lead
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicI64;
    use std::sync::Arc;

    use snowlease_proto::layout::unix_ms_now;

    use proptest::prelude::*;

    use super::*;

    /// A clock the test sets by hand; may go backwards.
    #[derive(Debug, Default)]
    struct ManualClock(AtomicI64);

    impl ManualClock {
        fn at(ms: u64) -> Arc<Self> {
            Arc::new(ManualClock(AtomicI64::new(ms as i64)))
        }
        fn set(&self, ms: u64) {
            self.0.store(ms as i64, Ordering::SeqCst);
        }
        fn advance(&self, by: i64) {
            self.0.fetch_add(by, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_unix_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst) as u64
        }
    }

    const T0: u64 = snowlease_proto::layout::DEFAULT_EPOCH_UNIX_MS + 1_000_000;

    fn generator(clock: &Arc<ManualClock>, max_lead: u64) -> Generator<Arc<ManualClock>> {
        Generator::new(Layout::DEFAULT, 5, max_lead, 0, clock.clone()).unwrap()
    }

    #[test]
    fn a_lease_never_crosses_a_tick_and_never_exceeds_the_ask() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 0);
        let a = g.lease(4000).unwrap();
        assert_eq!(a.count, 4000);
        let b = g.lease(4000).unwrap();
        assert_eq!(b.count, 96, "only what is left of the tick");
        assert_eq!(b.first_id, a.first_id + 4000);
        assert_eq!(
            g.lease(1),
            Err(Refusal::Lead {
                until_unix_ms: T0 + 1
            })
        );
        clock.advance(1);
        let c = g.lease(1).unwrap();
        assert_eq!(Layout::DEFAULT.decompose(c.first_id).sequence, 0);
        assert_eq!(Layout::DEFAULT.decompose(c.first_id).worker, 5);
    }

    #[test]
    fn the_generator_borrows_up_to_max_lead_ticks_then_waits() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 3);
        for _ in 0..4 {
            assert_eq!(g.lease(4096).unwrap().count, 4096);
        }
        assert_eq!(g.lead_ms(), 3);
        assert_eq!(g.borrowed_ticks(), 3);
        assert_eq!(
            g.lease(1),
            Err(Refusal::Lead {
                until_unix_ms: T0 + 1
            })
        );
        clock.advance(1);
        assert!(g.lease(4096).is_ok());
    }

    #[test]
    fn claims_beyond_the_lead_are_granted_in_order_and_held_until_released() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 2).with_horizon(3);
        let runs: Vec<Lease> = (0..6).map(|_| g.lease(4096).unwrap()).collect();
        assert!(runs.windows(2).all(|w| w[1].tick == w[0].tick + 1));
        // Ticks now..=now+2 go out at once; the next three are claims held for later.
        assert_eq!(
            runs.iter()
                .filter(|l| l.hold_until_unix_ms.is_none())
                .count(),
            3
        );
        assert_eq!(runs[3].hold_until_unix_ms, Some(T0 + 1));
        assert_eq!(runs[5].hold_until_unix_ms, Some(T0 + 3));
        assert_eq!(
            g.lease(1),
            Err(Refusal::Lead {
                until_unix_ms: T0 + 1
            })
        );
    }

    #[test]
    fn a_clock_started_ahead_of_the_wall_counts_no_step_and_never_goes_back() {
        let ahead = unix_ms_now() + 10_000;
        let clock = MonotonicClock::at_least(ahead);
        assert!(clock.now_unix_ms() >= ahead);
        for _ in 0..3 {
            assert!(clock.resync() < -9_000);
        }
        assert_eq!(clock.steps(), (0, 0));
        assert!(clock.now_unix_ms() >= ahead);
    }

    #[test]
    fn a_clock_stepped_back_never_repeats_an_id() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 100);
        let before = g.lease(10).unwrap();
        clock.advance(-5_000);
        // 5 s behind is beyond the 100 ms lead: the generator waits for the clock.
        assert_eq!(
            g.lease(10),
            Err(Refusal::Lead {
                until_unix_ms: T0 - 100
            })
        );
        clock.advance(4_900);
        let after = g.lease(10).unwrap();
        assert!(after.first_id >= before.first_id + 10);
        assert_eq!(after.tick, before.tick);
    }

    #[test]
    fn a_clock_jumping_forward_moves_ticks_forward() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 100);
        let a = g.lease(1).unwrap();
        clock.advance(60_000);
        let b = g.lease(1).unwrap();
        assert_eq!(b.tick, a.tick + 60_000);
    }

    #[test]
    fn a_frozen_clock_issues_max_lead_ticks_then_only_waits() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 10);
        let mut seen = 0u64;
        while let Ok(l) = g.lease(4096) {
            seen += u64::from(l.count);
        }
        assert_eq!(seen, 11 * 4096);
        assert!(matches!(g.lease(1), Err(Refusal::Lead { .. })));
    }

    #[test]
    fn the_durable_limit_holds_the_generator_back() {
        let clock = ManualClock::at(T0);
        let g = generator(&clock, 100);
        let now_tick = g.now_tick();
        g.init_durable_limit(now_tick + 1);
        assert_eq!(g.lease(4096).unwrap().count, 4096);
        assert_eq!(g.lease(1), Err(Refusal::NotDurable));
        g.set_durable_limit(now_tick + 2);
        assert!(g.lease(1).is_ok());
    }

    #[test]
    fn a_start_tick_ahead_of_the_clock_is_honoured() {
        let clock = ManualClock::at(T0);
        let now_tick = T0 - Layout::DEFAULT.epoch_unix_ms();
        let g = Generator::new(Layout::DEFAULT, 1, 100_000, now_tick + 10_000, clock).unwrap();
        assert_eq!(g.lease(1).unwrap().tick, now_tick + 10_000);
    }

    #[test]
    fn worker_ids_beyond_the_layout_are_refused() {
        let err = Generator::new(Layout::DEFAULT, 1024, 0, 0, ManualClock::at(T0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "worker id 1024 does not fit in 10 worker bits (valid: 0..=1023)"
        );
    }

    #[test]
    fn an_exhausted_layout_refuses_instead_of_wrapping() {
        let layout = Layout::widths(0, 16, 16, 31).unwrap();
        let clock = ManualClock::at(65_535);
        let g = Generator::new(layout, 0, 100, 0, clock.clone()).unwrap();
        assert_eq!(g.lease(u32::MAX).unwrap().tick, 65_535);
        assert_eq!(g.lease(1), Err(Refusal::Exhausted));
        clock.set(70_000);
        assert_eq!(g.lease(1), Err(Refusal::Exhausted));
    }

    /// Many threads, random sizes, a clock that moves forward, back and freezes: every run is
    /// disjoint from every other and each thread's runs strictly increase.
    fn stress(threads: usize, leases_per_thread: usize) {
        let clock = ManualClock::at(T0);
        let g = Arc::new(generator(&clock, 50));
        let mut handles = Vec::new();
        for t in 0..threads {
            let g = g.clone();
            let clock = clock.clone();
            handles.push(std::thread::spawn(move || {
                let mut rng = fastrand_like(t as u64 + 1);
                let mut runs = Vec::with_capacity(leases_per_thread);
                let mut last_end = 0u64;
                while runs.len() < leases_per_thread {
                    let n = (rng() % 4096) as u32 + 1;
                    match g.lease(n) {
                        Ok(l) => {
                            assert!(l.first_id >= last_end, "thread {t} went backwards");
                            assert!(l.count >= 1 && l.count <= n);
                            last_end = l.first_id + u64::from(l.count);
                            runs.push((l.first_id, l.count));
                        }
                        Err(Refusal::Lead { .. }) => {
                            // A refused thread moves the clock: mostly forward a tick, now
                            // and then back 3 s, sometimes not at all (frozen).
                            let r = rng() % 10_000;
                            clock.advance(match r {
                                0 => -3_000,
                                1..=8_999 => 1,
                                _ => 0,
                            });
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
                runs
            }));
        }
        let mut all: Vec<(u64, u32)> = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap());
        }
        all.sort_unstable();
        for w in all.windows(2) {
            assert!(
                w[0].0 + u64::from(w[0].1) <= w[1].0,
                "overlap: {:?} {:?}",
                w[0],
                w[1]
            );
        }
    }

    fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    #[test]
    fn two_threads_of_a_million_leases_are_disjoint_and_increasing() {
        stress(2, 1_000_000);
    }

    #[test]
    fn four_threads_of_a_million_leases_are_disjoint_and_increasing() {
        stress(4, 1_000_000);
    }

    /// Exhaustive interleavings of the load / plan / CAS step, standing in for loom: every
    /// schedule of `threads` threads, each taking `leases` leases while the clock may tick
    /// between any two steps. Checks no two runs overlap in any schedule.
    #[test]
    fn every_interleaving_of_the_cas_step_is_disjoint() {
        let p = Params {
            sequence_bits: 2,
            max_lease: 4,
            max_tick: 1_000,
            max_lead: 1,
            horizon: 1,
        };
        #[derive(Clone)]
        struct Thread {
            loaded: Option<u64>,
            left: u32,
            want: u32,
            blocked: bool,
        }
        #[derive(Clone)]
        struct World {
            pos: u64,
            now: u64,
            clock_steps: u32,
            threads: Vec<Thread>,
            issued: Vec<(u64, u32)>,
        }
        fn explore(p: &Params, w: World, schedules: &mut u64) {
            let mut moved = false;
            for i in 0..w.threads.len() {
                let t = &w.threads[i];
                if t.left == 0 || t.blocked {
                    continue;
                }
                moved = true;
                let mut next = w.clone();
                match t.loaded {
                    None => next.threads[i].loaded = Some(w.pos),
                    Some(seen) => {
                        let th = &mut next.threads[i];
                        match plan(p, seen, w.now, u64::MAX, th.want) {
                            Ok(pl) if next.pos == seen => {
                                next.pos = pl.next;
                                next.issued
                                    .push(((pl.tick << 2) + u64::from(pl.sequence), pl.count));
                                th.left -= 1;
                                th.loaded = None;
                            }
                            // CAS lost: retry with what is there now.
                            Ok(_) => th.loaded = Some(next.pos),
                            // Refused: the thread waits for the clock to move, or gives up
                            // if it never will.
                            Err(_) => {
                                th.loaded = None;
                                th.blocked = true;
                                if w.clock_steps == 0 {
                                    th.left = 0;
                                }
                            }
                        }
                    }
                }
                explore(p, next, schedules);
            }
            if w.clock_steps > 0 {
                let mut next = w.clone();
                next.clock_steps -= 1;
                next.now += 1;
                for t in &mut next.threads {
                    t.blocked = false;
                }
                explore(p, next, schedules);
                moved = true;
            }
            if !moved {
                *schedules += 1;
                let mut runs = w.issued.clone();
                runs.sort_unstable();
                for pair in runs.windows(2) {
                    assert!(pair[0].0 + u64::from(pair[0].1) <= pair[1].0, "{runs:?}");
                }
            }
        }
        let world = World {
            pos: 0,
            now: 0,
            clock_steps: 3,
            threads: vec![
                Thread {
                    loaded: None,
                    left: 2,
                    want: 3,
                    blocked: false,
                },
                Thread {
                    loaded: None,
                    left: 2,
                    want: 2,
                    blocked: false,
                },
                Thread {
                    loaded: None,
                    left: 1,
                    want: 4,
                    blocked: false,
                },
            ],
            issued: Vec::new(),
        };
        let mut schedules = 0;
        explore(&p, world, &mut schedules);
        assert!(schedules > 10_000, "explored {schedules}");
    }

    proptest! {
        #[test]
        fn leases_strictly_increase_whatever_the_clock_does(
            steps in proptest::collection::vec((1u32..=4096, -2_000i64..2_000), 1..200),
            max_lead in 0u64..20,
        ) {
            let clock = ManualClock::at(T0);
            let g = generator(&clock, max_lead);
            let mut seen: HashSet<u64> = HashSet::new();
            let mut last_end = 0;
            for (n, dt) in steps {
                clock.advance(dt);
                if let Ok(l) = g.lease(n) {
                    prop_assert!(l.first_id >= last_end);
                    prop_assert!(l.count >= 1 && l.count <= n);
                    prop_assert!(l.tick <= g.now_tick() + max_lead);
                    last_end = l.first_id + u64::from(l.count);
                    prop_assert!(seen.insert(l.first_id));
                }
            }
        }
    }
}
