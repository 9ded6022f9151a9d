//! One home for leasing with waits and deadlines: the lease port and `/generate-id` both call
//! [`Leaser::lease`] (and the lease port [`Leaser::bulk`]), so they wait for time and for the
//! disk the same way, under the same deadline.
//!
//! A request flows in with a worker (the connection's home worker) and a count, and goes to
//! that worker's [`Generator`]. What the generator refuses turns into a wait here:
//!
//! - **Lead** (the worker is `max_lead` ticks ahead of the clock): a small lease claims a tick
//!   beyond the lead and sleeps until it may be handed out; a large one joins the worker's
//!   first-come queue, where only the head sleeps on the timer and takes the next tick that
//!   opens. Large leases thus share the ceiling in arrival order without a thundering herd,
//!   and never queue whole ticks in front of a count=1 lease.
//! - **Not durable** (the state directory has not reserved the tick yet): wake the persister
//!   and wait for it to raise the limit, polling, until `--durable-timeout-ms` after the first
//!   refusal; then [`LeaseError::NotDurable`] (UNAVAILABLE on the wire, 503 over HTTP).
//! - **Exhausted**: [`LeaseError::Exhausted`] at once.
//!
//! A bulk lease that finds every worker at its frontier waits in its home worker's queue like
//! a large lease, but for several milliseconds to open rather than one ([`BULK_GATHER_SHARE`]
//! of the lead): at the ceiling it then carries many milliseconds per reply instead of one,
//! which is what makes bulk leases cheap for the server. It never gathers past the lead, so no
//! millisecond falls behind the clock unissued.
//!
//! The queue is first come, first served in both directions: a large or bulk lease that
//! arrives while others wait for (or hold) the turn of its worker joins the queue instead of
//! taking what just opened for them, and the head keeps its turn until it has taken
//! something. Without both, at the ceiling a newcomer took the ticks the head had slept for,
//! the head went back to the end of the queue, and a bulk lease could wait for seconds
//! (measured before the change: 500 connections of BULK_LEASE 16,384 on one worker, max wait
//! 6.4 s, some past the bench's 5 s timeout, while 500 LEASEs of 4,096 waited at most 0.57 s).
//!
//! Before every wait the caller's [`Waits::before_wait`] runs: the lease port flushes the
//! replies it has encoded, so a waiting lease never holds back earlier replies, and both
//! callers count the wait in their metrics.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use snowlease_proto::wire::MAX_RUNS;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use crate::clock::{Clock, MonotonicClock};
use crate::generator::{Generator, Lease, Refusal, RunLease};
use crate::metrics::Wait;

/// Longest wait on the durable reservation between two looks at the generator; the
/// persister notifies much sooner when the disk is healthy. A guess, and harmless: it only
/// bounds how late a waiting lease notices a raise whose notification it missed, and a
/// waiting lease costs one timer per 50 ms.
const DURABLE_POLL: Duration = Duration::from_millis(50);

/// A bulk lease that has to wait gathers up to `max_lead / 4` milliseconds (25 with the
/// default lead) before it takes what opened. Measured at the ceiling of one worker pinned to
/// one core: see bench/BENCHMARKS.md, row 9 (server CPU per million IDs, version 1 against bulk
/// leases). A quarter of the lead keeps three quarters of it for bursts.
pub const BULK_GATHER_SHARE: u64 = 4;

