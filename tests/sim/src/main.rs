//! `sim`: run seeds of the deterministic simulator.
//!
//! ```text
//! sim --seed 42                 replay one seed, print its trace around a failure
//! sim --seed 42 --trace         ... and print its whole trace
//! sim --first 0 --count 1000    run a range of seeds
//! sim --soak --seconds 600      run fresh seeds for that long: seeds/hour, failures
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_sim::{run, run_batch, Options};

#[derive(Parser)]
#[command(about = "drover's deterministic cluster simulator")]
struct Args {
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print the whole trace, not only a failure's tail.
    #[arg(long)]
    trace: bool,
    /// Run seeds from here (with --count or --soak).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Run seeds until --seconds pass, from a start taken from the clock
    /// unless --first is given.
    #[arg(long)]
    soak: bool,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.seed.is_none() {
        // A panicking seed is reported with its trace; the default hook's
        // backtrace for each would bury the summary.
        std::panic::set_hook(Box::new(|_| {}));
    }
    if let Some(seed) = args.seed {
        let opts = Options {
            full_trace: args.trace,
            ..Options::new(seed)
        };
        return match run(opts) {
            Ok(report) => {
                for line in &report.trace {
                    println!("{line}");
                }
                println!(
                    "seed {seed} passed: {} controllers, {} steps, {} of {} writes acknowledged, \
                     {} reads, {} crashes ({} unflushed writes lost), last term {}, applied {}, \
                     trace sha256 {}",
                    report.members,
                    report.steps,
                    report.writes_acked,
                    report.writes_proposed,
                    report.reads_answered,
                    report.crashes,
                    report.lost_writes_on_crash,
                    report.terms,
                    report.applied,
                    report.trace_hash
                );
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let (first, count, until) = if args.soak {
        let first = if args.first != 0 {
            args.first
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() << 20)
        };
        let until = Instant::now() + Duration::from_secs(args.seconds);
        (first, u64::MAX - first, Some(until))
    } else {
        (args.first, args.count, None)
    };
    let batch = run_batch(first, count, until);
    for f in &batch.failures {
        eprintln!("{f}");
    }
    println!(
        "seeds {}..{}: {} run in {:.1} s ({:.0} seeds/hour on this machine), {} steps, \
         {} writes acknowledged, {} crashes, {} failed{}",
        first,
        first + batch.seeds,
        batch.seeds,
        batch.elapsed.as_secs_f64(),
        batch.seeds_per_hour(),
        batch.steps,
        batch.acked,
        batch.crashes,
        batch.failures.len(),
        if batch.failures.is_empty() {
            String::new()
        } else {
            format!(
                " (seeds {})",
                batch
                    .failures
                    .iter()
                    .map(|f| f.seed.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let counts: Vec<String> = batch
        .counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "{} reads answered, {} un-flushed writes lost in crashes, {} seeds with 5 controllers; {}",
        batch.reads,
        batch.lost_writes_on_crash,
        batch.five_member_seeds,
        counts.join(", ")
    );
    if batch.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
