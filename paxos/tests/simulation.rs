//! Deterministic simulation tests of the consensus core (see tests/sim/mod.rs).
//!
//! - `seeds_sweep`: the CI run, `PAXOS_SIM_SEEDS` seeds (default 200) from
//!   `PAXOS_SIM_START` (default 1).
//! - `replay_one_seed`: `PAXOS_SIM_SEED=N PAXOS_SIM_TRACE=1 cargo test -p paxos
//!   --test simulation replay_one_seed -- --nocapture` replays one seed with a trace.
//! - the soak: `PAXOS_SIM_SEEDS=20000 cargo test --release -p paxos --test simulation
//!   seeds_sweep -- --nocapture`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod sim;

use sim::{Sim, SimConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_seed(seed: u64) -> sim::SimReport {
    match Sim::new(SimConfig::from_seed(seed)).run() {
        Ok(report) => report,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn seeds_sweep() {
    let start = env_u64("PAXOS_SIM_START", 1);
    let count = env_u64("PAXOS_SIM_SEEDS", 200);
    let mut totals = sim::SimReport::default();
    for seed in start..start + count {
        let r = run_seed(seed);
        totals.chosen += r.chosen;
        totals.crashes += r.crashes;
        totals.disk_errors += r.disk_errors;
        totals.partitions += r.partitions;
        totals.switchovers += r.switchovers;
        totals.checkpoint_installs += r.checkpoint_installs;
        totals.proposals_ok += r.proposals_ok;
        totals.proposals_failed += r.proposals_failed;
        totals.events += r.events;
    }
    println!("{count} seeds: {totals:?}");
    // The faults must actually have happened, or the sweep proves little.
    assert!(totals.crashes > 0 && totals.partitions > 0 && totals.disk_errors > 0);
    assert!(totals.switchovers > 0, "no switchover was exercised");
    assert!(
        totals.checkpoint_installs > 0,
        "no checkpoint was installed"
    );
    assert!(totals.chosen > 0 && totals.proposals_ok > 0);
}

#[test]
fn replay_one_seed() {
    let Some(seed) = std::env::var("PAXOS_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let r = run_seed(seed);
    println!("seed {seed}: {r:?}");
}
