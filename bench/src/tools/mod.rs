//! Subcommands for scripts (`bench/compare.sh`, `kube/simulate.sh`): everything that speaks
//! the wire protocol, knows the ID layout or starts the server lives here, in Rust, so the
//! scripts keep only pinning and process control. Each prints one JSON object on stdout
//! (`verify-ranges` optionally a line of text) and exits 0 on success, 1 when what it checked
//! failed, 2 when it could not run.
//!
//! - [`serve`]: run a server through the shared harness, print its addresses, stop it on
//!   SIGTERM.
//! - [`startup`]: time process start to the first `/readyz` 200.
//! - [`idle`]: hold N welcomed idle connections and report the server's memory.
//! - [`ranges`]: check recorded `first count` ranges for overlaps, workers and tick bounds.
//! - [`sim_load`]: the simulated cluster's load through the client crate, checked by runs.

pub mod idle;
pub mod ranges;
pub mod serve;
pub mod sim_load;
pub mod startup;

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Start a snowlease-server (fresh state directory, loopback ports), print
    /// {"pid","lease_addr","admin_addr","state_dir"} as one JSON line, and keep it running
    /// until SIGTERM or SIGINT (then stop it gracefully) or until it exits.
    Serve(serve::Args),
    /// Start the server --runs times and time each start to its first /readyz 200.
    Startup(startup::Args),
    /// Hold N idle connections, each after HELLO/WELCOME, and report the server's resident
    /// memory before and with them.
    IdleConns(idle::Args),
    /// Check "first count" lines (snowcat --ranges) for overlapping IDs, unexpected workers
    /// and blocks crossing a tick; report totals per worker.
    VerifyRanges(ranges::Args),
    /// Take IDs through the client crate from every pod of a (simulated) cluster: warm up
    /// until every expected worker answered, measure IDs/s per time bucket and per worker,
    /// check every ID for uniqueness by runs, and write a JSON report.
    SimLoad(sim_load::Args),
}

impl Tool {
    /// Runs the subcommand: `Ok(true)` = success, `Ok(false)` = the check failed, `Err` =
    /// could not run.
    pub fn run(&self) -> Result<bool, String> {
        match self {
            Tool::Serve(a) => serve::run(a),
            Tool::Startup(a) => startup::run(a),
            Tool::IdleConns(a) => idle::run(a),
            Tool::VerifyRanges(a) => ranges::run(a),
            Tool::SimLoad(a) => sim_load::run(a),
        }
    }
}

/// Prints `value` as one JSON line on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|e| format!("cannot serialise: {e}"))?;
    println!("{text}");
    Ok(())
}