/// The queue in front of one worker: large and bulk leases waiting for time take turns, first
/// come first served (tokio's mutex wakes waiters in order), and `waiting` counts those that
/// wait for or hold the turn, so a newcomer knows to queue rather than take.
#[derive(Debug, Default)]
struct Queue {
    turn: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

impl Queue {
    /// Whether any lease waits for or holds this worker's turn.
    fn busy(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Waits for the turn; counted as waiting from the call until the turn is dropped (also
    /// when the caller is cancelled, the connection gone).
    async fn turn(&self) -> Turn<'_> {
        let counted = Counted::enter(&self.waiting);
        let guard = self.turn.lock().await;
        Turn {
            _guard: guard,
            _counted: counted,
        }
    }
}

/// One lease's turn at its worker; dropping it lets the next one in.
struct Turn<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    _counted: Counted<'a>,
}

/// Counts one waiter for as long as it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn enter(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A clock that can also say when, in timer terms, it will read a given time.
pub trait Timer: Clock {
    /// The tokio instant at which this clock will read `unix_ms`.
    fn wake_at(&self, unix_ms: u64) -> Instant;
}

impl Timer for MonotonicClock {
    fn wake_at(&self, unix_ms: u64) -> Instant {
        Instant::from_std(self.instant_at(unix_ms))
    }
}

impl<T: Timer> Timer for Arc<T> {
    fn wake_at(&self, unix_ms: u64) -> Instant {
        (**self).wake_at(unix_ms)
    }
}

/// What the caller does before the leaser waits.
pub trait Waits {
    /// Runs before each wait, with what is waited for.
    fn before_wait(&mut self, why: Wait) -> impl Future<Output = io::Result<()>>;
}

/// Waits that only count nothing: for callers without replies to flush.
#[derive(Debug, Default)]
pub struct NoFlush;

impl Waits for NoFlush {
    async fn before_wait(&mut self, _why: Wait) -> io::Result<()> {
        Ok(())
    }
}

/// Why a lease was not granted.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The state directory did not take a write within the deadline.
    #[error("the state directory cannot be written; no ID can be made durable")]
    NotDurable,
    /// The layout's timestamp field is used up.
    #[error("the layout's timestamp field ran out at {end_of_life}")]
    Exhausted {
        /// The layout's end of life, RFC 3339.
        end_of_life: String,
    },
    /// The caller's flush before a wait failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The meeting point of leases waiting for the disk and the persistence thread.
#[derive(Debug, Default)]
pub struct Durability {
    raised: Notify,
    persister: OnceLock<Thread>,
    wakes: AtomicU64,
}

impl Durability {
    /// Names the persistence thread, so waiting leases can wake it.
    pub fn set_persister(&self, thread: Thread) {
        let _ = self.persister.set(thread);
    }

    /// Asks the persistence thread to extend the reservation now.
    pub fn wake_persister(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.persister.get() {
            t.unpark();
        }
    }

    /// Called by the persister after it raised durable limits.
    pub fn raised(&self) {
        self.raised.notify_waiters();
    }

    /// How often leases asked the persister for more.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }
}

/// The wait for the disk: one deadline from the first refusal on.
struct DurableWait<'a> {
    durability: &'a Durability,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl DurableWait<'_> {
    async fn wait(&mut self, waits: &mut impl Waits) -> Result<(), LeaseError> {
        waits.before_wait(Wait::Durable).await?;
        let now = Instant::now();
        let deadline = *self.deadline.get_or_insert(now + self.timeout);
        if now >= deadline {
            return Err(LeaseError::NotDurable);
        }
        let notified = self.durability.raised.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.durability.wake_persister();
        let _ = tokio::time::timeout_at(deadline.min(now + DURABLE_POLL), notified).await;
        Ok(())
    }
}

/// The process's workers and the queues in front of them. See the module docs.
#[derive(Debug)]
pub struct Leaser<C> {
    workers: Vec<Generator<C>>,
    /// One per worker: large and bulk leases waiting for time, first come first served.
    queues: Vec<Queue>,
    clock: C,
    durability: Arc<Durability>,
    durable_timeout: Duration,
    next_home: AtomicUsize,
}

impl<C: Timer + Clone> Leaser<C> {
    /// Leases from `workers` (at least one), timing waits with `clock`.
    pub fn new(
        workers: Vec<Generator<C>>,
        clock: C,
        durability: Arc<Durability>,
        durable_timeout: Duration,
    ) -> Leaser<C> {
        let queues = workers.iter().map(|_| Queue::default()).collect();
        Leaser {
            workers,
            queues,
            clock,
            durability,
            durable_timeout,
            next_home: AtomicUsize::new(0),
        }
    }

    /// The workers, in worker id order.
    pub fn workers(&self) -> &[Generator<C>] {
        &self.workers
    }

    /// The first worker (every process has one).
    pub fn first(&self) -> &Generator<C> {
        &self.workers[0]
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The persister meeting point.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// The home worker for a new connection: round robin, so connections that lease one
    /// worker each spread over all of them.
    pub fn assign_home(&self) -> usize {
        self.next_home.fetch_add(1, Ordering::Relaxed) % self.workers.len()
    }

    fn durable_wait(&self) -> DurableWait<'_> {
        DurableWait {
            durability: &self.durability,
            timeout: self.durable_timeout,
            deadline: None,
        }
    }

    fn exhausted(&self) -> LeaseError {
        let eol = self.first().layout().end_of_life_unix_ms();
        LeaseError::Exhausted {
            end_of_life: snowlease_proto::layout::format_unix_ms(eol),
        }
    }

