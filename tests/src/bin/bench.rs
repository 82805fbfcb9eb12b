//! drover benchmarks: print numbers, assert nothing.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/bench store [--metrics-compare [--rounds 2]]
//! target/release/bench placement [--agents 1000] [--deployments 100] [--replicas 100] [--hold-secs 300] [--metrics-compare|--watch-compare|--rollout]
//! target/release/bench docker-start [--replicas 20]
//! target/release/bench recovery [--agents 3] [--replicas 30] [--kills 20] [--runtime process|docker] [--lab]
//! target/release/bench rollout [--replicas 50] [--process-only]
//! target/release/bench debugging [--mebibytes 256] [--rounds 3]
//! target/release/bench services [--requests 5000] [--concurrency 8] [--rounds 3] [--kills 5] [--runtime process|docker]
//! target/release/bench endpoints [--nodes 100] [--deployments 1000] [--replicas 100] [--services 1000] [--rounds 5]
//! ```
//!
//! Each subcommand prints one line per figure (the lines the README's
//! performance section quotes); progress goes to stderr. The benchmarks live
//! in `tests/src/bench/`, one module each.

use std::time::Duration;

use clap::{Parser, Subcommand};

#[path = "../bench/mod.rs"]
mod bench;

#[derive(Parser)]
#[command(name = "bench", about = "drover benchmarks (print numbers)")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Replicated store: commit latency, throughput, failover.
    Store {
        /// Sequential applies for the latency figure.
        #[arg(long, default_value_t = 1000)]
        latency_ops: usize,
        /// Concurrent clients for the throughput figure.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds of load for the throughput figure.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Leader kills for the failover figure.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Instead: latency and throughput with metrics on (every controller
        /// scraped each second) and off (--metrics-listen=), alternating for
        /// --rounds rounds each, and the ratio.
        #[arg(long)]
        metrics_compare: bool,
        /// Rounds per side with --metrics-compare.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Placement throughput: sim agents in this process, apply → all Running.
    Placement {
        /// Simulated agents (nodes) hosted in the bench process.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Deployments applied.
        #[arg(long, default_value_t = 100)]
        deployments: usize,
        /// Replicas per deployment.
        #[arg(long, default_value_t = 100)]
        replicas: u32,
        /// Applies in flight at once.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Give up on registration, and on placement, after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// Milliseconds between progress samples (with `--clock poll` each
        /// lists every replica; the hold and the rollout always list).
        #[arg(long, default_value_t = 250)]
        sample_ms: u64,
        /// What stops the clock: listing every replica from a follower every
        /// --sample-ms, or a watch of every replica on it (exact to the
        /// batch, but at 100,000 replicas it costs that follower more than
        /// the placement does).
        #[arg(long, value_enum, default_value = "poll")]
        clock: bench::placement::Clock,
        /// After every replica is Running, keep the cluster up this many
        /// seconds and count leader changes and NotReady nodes (0: skip).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
        /// Run twice, metrics on (every controller scraped each second) and
        /// off (--metrics-listen=, agents' metrics off too), and print the ratio.
        #[arg(long)]
        metrics_compare: bool,
        /// Run twice: with a `get replicas -w` stream open on a follower the
        /// whole time (default --watch-history), then with no watch and
        /// --watch-history 1; print both and the ratio.
        #[arg(long, conflicts_with = "metrics_compare")]
        watch_compare: bool,
        /// Then roll the first deployment to a new image and time it, its
        /// bounds checked at every sample (`--deployments 1 --replicas
        /// 10000`: one 10,000-replica deployment).
        #[arg(long, conflicts_with_all = ["metrics_compare", "watch_compare"])]
        rollout: bool,
    },
    /// Replica start through drover (2 Docker agents) against `docker run -d`.
    DockerStart {
        /// Replicas per round, and parallel `docker run -d` per baseline round.
        #[arg(long, default_value_t = 20)]
        replicas: u32,
        /// Rounds per side, alternating.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Give up on one side of one round after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Host failure: kill an agent host, time NotReady and all-Running-again.
    Recovery {
        #[arg(long, default_value_t = 3)]
        agents: usize,
        #[arg(long, default_value_t = 30)]
        replicas: u32,
        /// Host kills (the agent is restarted between them).
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// process or docker.
        #[arg(long, default_value = "process")]
        runtime: String,
        /// Give up on any one wait after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// On a `droverctl lab` (as root): every agent its own host, with
        /// `--runtime docker` its own Docker engine; kills are `lab kill`.
        #[arg(long)]
        lab: bool,
    },
    /// The leader's Service table at scale, in this process: a status
    /// batch's update beside a full recompute of every Service.
    Endpoints {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 1000)]
        deployments: usize,
        /// Replicas per deployment.
        #[arg(long, default_value_t = 100)]
        replicas: usize,
        /// Services, Service i selecting deployment i.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Rounds per figure (the median is printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Services on a lab (as root): cluster IP vs direct requests/s and
    /// latency, and how long a dead host's replica stays in rotation.
    Services {
        /// Requests per side and round.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Client threads (in host n3's network namespace).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Rounds per side, alternating.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Backend host kills (each restarted after).
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// process or docker.
        #[arg(long, default_value = "process")]
        runtime: String,
    },
    /// Rolling update time: process runtime, Docker, and Swarm's service update.
    Rollout {
        /// Replicas of the updated deployment (and tasks of the Swarm service).
        #[arg(long, default_value_t = 50)]
        replicas: u32,
        /// Give up on one rollout after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Only the process-runtime side (no Docker, no Swarm).
        #[arg(long)]
        process_only: bool,
    },
    /// port-forward and cp throughput beside a direct connection (Docker).
    Debugging {
        /// Size of the file moved.
        #[arg(long, default_value_t = 256)]
        mebibytes: u32,
        /// Runs per side, alternating.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Give up on any one wait after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    // Ctrl-C drops the running benchmark, so its controllers, agents and
    // containers are cleaned up as on any other error.
    let result = tokio::select! {
        r = run(args.what) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = result {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(what: What) -> anyhow::Result<()> {
    match what {
        What::Store {
            latency_ops,
            clients,
            seconds,
            kills,
            metrics_compare,
            rounds,
        } => {
            if metrics_compare {
                bench::store::metrics_compare(latency_ops, clients, seconds, rounds.max(1)).await
            } else {
                bench::store::run(latency_ops, clients, seconds, kills).await
            }
        }
        What::Placement {
            agents,
            deployments,
            replicas,
            clients,
            timeout_secs,
            sample_ms,
            clock,
            hold_secs,
            metrics_compare,
            watch_compare,
            rollout,
        } => {
            let cfg = bench::placement::Config {
                agents,
                deployments,
                replicas,
                clients,
                timeout: Duration::from_secs(timeout_secs),
                sample: Duration::from_millis(sample_ms.max(1)),
                clock,
                hold: Duration::from_secs(hold_secs),
                rollout,
            };
            if metrics_compare {
                bench::placement::metrics_compare(cfg).await
            } else if watch_compare {
                bench::placement::watch_compare(cfg).await
            } else {
                bench::placement::run(cfg).await
            }
        }
        What::DockerStart {
            replicas,
            rounds,
            timeout_secs,
        } => {
            bench::docker_start::run(bench::docker_start::Config {
                replicas,
                rounds,
                timeout: Duration::from_secs(timeout_secs),
            })
            .await
        }
        What::Recovery {
            agents,
            replicas,
            kills,
            runtime,
            timeout_secs,
            lab,
        } => {
            bench::recovery::run(bench::recovery::Config {
                agents,
                replicas,
                kills,
                runtime,
                timeout: Duration::from_secs(timeout_secs),
                lab,
            })
            .await
        }
        What::Endpoints {
            nodes,
            deployments,
            replicas,
            services,
            rounds,
        } => bench::endpoints::run(bench::endpoints::Config {
            nodes,
            deployments,
            replicas,
            services,
            rounds,
        }),
        What::Services {
            requests,
            concurrency,
            rounds,
            kills,
            runtime,
        } => {
            bench::services::run(bench::services::Config {
                requests,
                concurrency,
                rounds,
                kills,
                runtime,
            })
            .await
        }
        What::Rollout {
            replicas,
            timeout_secs,
            process_only,
        } => {
            bench::rollout::run(bench::rollout::Config {
                replicas,
                timeout: Duration::from_secs(timeout_secs),
                process_only,
            })
            .await
        }
        What::Debugging {
            mebibytes,
            rounds,
            timeout_secs,
        } => {
            bench::debugging::run(bench::debugging::Config {
                mebibytes,
                rounds,
                timeout: Duration::from_secs(timeout_secs),
            })
            .await
        }
    }
}
