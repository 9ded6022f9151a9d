//! Criterion benches of the generator's hot path: `lease(1)` and `lease(4096)` from one and
//! from two threads, and `lease(1)` from two threads on two workers of one process (each its
//! own generator, one shared clock), which must cost about what one thread on one worker does.
//! The clock is the production `MonotonicClock` and `max_lead` is large so the bench measures
//! the CAS path, not waits for the next millisecond.

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_main, Criterion, Throughput};
use snowlease_proto::Layout;
use snowlease_server::generator::{Generator, MonotonicClock};

fn generator() -> Arc<Generator<MonotonicClock>> {
    // A lead without practical bound: the bench times grants, never waits for the clock.
    Arc::new(
        Generator::new(Layout::DEFAULT, 1, u64::MAX / 4, 0, MonotonicClock::new())
            .expect("worker 1 fits"),
    )
}

/// Two workers of one process: two generators reading one clock, as `shared::build_leaser`
/// builds them.
fn two_workers() -> [Arc<Generator<Arc<MonotonicClock>>>; 2] {
    let clock = Arc::new(MonotonicClock::new());
    [2u64, 3].map(|w| {
        Arc::new(
            Generator::new(Layout::DEFAULT, w, u64::MAX / 4, 0, clock.clone())
                .expect("workers 2 and 3 fit"),
        )
    })
}

fn workers(c: &mut Criterion) {
    let mut group = c.benchmark_group("workers");
    group.throughput(Throughput::Elements(1));
    let [a, _] = two_workers();
    group.bench_function("n=1/one thread on one worker", |b| {
        b.iter(|| std::hint::black_box(a.lease(1)))
    });
    let [a, other] = two_workers();
    group.bench_function("n=1/two threads on two workers", |b| {
        b.iter_custom(|iters| {
            let other = {
                let g = other.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        let _ = std::hint::black_box(g.lease(1));
                    }
                })
            };
            let start = Instant::now();
            for _ in 0..iters {
                let _ = std::hint::black_box(a.lease(1));
            }
            let elapsed = start.elapsed();
            let _ = other.join();
            elapsed
        })
    });
    group.finish();
}

fn lease(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease");
    group.throughput(Throughput::Elements(1));
    for n in [1u32, 4096] {
        let g = generator();
        group.bench_function(format!("n={n}/threads=1"), |b| {
            b.iter(|| std::hint::black_box(g.lease(n)))
        });
        let g = generator();
        group.bench_function(format!("n={n}/threads=2"), |b| {
            b.iter_custom(|iters| {
                let other = {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        for _ in 0..iters {
                            let _ = std::hint::black_box(g.lease(n));
                        }
                    })
                };
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = std::hint::black_box(g.lease(n));
                }
                let elapsed = start.elapsed();
                let _ = other.join();
                elapsed
            })
        });
    }
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::lease, super::workers);
}
use group::benches;
criterion_main!(benches);