    /// Up to `n` IDs (1..=max_lease) from worker `w`, all in one tick, waiting for time or
    /// the disk as the module docs say.
    pub async fn lease(
        &self,
        w: usize,
        n: u32,
        waits: &mut impl Waits,
    ) -> Result<Lease, LeaseError> {
        let g = &self.workers[w];
        let mut durable = self.durable_wait();
        if !g.may_claim(n) && self.queues[w].busy() {
            return self.lease_in_turn(w, n, waits, durable).await;
        }
        loop {
            match g.lease(n) {
                Ok(lease) => {
                    if let Some(at) = lease.hold_until_unix_ms {
                        // A claim beyond the lead: earlier replies go now, this one at its time.
                        waits.before_wait(Wait::Lead).await?;
                        sleep_until(self.clock.wake_at(at)).await;
                    }
                    return Ok(lease);
                }
                Err(Refusal::Lead { until_unix_ms }) if g.may_claim(n) => {
                    waits.before_wait(Wait::Lead).await?;
                    sleep_until(self.clock.wake_at(until_unix_ms)).await;
                }
                Err(Refusal::Lead { .. }) => return self.lease_in_turn(w, n, waits, durable).await,
                Err(Refusal::NotDurable) => durable.wait(waits).await?,
                Err(Refusal::Exhausted) => return Err(self.exhausted()),
            }
        }
    }

    /// A large lease at the ceiling: wait in the worker's queue, then sleep until a tick
    /// opens and take it.
    async fn lease_in_turn(
        &self,
        w: usize,
        n: u32,
        waits: &mut impl Waits,
        mut durable: DurableWait<'_>,
    ) -> Result<Lease, LeaseError> {
        waits.before_wait(Wait::Lead).await?;
        let _turn = self.queues[w].turn().await;
        loop {
            match self.workers[w].lease(n) {
                Ok(lease) => return Ok(lease),
                Err(Refusal::Lead { until_unix_ms }) => {
                    waits.before_wait(Wait::Lead).await?;
                    sleep_until(self.clock.wake_at(until_unix_ms)).await;
                }
                Err(Refusal::NotDurable) => durable.wait(waits).await?,
                Err(Refusal::Exhausted) => return Err(self.exhausted()),
            }
        }
    }

    /// Up to `n` IDs in runs: from every worker, starting at `home`, whatever each holds
    /// within its lead now (at most [`MAX_RUNS`] runs). Waits only when no worker has
    /// anything, or when others already wait for `home`: then in `home`'s queue, gathering.
    /// Returns `(worker index, run)` pairs.
    pub async fn bulk(
        &self,
        home: usize,
        n: u32,
        waits: &mut impl Waits,
    ) -> Result<Vec<(usize, RunLease)>, LeaseError> {
        let mut durable = self.durable_wait();
        while !self.queues[home].busy() {
            let (runs, refusal) = self.take_runs(home, n);
            if !runs.is_empty() {
                return Ok(runs);
            }
            match refusal {
                Some(Refusal::Lead { .. }) => break,
                Some(Refusal::NotDurable) => durable.wait(waits).await?,
                Some(Refusal::Exhausted) | None => return Err(self.exhausted()),
            }
        }
        self.bulk_in_turn(home, n, waits, durable).await
    }

    /// A bulk lease at the ceiling: wait for `home`'s turn, then keep it, sleeping until
    /// [`gather_ticks`](Self::gather_ticks) milliseconds have opened, until something is taken.
    async fn bulk_in_turn(
        &self,
        home: usize,
        n: u32,
        waits: &mut impl Waits,
        mut durable: DurableWait<'_>,
    ) -> Result<Vec<(usize, RunLease)>, LeaseError> {
        waits.before_wait(Wait::Lead).await?;
        let _turn = self.queues[home].turn().await;
        let gather = self.gather_ticks(n);
        loop {
            let (runs, refusal) = self.take_runs(home, n);
            if !runs.is_empty() {
                return Ok(runs);
            }
            match refusal {
                Some(Refusal::Lead { until_unix_ms }) => {
                    waits.before_wait(Wait::Lead).await?;
                    let at = until_unix_ms + gather.saturating_sub(1);
                    sleep_until(self.clock.wake_at(at)).await;
                }
                Some(Refusal::NotDurable) => durable.wait(waits).await?,
                Some(Refusal::Exhausted) | None => return Err(self.exhausted()),
            }
        }
    }

    /// How many milliseconds a waiting bulk lease of `n` IDs lets open before it takes them:
    /// what `n` needs, at most [`BULK_GATHER_SHARE`] of the lead, at least one.
    fn gather_ticks(&self, n: u32) -> u64 {
        let g = self.first();
        let wanted = u64::from(n).div_ceil(u64::from(g.layout().max_lease()));
        wanted.min(g.max_lead() / BULK_GATHER_SHARE).max(1)
    }

