//! drover's deterministic simulator (issue 18): the production raft
//! [`Core`](drover_controller::raft::core::Core) and state machine of 3 or 5
//! controllers, over a simulated disk ([`disk`]), network and clock, stepped
//! on one thread by a seeded event queue ([`world`]). A seed decides the
//! cluster size, the network's hostility, the faults and the clients' load;
//! the same seed gives the same run, step for step. See `docs/simulation.md`.

pub mod agent;
pub mod disk;
pub mod world;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use world::{Failure, Options, Report};

/// Run one seed with the default options.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    world::World::new(Options::new(seed)).run()
}

/// Run one seed with these options.
pub fn run(opts: Options) -> Result<Report, Failure> {
    world::World::new(opts).run()
}

/// What a batch of seeds did.
#[derive(Debug, Default)]
pub struct Batch {
    pub seeds: u64,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
    pub steps: u64,
    pub acked: u64,
    pub reads: u64,
    pub crashes: u64,
    pub lost_writes_on_crash: u64,
    pub five_member_seeds: u64,
    /// Faults and network events over all seeds, by kind.
    pub counts: BTreeMap<&'static str, u64>,
}

impl Batch {
    pub fn seeds_per_hour(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.seeds as f64 * 3600.0 / secs
    }
}

/// Run the seeds `first..first + count` in turn, or until `until` passes.
pub fn run_batch(first: u64, count: u64, until: Option<Instant>) -> Batch {
    let started = Instant::now();
    let mut batch = Batch::default();
    for seed in first..first.saturating_add(count) {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        batch.seeds += 1;
        match run_seed(seed) {
            Ok(r) => {
                batch.steps += r.steps;
                batch.acked += r.writes_acked as u64;
                batch.reads += r.reads_answered as u64;
                batch.crashes += u64::from(r.crashes);
                batch.lost_writes_on_crash += r.lost_writes_on_crash as u64;
                batch.five_member_seeds += u64::from(r.members == 5);
                for (k, v) in r.counts {
                    *batch.counts.entry(k).or_default() += v;
                }
            }
            Err(f) => batch.failures.push(f),
        }
    }
    batch.elapsed = started.elapsed();
    batch
}
