//! Servers that go silent (connections open, nothing answers) beside servers that stay
//! healthy: callers must keep getting IDs from the healthy ones, no ID may repeat, and a
//! server that answers again must be used again.
//!
//! Silence comes from a real `snowlease-server` stopped with SIGSTOP (see `support`), or, where
//! the binary is not needed, from an in-process proxy that holds every byte. The measuring
//! test at the end is `#[ignore]`d: it prints throughput figures instead of asserting them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snowlease::{Client, ClientConfig};
use support::{server_binary_or_skip, ServerProcess};

/// Length of one throughput window.
const WINDOW: Duration = Duration::from_millis(250);

/// IDs drawn so far, per worker, and the longest wait of any `next_id()` call, shared by the
/// drawing tasks and the sampler.
struct Tally {
    total: AtomicU64,
    per_worker: Vec<AtomicU64>,
    longest_wait_us: AtomicU64,
    stop: AtomicBool,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            total: AtomicU64::new(0),
            per_worker: (0..1024).map(|_| AtomicU64::new(0)).collect(),
            longest_wait_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    fn worker(&self, w: u16) -> u64 {
        self.per_worker[usize::from(w)].load(Ordering::Relaxed)
    }
}

/// Draws IDs until told to stop, flushing counts every 4,096 IDs; any error fails the test.
async fn draw(client: Client, tally: Arc<Tally>) {
    const FLUSH: u64 = 4096;
    let mut counts: HashMap<u16, u64> = HashMap::new();
    let mut n = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        let id = match client.try_next_id() {
            Some(id) => id,
            None => {
                let t = Instant::now();
                let id = client.next_id().await.unwrap();
                let waited = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.longest_wait_us.fetch_max(waited, Ordering::Relaxed);
                id
            }
        };
        *counts.entry(client.decode(id).worker).or_default() += 1;
        n += 1;
        if n == FLUSH {
            tally.total.fetch_add(n, Ordering::Relaxed);
            for (w, c) in counts.drain() {
                tally.per_worker[usize::from(w)].fetch_add(c, Ordering::Relaxed);
            }
            n = 0;
            // Let the driver run on a runtime with fewer threads than drawing tasks.
            tokio::task::yield_now().await;
        }
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Measures `next_id()` throughput in 250 ms windows with four server binaries (pinned to
/// CPU 0 when `taskset` works), two of which are stopped with SIGSTOP for six seconds and then
/// resumed. Prints the healthy-phase median window, the worst window while two are silent,
/// their ratio, the longest single wait, and how long after SIGCONT each resumed server's IDs
/// are drawn again. Run it pinned to CPU 1:
/// `taskset -c 1 cargo test -p snowlease --release --test silence -- --ignored --nocapture`
#[ignore = "measurement: prints figures, asserts only that no call failed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_throughput_while_two_of_four_servers_are_stopped() {
    let Some(bin) = server_binary_or_skip("measure_throughput") else {
        return;
    };
    let workers = [21u16, 22, 23, 24];
    let pin = std::process::Command::new("taskset")
        .args(["-c", "0", "true"])
        .status()
        .is_ok_and(|s| s.success())
        .then_some("0");
    let servers: Vec<_> = workers
        .iter()
        .map(|&w| ServerProcess::start(&bin, w, pin))
        .collect();
    let config = ClientConfig::new(servers.iter().map(|s| s.addr.to_string()));
    let client = Client::connect(config).await.unwrap();
    let tally = Tally::new();
    let drawers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(draw(client.clone(), Arc::clone(&tally))))
        .collect();

    let sampler = {
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut windows = Vec::new();
            let mut last = 0;
            let mut i = 1;
            while !tally.stop.load(Ordering::Relaxed) {
                let next = start + WINDOW * i;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                let total = tally.total.load(Ordering::Relaxed);
                windows.push(total - last);
                last = total;
                i += 1;
            }
            windows
        })
    };
    let windows_per = |d: Duration| (d.as_millis() / WINDOW.as_millis()) as usize;
    let healthy = Duration::from_secs(4);
    let silent = Duration::from_secs(6);
    tokio::time::sleep(healthy).await;
    let wait_before = tally.longest_wait_us.swap(0, Ordering::Relaxed);
    for s in &servers[..2] {
        s.stop();
    }
    tokio::time::sleep(silent).await;
    let wait_silent = tally.longest_wait_us.swap(0, Ordering::Relaxed);
    let seen: Vec<u64> = workers[..2].iter().map(|&w| tally.worker(w)).collect();
    for s in &servers[..2] {
        s.resume();
    }
    let resumed = Instant::now();
    let mut back = [None, None];
    while back.iter().any(Option::is_none) && resumed.elapsed() < Duration::from_secs(30) {
        for (i, &w) in workers[..2].iter().enumerate() {
            if back[i].is_none() && tally.worker(w) > seen[i] {
                back[i] = Some(resumed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally.stop.store(true, Ordering::Relaxed);
    for d in drawers {
        d.await.unwrap();
    }
    let windows = sampler.join().unwrap();
    let h = windows_per(healthy);
    let s = windows_per(silent);
    // Skip the first window (connections warming up) of the healthy phase.
    let healthy_median = median(windows[1..h].to_vec());
    let silent_windows = &windows[h..h + s];
    let worst = *silent_windows.iter().min().unwrap();
    println!("windows (IDs per 250 ms): {windows:?}");
    println!(
        "healthy median {healthy_median}, worst window with 2 of 4 stopped {worst}, ratio {:.3}",
        worst as f64 / healthy_median as f64
    );
    println!(
        "silent-phase median {}, longest next_id wait: healthy {wait_before} us, silent \
         {wait_silent} us",
        median(silent_windows.to_vec())
    );
    println!("stopped servers drawn from again after SIGCONT: {back:?}");
    client.close().await;
}