    /// One pass over the workers from `home`: the runs taken, and the refusal to wait on if
    /// none was (the home worker's, else the first one met).
    fn take_runs(&self, home: usize, n: u32) -> (Vec<(usize, RunLease)>, Option<Refusal>) {
        let k = self.workers.len();
        let mut runs = Vec::new();
        let mut left = n;
        let mut refusal = None;
        for i in 0..k {
            if left == 0 || runs.len() == MAX_RUNS {
                break;
            }
            let w = (home + i) % k;
            match self.workers[w].lease_run(left) {
                Ok(run) => {
                    left -= run.count;
                    runs.push((w, run));
                }
                Err(r) => {
                    if refusal.is_none() || w == home {
                        refusal = Some(r);
                    }
                }
            }
        }
        (runs, refusal)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use snowlease_proto::Layout;

    use super::*;

    /// A clock that reads tokio's (paused, auto-advancing) time: sleeping moves it.
    #[derive(Debug)]
    struct ManualClock {
        base_unix_ms: u64,
        start: Instant,
        /// Extra ms added by the test (steps).
        shift: AtomicI64,
    }

    impl Clock for ManualClock {
        fn now_unix_ms(&self) -> u64 {
            let elapsed = self.start.elapsed().as_millis() as i64;
            (self.base_unix_ms as i64 + elapsed + self.shift.load(Ordering::SeqCst)) as u64
        }
    }

    impl Timer for ManualClock {
        fn wake_at(&self, unix_ms: u64) -> Instant {
            let shift = self.shift.load(Ordering::SeqCst);
            let offset = unix_ms as i64 - self.base_unix_ms as i64 - shift;
            self.start + Duration::from_millis(offset.max(0) as u64)
        }
    }

    const T0: u64 = snowlease_proto::layout::DEFAULT_EPOCH_UNIX_MS + 5_000_000;

    fn leaser(workers: u16, max_lead: u64) -> Arc<Leaser<Arc<ManualClock>>> {
        let clock = Arc::new(ManualClock {
            base_unix_ms: T0,
            start: Instant::now(),
            shift: AtomicI64::new(0),
        });
        let gens = (0..workers)
            .map(|w| {
                Generator::new(Layout::DEFAULT, u64::from(w), max_lead, 0, clock.clone())
                    .unwrap()
                    .with_horizon(1_000)
                    .with_claim_limit(64)
            })
            .collect();
        Arc::new(Leaser::new(
            gens,
            clock,
            Arc::new(Durability::default()),
            Duration::from_secs(2),
        ))
    }

    #[derive(Default)]
    struct Counted(Vec<Wait>);

    impl Waits for Counted {
        async fn before_wait(&mut self, why: Wait) -> io::Result<()> {
            self.0.push(why);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_past_the_lead_waits_for_the_next_tick_and_flushes_first() {
        let l = leaser(1, 0);
        let first = l.lease(0, 4096, &mut NoFlush).await.unwrap();
        let started = Instant::now();
        let mut waits = Counted::default();
        let second = l.lease(0, 4096, &mut waits).await.unwrap();
        assert_eq!(second.tick, first.tick + 1);
        assert!(started.elapsed() >= Duration::from_millis(1));
        assert_eq!(waits.0.first(), Some(&Wait::Lead));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_cannot_be_made_durable_fails_at_the_deadline() {
        let l = leaser(1, 100);
        l.first().init_durable_limit(0);
        let started = Instant::now();
        let err = l.lease(0, 1, &mut NoFlush).await.unwrap_err();
        assert!(matches!(err, LeaseError::NotDurable), "{err:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_100),
            "{waited:?}"
        );
        assert!(l.durability().wakes() > 0, "the persister was asked");
        assert!(
            l.first().demand_tick() >= T0 - Layout::DEFAULT.epoch_unix_ms(),
            "the wanted tick is known"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_durable_limit_raised_while_waiting_grants_the_lease() {
        let l = leaser(1, 100);
        l.first().init_durable_limit(0);
        let raiser = {
            let l = l.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                l.first().set_durable_limit(u64::MAX);
                l.durability().raised();
            })
        };
        let lease = l.lease(0, 7, &mut NoFlush).await.unwrap();
        assert_eq!(lease.count, 7);
        raiser.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn large_leases_at_the_ceiling_are_served_first_come_first_served() {
        let l = leaser(1, 0);
        l.lease(0, 4096, &mut NoFlush).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let lease = l.lease(0, 4096, &mut NoFlush).await.unwrap();
                order.lock().unwrap().push((i, lease.tick));
            }));
            // Let each task reach the queue before the next one starts.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let ticks: Vec<u64> = order.iter().map(|o| o.1).collect();
        assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{order:?}");
        assert_eq!(
            order.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_bulk_lease_queues_behind_one_gathering_instead_of_taking_its_ticks() {
        let l = leaser(1, 40);
        let first = l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap();
        let frontier = first.last().unwrap().1.last_tick;
        let head = {
            let l = l.clone();
            tokio::spawn(async move { l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap() })
        };
        tokio::task::yield_now().await;
        // Part of what the head gathers has opened; a newcomer arrives now.
        tokio::time::advance(Duration::from_millis(5)).await;
        let newcomer = {
            let l = l.clone();
            tokio::spawn(async move { l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap() })
        };
        let head = head.await.unwrap();
        let newcomer = newcomer.await.unwrap();
        assert_eq!(
            head[0].1.first_tick,
            frontier + 1,
            "the head got what opened first"
        );
        assert!(
            head.last().unwrap().1.last_tick >= frontier + 10,
            "{head:?}"
        );
        assert!(
            newcomer[0].1.first_tick > head.last().unwrap().1.last_tick,
            "{head:?} {newcomer:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bulk_leases_at_the_ceiling_are_served_first_come_first_served() {
        let l = leaser(1, 8);
        l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let runs = l.bulk(0, 3 * 4096, &mut NoFlush).await.unwrap();
                order.lock().unwrap().push((i, runs[0].1.first_tick));
            }));
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert!(order.windows(2).all(|w| w[1].1 > w[0].1), "{order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_lease_jumps_the_queue_of_large_ones_at_the_ceiling() {
        let l = leaser(1, 0);
        l.lease(0, 4096, &mut NoFlush).await.unwrap();
        let mut bigs = Vec::new();
        for _ in 0..50 {
            let l = l.clone();
            bigs.push(tokio::spawn(async move {
                l.lease(0, 4096, &mut NoFlush).await.unwrap()
            }));
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let small = l.lease(0, 1, &mut NoFlush).await.unwrap();
        assert!(
            started.elapsed() <= Duration::from_millis(2),
            "{:?}",
            started.elapsed()
        );
        let now_tick = T0 - Layout::DEFAULT.epoch_unix_ms() + started.elapsed().as_millis() as u64;
        assert!(
            small.tick <= now_tick + 2,
            "small tick {} vs now {now_tick}",
            small.tick
        );
        for b in bigs {
            b.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bulk_lease_takes_every_worker_up_to_the_lead_and_waits_when_none_has_any() {
        let l = leaser(3, 9);
        let runs = l.bulk(1, u32::MAX, &mut NoFlush).await.unwrap();
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        for (_, run) in &runs {
            assert_eq!(run.count, 10 * 4096, "ticks now..=now+9");
            assert_eq!(run.last_tick - run.first_tick, 9);
        }
        let started = Instant::now();
        let more = l.bulk(0, 4096, &mut NoFlush).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1));
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].1.count, 4096);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_bulk_lease_gathers_a_quarter_of_the_lead_then_takes_it_at_once() {
        let l = leaser(1, 40);
        l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap();
        let started = Instant::now();
        let more = l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(more.len(), 1);
        assert!(more[0].1.count >= 10 * 4096, "{} IDs", more[0].1.count);
        // Without a lead there is nothing to gather: the next tick, at once.
        let l = leaser(1, 0);
        l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap();
        let more = l.bulk(0, u32::MAX, &mut NoFlush).await.unwrap();
        assert_eq!(more[0].1.count, 4096);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_layout_is_an_error_at_once() {
        let layout = Layout::widths(0, 16, 16, 31).unwrap();
        let clock = Arc::new(ManualClock {
            base_unix_ms: 70_000,
            start: Instant::now(),
            shift: AtomicI64::new(0),
        });
        let g = Generator::new(layout, 0, 100, 0, clock.clone()).unwrap();
        let l = Leaser::new(vec![g], clock, Arc::default(), Duration::from_secs(2));
        let err = l.lease(0, 1, &mut NoFlush).await.unwrap_err();
        assert!(err.to_string().contains("ran out at"), "{err}");
        assert!(matches!(
            l.bulk(0, 10, &mut NoFlush).await.unwrap_err(),
            LeaseError::Exhausted { .. }
        ));
    }
}
