//! Placement throughput: many simulated agents, many replicas, three
//! controllers; how fast does every replica reach Running?
//!
//! ```text
//!   controllers ×3 (release processes, raft, sled fsync on)
//!        ▲ sessions: Hello, heartbeats, status      ▲ Apply ×D        ▲ ListReplicas
//!        │           ◀── AssignmentSet              │ (N clients      │ every --sample-ms
//!   ┌────┴──────────── bench process ───────────────┴─ in flight) ────┴──────────┐
//!   │ sim-0001 … sim-N: drover_agent::run_with(SimRuntime), one listener and     │
//!   │ data dir each; a sim replica "runs" the instant it is started              │
//!   └────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The clock starts when the first apply is sent and stops at the first
//! progress sample (every replica listed from a follower, a stale read,
//! every `--sample-ms`: 250 ms by default) showing every replica Running,
//! confirmed by a linearizable read at the leader: upper bounds at that
//! resolution, the listing's own cost included. `--clock watch` stops it
//! instead when a `Watch` of every replica on the follower (what `droverctl
//! get replicas -w` opens) has seen them all Running, confirmed the same
//! way: exact to the batch, but the watch costs that follower as much as a
//! 50 ms poll at 10,000 replicas and more than the placement itself at
//! 100,000. A warm-up replica goes through the whole path first, so the
//! clock never includes the first moments of a new leader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use drover_agent::runtime::SimRuntime;
use drover_agent::Settings;
use drover_proto::pb;
use drover_proto::pb::control_client::ControlClient;
use drover_tests::cluster::Options;
use drover_tests::Cluster;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;

use super::measure::{cores, cpu_time, memory_of, own_cpu_time, poll_until, secs, Memory, Poll};
use super::{apply_worker, apply_worker_of, client, list_replicas, ready_nodes, Progress};

/// The throughput issue 14 asks for: 20,000 placements/s for up to 10,000
/// replicas, 10,000/s beyond (100,000 replicas on 1,000 agents).
fn target_per_sec(total: usize) -> f64 {
    if total <= 10_000 {
        20_000.0
    } else {
        10_000.0
    }
}
/// How often a progress line goes to stderr while waiting.
const SAY_EVERY: Duration = Duration::from_secs(5);
/// The deployment that goes through the pipeline before the clock starts.
const WARM_UP: &str = "warm-up";
/// Attempts per apply before the benchmark gives up.
const APPLY_ATTEMPTS: u32 = 5;
/// How often the watch clock looks at what its watch saw.
const WATCH_TICK: Duration = Duration::from_millis(5);
/// The longest one progress listing (every replica, paged) may take.
const LISTING_TIMEOUT: Duration = Duration::from_secs(30);

/// What stops the placement clock (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Clock {
    /// A `Watch` of every replica on a follower.
    Watch,
    /// Listing every replica from a follower every `--sample-ms`.
    Poll,
}

pub struct Config {
    pub agents: usize,
    pub deployments: usize,
    pub replicas: u32,
    /// Applies in flight at once.
    pub clients: usize,
    /// For registration, and again for placement.
    pub timeout: Duration,
    /// How often progress is sampled.
    pub sample: Duration,
    /// What stops the clock.
    pub clock: Clock,
    /// How long to keep the cluster up after placement, watching it (0: not).
    pub hold: Duration,
    /// After placement (and the hold), roll the first deployment to a new
    /// template and time it, checking its bounds at every sample.
    pub rollout: bool,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    run_with(&cfg, Options::default(), false).await.map(|_| ())
}

/// The placement run twice in one process, metrics on (controllers scraped
/// every second, agents recording) then off (`--metrics-listen=` on the
/// controllers, the in-process agents' metrics switched off), and the ratio.
pub async fn metrics_compare(mut cfg: Config) -> anyhow::Result<()> {
    // A watch clock would add a watch to both sides: list instead.
    cfg.clock = Clock::Poll;
    println!("-- metrics on --");
    drover_agent::metrics::set_enabled(true);
    let on = run_with(&cfg, Options::default(), false).await?;
    println!("-- metrics off --");
    drover_agent::metrics::set_enabled(false);
    let off = run_with(
        &cfg,
        Options {
            extra_args: vec!["--metrics-listen=".to_string()],
            ..Options::default()
        },
        false,
    )
    .await?;
    drover_agent::metrics::set_enabled(true);
    let total = cfg.deployments * cfg.replicas as usize;
    let (r_on, r_off) = (
        total as f64 / on.as_secs_f64(),
        total as f64 / off.as_secs_f64().max(1e-9),
    );
    println!(
        "metrics on / off: all {total} Running in {} vs {} ({r_on:.0} vs {r_off:.0} placements/s, {:.3}x; cost {:+.1} %, target < 2 %)",
        secs(on),
        secs(off),
        r_on / r_off.max(1e-9),
        (1.0 - r_on / r_off.max(1e-9)) * 100.0
    );
    Ok(())
}

/// The placement run twice in one process: with a watch of every replica
/// open on a follower from the start (the default `--watch-history`), then
/// with no watch and `--watch-history 1` (one version kept: the least the
/// history can cost); the ratio, and how far the watch lagged behind.
/// Metrics are off on both sides (`--metrics-listen=`), so only the watch
/// differs.
pub async fn watch_compare(mut cfg: Config) -> anyhow::Result<()> {
    // The unwatched side must have no watch: both sides list instead.
    cfg.clock = Clock::Poll;
    println!("-- watched (get replicas -w on a follower, --watch-history default) --");
    let watched = run_with(
        &cfg,
        Options {
            extra_args: vec!["--metrics-listen=".into()],
            ..Options::default()
        },
        true,
    )
    .await?;
    println!("-- not watched, --watch-history 1 --");
    let bare = run_with(
        &cfg,
        Options {
            extra_args: vec![
                "--metrics-listen=".into(),
                "--watch-history".into(),
                "1".into(),
            ],
            ..Options::default()
        },
        false,
    )
    .await?;
    let total = cfg.deployments * cfg.replicas as usize;
    let (r_on, r_off) = (
        total as f64 / watched.as_secs_f64(),
        total as f64 / bare.as_secs_f64().max(1e-9),
    );
    println!(
        "watched / not watched: all {total} Running in {} vs {} ({r_on:.0} vs {r_off:.0} placements/s, {:.3}x; cost {:+.1} %)",
        secs(watched),
        secs(bare),
        r_on / r_off.max(1e-9),
        (1.0 - r_on / r_off.max(1e-9)) * 100.0
    );
    Ok(())
}

/// What a watch of every replica has seen so far (the warm-up replica not
/// counted).
#[derive(Debug, Default)]
struct Followed {
    progress: Progress,
    /// When it first saw every replica bound to a node, and every one Running.
    all_scheduled: Option<Instant>,
    all_running: Option<Instant>,
    events: usize,
    batches: usize,
    /// Times the watch fell behind the follower's history and listed again.
    relists: usize,
}

type Following = Arc<Mutex<Followed>>;

fn lock(f: &Following) -> std::sync::MutexGuard<'_, Followed> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// Follow every replica through `Watch` until `total` are Running; the
/// events received and when the last one arrived.
async fn watch_until_running(
    address: String,
    security: drover_pki::Security,
    total: usize,
) -> anyhow::Result<(usize, usize, Instant)> {
    let followed = Following::default();
    follow(address, security, total, followed.clone(), None).await?;
    let f = lock(&followed);
    let at = f.all_running.context("the watch ended early")?;
    Ok((f.events, f.batches, at))
}

/// Follow every replica through `Watch` on `address`, writing what it sees
/// into `followed` after each batch, until `total` are Running. `open` is
/// told once the stream is open (before any apply, for the clock).
async fn follow(
    address: String,
    security: drover_pki::Security,
    total: usize,
    followed: Following,
    open: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    use pb::watch_event::Object;
    let mut client = client(&address, &security).await?;
    let mut open = open;
    // Each replica's (bound, Running) as last seen.
    let mut replicas: std::collections::HashMap<String, (bool, bool)> = Default::default();
    loop {
        let mut stream = open_watch(&mut client).await?;
        if let Some(open) = open.take() {
            let _ = open.send(());
        }
        // A watch starts with every replica as it is now.
        replicas.clear();
        loop {
            let batch = match stream.message().await {
                Ok(Some(batch)) => batch,
                Ok(None) => anyhow::bail!("the watch ended with {}", lock(&followed).progress),
                // The watch fell further behind than the follower's history
                // (`--watch-history`): list again, as `get -w` does.
                Err(e) if e.code() == tonic::Code::OutOfRange => {
                    eprintln!("  watch: {}", e.message());
                    lock(&followed).relists += 1;
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let n = batch.events.len();
            for e in batch.events {
                let deleted = e.r#type() == pb::WatchEventType::Deleted;
                let Some(Object::Replica(r)) = e.object else {
                    continue;
                };
                if deleted || r.deployment == WARM_UP {
                    replicas.remove(&r.name);
                    continue;
                }
                let running = r
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state() == pb::ReplicaState::Running);
                replicas.insert(r.name, (!r.node.is_empty(), running));
            }
            let progress = Progress {
                total: replicas.len(),
                scheduled: replicas.values().filter(|(bound, _)| *bound).count(),
                running: replicas.values().filter(|(_, running)| *running).count(),
            };
            let now = Instant::now();
            let mut f = lock(&followed);
            f.events += n;
            f.batches += 1;
            if progress.total == total && progress.scheduled == total {
                f.all_scheduled.get_or_insert(now);
            }
            let done = progress.total == total && progress.running == total;
            if done {
                f.all_running.get_or_insert(now);
            }
            f.progress = progress;
            if done {
                return Ok(());
            }
        }
    }
}

/// A `Watch` of every replica; its list at the start reads through the
/// leader, so this waits (30 s at most) for one.
async fn open_watch(
    client: &mut ControlClient<Channel>,
) -> anyhow::Result<tonic::Streaming<pb::WatchBatch>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = pb::WatchRequest {
            kind: pb::WatchKind::Replica as i32,
            ..Default::default()
        };
        match client.watch(request).await {
            Ok(stream) => return Ok(stream.into_inner()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("  watch: {}; again", e.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One placement run; the time from the first apply to all Running.
/// With `watched`, a task follows every replica through `Watch` meanwhile.
async fn run_with(cfg: &Config, options: Options, watched: bool) -> anyhow::Result<Duration> {
    let metrics_on = options.extra_args.is_empty();
    let total = cfg.deployments * cfg.replicas as usize;
    println!(
        "drover placement benchmark: 3 controllers, {} sim agents in the bench process, \
         {} deployments × {} replicas = {total}, progress sampled every {} ms, {} cores",
        cfg.agents,
        cfg.deployments,
        cfg.replicas,
        cfg.sample.as_millis(),
        cores()
    );
    let c = Cluster::start_with(3, options).await?;
    let scraper = metrics_on.then(|| super::scrape_every_second(&c));
    let started = Instant::now();
    let watch = watched.then(|| {
        tokio::spawn(watch_until_running(
            c.controllers[2].address.clone(),
            c.security.clone(),
            total,
        ))
    });
    let fleet = SimFleet::start(&c, cfg.agents)?;
    let result = measure(&c, &fleet, started, cfg, total).await;
    let measured_at = Instant::now();
    if let Some(watch) = watch {
        match tokio::time::timeout(cfg.timeout, watch).await {
            Ok(Ok(Ok((events, batches, at)))) => println!(
                "the watch of every replica (controller {}) saw all {total} Running {} after the run \
                 started ({} events in {} batches); the progress poll confirmed it {}",
                c.controllers[2].id,
                secs(at.duration_since(started)),
                events,
                batches,
                secs(measured_at.duration_since(started)),
            ),
            Ok(Ok(Err(e))) => eprintln!("the watch failed: {e:#}"),
            Ok(Err(e)) => eprintln!("the watch task failed: {e}"),
            Err(_) => eprintln!("the watch did not see every replica Running"),
        }
    }
    if let Some(s) = scraper {
        match s.stop().await {
            Ok(n) => println!("({n} scrapes of the controllers' /metrics during the run)"),
            Err(e) => eprintln!("scraping failed: {e:#}"),
        }
    }
    print_memory(&c, cfg.agents).await;
    let failed = fleet.stop().await;
    if !failed.is_empty() {
        eprintln!(
            "{} sim agents stopped with an error; first: {}",
            failed.len(),
            failed[0]
        );
    }
    result
}

async fn measure(
    c: &Cluster,
    fleet: &SimFleet,
    started: Instant,
    cfg: &Config,
    total: usize,
) -> anyhow::Result<Duration> {
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = (leader + 1) % c.controllers.len();
    // Progress is read from a follower (stale), keeping the leader's CPU
    // for the work being measured.
    let watcher = client(&c.controllers[follower].address, &c.security).await?;

    // Registration: every agent has a session and its node is Ready.
    let want = cfg.agents;
    poll_until("every sim agent Ready", cfg.sample, cfg.timeout, || {
        let (mut watcher, failures) = (watcher.clone(), fleet.failures());
        async move {
            if let Some(first) = failures.first() {
                return Err(format!("{} agents failed; first: {first}", failures.len()));
            }
            match ready_nodes(&mut watcher, true).await? {
                (ready, _) if ready == want => Ok(()),
                (ready, all) => Err(format!("{ready} of {want} Ready ({all} registered)")),
            }
        }
    })
    .await?;
    println!(
        "{} sim agents registered and Ready: {}",
        cfg.agents,
        secs(started.elapsed())
    );

    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let leader_address = c.controllers[leader].address.clone();
    let mut confirm = client(&leader_address, &c.security).await?;
    warm_up(&mut confirm, cfg).await?;

    // The clock's watch is open before the first apply.
    let followed = Following::default();
    let following = match cfg.clock {
        Clock::Watch => {
            let (open, opened) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(follow(
                c.controllers[follower].address.clone(),
                c.security.clone(),
                total,
                followed.clone(),
                Some(open),
            ));
            if opened.await.is_err() {
                let why = match task.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "it ended".to_string(),
                };
                anyhow::bail!("could not watch the replicas on a follower: {why}");
            }
            Some(task)
        }
        Clock::Poll => None,
    };

    // Placement: apply everything while sampling progress.
    let cpu_before = CpuUse::now(c);
    let t0 = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    println!(
        "placement started at unix time {}.{:06} (to find it in the controllers' logs)",
        wall.as_secs(),
        wall.subsec_micros()
    );
    let applies = tokio::spawn(apply_all(
        leader_address,
        c.security.clone(),
        cfg.deployments,
        cfg.replicas,
        cfg.clients,
    ));
    let mut watcher = watcher;
    // The watch clock only reads what the watch saw: a short tick costs nothing.
    let tick = match cfg.clock {
        Clock::Watch => cfg.sample.min(WATCH_TICK),
        Clock::Poll => cfg.sample,
    };
    let mut poll = Poll::new(tick, cfg.timeout);
    let mut seen = Progress::default();
    let mut scheduled_at = None;
    let mut running_at = None;
    let mut said = Instant::now();
    while poll.next().await {
        let mut at = t0.elapsed();
        match &following {
            Some(task) => {
                let f = lock(&followed);
                seen = f.progress;
                scheduled_at = f.all_scheduled.map(|i| i.duration_since(t0));
                if let Some(all) = f.all_running {
                    at = all.duration_since(t0);
                } else if task.is_finished() {
                    drop(f);
                    break;
                }
            }
            None => {
                // A listing that hangs (a stream stalled on a starved
                // connection) must not hang the benchmark: say so and sample again.
                match tokio::time::timeout(LISTING_TIMEOUT, list_replicas(&mut watcher, "", true))
                    .await
                {
                    Ok(Ok(replicas)) => seen = Progress::of(&replicas),
                    Ok(Err(e)) => eprintln!("  {:>8}: {e}", secs(t0.elapsed())),
                    Err(_) => eprintln!(
                        "  {:>8}: listing replicas took longer than {LISTING_TIMEOUT:?}; sampling again",
                        secs(t0.elapsed())
                    ),
                }
                at = t0.elapsed();
                if seen.total == total && seen.scheduled == total && scheduled_at.is_none() {
                    scheduled_at = Some(at);
                }
            }
        }
        if seen.total == total && seen.running == total {
            let confirmed = list_replicas(&mut confirm, "", false)
                .await
                .map(|r| Progress::of(&r));
            if confirmed.is_ok_and(|p| p.total == total && p.running == total) {
                running_at = Some((at, CpuUse::now(c)));
                break;
            }
        }
        if said.elapsed() >= SAY_EVERY {
            eprintln!("  {:>8}: {seen}", secs(at));
            said = Instant::now();
        }
    }
    if let Some(task) = following {
        let failed = if task.is_finished() {
            match task.await {
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(e) => Some(format!("its task failed: {e}")),
                Ok(Ok(())) => None,
            }
        } else {
            task.abort();
            None
        };
        let f = lock(&followed);
        println!(
            "the clock's watch (controller {}) received {} events in {} batches, listing again {} times",
            c.controllers[follower].id, f.events, f.batches, f.relists
        );
        if let (Some(why), None) = (failed, &running_at) {
            anyhow::bail!("the clock's watch failed at {}: {why}", f.progress);
        }
    }
    let applied = applies
        .await
        .map_err(|e| anyhow!("the apply task failed: {e}"))??;
    println!(
        "{} deployments applied, {} in flight: {} ({:.0} applies/s)",
        cfg.deployments,
        cfg.clients,
        secs(applied),
        cfg.deployments as f64 / applied.as_secs_f64()
    );
    match scheduled_at {
        Some(at) => println!(
            "time to all {total} replicas scheduled (bound to a node): {}",
            secs(at)
        ),
        None => println!(
            "not every replica was scheduled within {:?}: {seen}",
            cfg.timeout
        ),
    }
    let Some((at, cpu_after)) = running_at else {
        println!(
            "not every replica was Running within {:?}: {seen}",
            cfg.timeout
        );
        if let Ok(replicas) = list_replicas(&mut confirm, "", false).await {
            eprintln!("{}", describe_stuck(&replicas));
        }
        anyhow::bail!("placement did not complete");
    };
    let (rate, target) = (total as f64 / at.as_secs_f64(), target_per_sec(total));
    println!(
        "time to all {total} replicas Running (apply → agents' status committed): {} → {rate:.0} placements/s \
         (target ≥ {target:.0}/s: {})",
        secs(at),
        if rate >= target { "met" } else { "missed" }
    );
    println!(
        "CPU used from apply to all Running ({} cores × {} = {:.2} core-s available): {}",
        cores(),
        secs(at),
        cores() as f64 * at.as_secs_f64(),
        cpu_after.since(&cpu_before, leader)
    );
    if !cfg.hold.is_zero() {
        hold(c, &mut watcher, cfg).await?;
    }
    if cfg.rollout {
        rollout(c, cfg).await?;
    }
    Ok(at)
}

/// The image the rolled deployment changes to (the sim runtime runs
/// nothing, so any name is a new template).
const NEXT_IMAGE: &str = "drover/busybox:rollout-bench";

/// Roll the first deployment (`place-0000`) to [`NEXT_IMAGE`] with
/// Kubernetes' default bounds (maxSurge and maxUnavailable 25 %, rounded up
/// and down) and time apply → rollout complete, sampling its status at the
/// leader every `cfg.sample`: at no sample may it have more than desired +
/// maxSurge replicas, nor fewer than desired − maxUnavailable available
/// while every node is Ready (a node lost takes its replicas with it,
/// which no rollout bound promises against: those samples are counted apart).
async fn rollout(c: &Cluster, cfg: &Config) -> anyhow::Result<()> {
    const NAME: &str = "place-0000";
    let desired = cfg.replicas;
    let (surge, unavailable) = (desired.div_ceil(4), desired / 4);
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let mut api = client(&c.controllers[leader].address, &c.security).await?;
    let cpu_before = CpuUse::now(c);
    let t0 = Instant::now();
    apply_worker_of(&mut api, NAME, desired, NEXT_IMAGE).await?;
    let (mut most, mut fewest_available, mut samples) = (0, u32::MAX, 0);
    let (mut short_samples, mut fewest_when_short) = (0, u32::MAX);
    let mut poll = Poll::new(cfg.sample, cfg.timeout);
    let mut said = Instant::now();
    let mut done = None;
    while poll.next().await {
        let status = match api
            .get_deployment(pb::GetDeploymentRequest {
                namespace: "default".into(),
                name: NAME.into(),
                read: None,
            })
            .await
        {
            Ok(d) => d.into_inner().status.unwrap_or_default(),
            Err(s) => {
                eprintln!("  {:>8}: {}", secs(t0.elapsed()), s.message());
                continue;
            }
        };
        samples += 1;
        most = most.max(status.replicas);
        match ready_nodes(&mut api, true).await {
            Ok((ready, _)) if ready == cfg.agents => {
                fewest_available = fewest_available.min(status.available)
            }
            _ => {
                short_samples += 1;
                fewest_when_short = fewest_when_short.min(status.available);
            }
        }
        if status.revision == 2 && status.complete {
            done = Some((t0.elapsed(), CpuUse::now(c)));
            break;
        }
        if said.elapsed() >= SAY_EVERY {
            eprintln!(
                "  {:>8}: revision {}: {} replicas, {} updated, {} available, {} updated available",
                secs(t0.elapsed()),
                status.revision,
                status.replicas,
                status.updated,
                status.available,
                status.updated_available
            );
            said = Instant::now();
        }
    }
    let Some((took, cpu_after)) = done else {
        anyhow::bail!(
            "the rollout of {NAME} did not complete within {:?}",
            cfg.timeout
        );
    };
    // u32::MAX: no sample had every node Ready.
    let held = most <= desired + surge && fewest_available >= desired - unavailable;
    let available = match fewest_available {
        u32::MAX => "no sample with every node Ready".to_string(),
        n => format!("at least {n} available"),
    };
    println!(
        "rolling update of {NAME} ({desired} replicas, maxSurge {surge}, maxUnavailable {unavailable}): \
         apply → complete {}; over {samples} samples at most {most} replicas (bound {}) and \
         {available} (bound {}): bounds {}",
        secs(took),
        desired + surge,
        desired - unavailable,
        if held { "held" } else { "BROKEN" }
    );
    if short_samples > 0 {
        println!(
            "  ({short_samples} samples had a node NotReady (or could not tell): at least \
             {fewest_when_short} available then, not held to the bound)"
        );
    }
    println!(
        "CPU used by the rolling update: {}",
        cpu_after.since(&cpu_before, leader)
    );
    anyhow::ensure!(held, "the rolling update went past its bounds");
    Ok(())
}

/// Keep the placed cluster up for `cfg.hold`, once a second asking who
/// leads and how many nodes are Ready, and say what changed: a calm
/// cluster has no leader change and no NotReady node.
async fn hold(
    c: &Cluster,
    watcher: &mut ControlClient<Channel>,
    cfg: &Config,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut leader = c.wait_for_leader(Duration::from_secs(10)).await?;
    let (mut changes, mut samples, mut short, mut worst) = (0, 0, 0, 0);
    let mut peak_rss_kib = vec![0u64; c.controllers.len()];
    while started.elapsed() < cfg.hold {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = c.wait_for_leader(Duration::from_secs(10)).await?;
        if now != leader {
            changes += 1;
            leader = now;
        }
        samples += 1;
        match ready_nodes(watcher, true).await {
            Ok((ready, _)) if ready < cfg.agents => {
                short += 1;
                worst = worst.max(cfg.agents - ready);
            }
            Ok(_) => {}
            Err(e) => eprintln!("  hold: {e}"),
        }
        for (i, ctl) in c.controllers.iter().enumerate() {
            if let Some(m) = ctl.pid().and_then(Memory::of) {
                peak_rss_kib[i] = peak_rss_kib[i].max(m.rss_kib);
            }
        }
    }
    println!(
        "held {} after placement: {changes} leader changes; NotReady nodes in {short} of \
         {samples} one-second samples (at most {worst} at once)",
        secs(started.elapsed())
    );
    for (i, ctl) in c.controllers.iter().enumerate() {
        println!(
            "controller {} RSS during the hold: peak {} MiB",
            ctl.id,
            peak_rss_kib[i] / 1024
        );
    }
    Ok(())
}

/// CPU time used so far by each controller and by this process.
struct CpuUse {
    /// (controller id, CPU time).
    controllers: Vec<(u64, Option<Duration>)>,
    bench: Option<Duration>,
}

impl CpuUse {
    fn now(c: &Cluster) -> CpuUse {
        CpuUse {
            controllers: c
                .controllers
                .iter()
                .map(|ctl| (ctl.id, ctl.pid().and_then(cpu_time)))
                .collect(),
            bench: own_cpu_time(),
        }
    }

    /// "controller 2 (leader) 2.10 s, controller 1 0.80 s, …, bench process 1.20 s"
    fn since(&self, before: &CpuUse, leader: usize) -> String {
        let used = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => secs(a.saturating_sub(b)),
            _ => "?".to_string(),
        };
        let mut parts: Vec<String> = self
            .controllers
            .iter()
            .zip(&before.controllers)
            .enumerate()
            .map(|(i, ((id, a), (_, b)))| {
                let role = if i == leader { " (leader)" } else { "" };
                format!("controller {id}{role} {}", used(*a, *b))
            })
            .collect();
        parts.push(format!(
            "bench process (agents + polling) {}",
            used(self.bench, before.bench)
        ));
        parts.join(", ")
    }
}

/// The replicas that are not Running, grouped by what they report, with a
/// few names each: where to start looking when placement stalls.
fn describe_stuck(replicas: &[pb::Replica]) -> String {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in replicas {
        let status = r.status.clone().unwrap_or_default();
        if status.state() == pb::ReplicaState::Running {
            continue;
        }
        let key = if r.node.is_empty() {
            format!("unscheduled ({})", r.pending_reason)
        } else {
            format!("{:?} {} {}", status.state(), status.reason, status.message)
        };
        groups
            .entry(key)
            .or_default()
            .push(format!("{}@{}", r.name, r.node));
    }
    let mut text = String::from("replicas not Running, by reported state:");
    for (key, names) in &groups {
        let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
        text.push_str(&format!(
            "\n  {:>6} × {}  e.g. {}",
            names.len(),
            key.trim(),
            shown.join(", ")
        ));
    }
    text
}

/// One replica through the whole path (orchestrator, scheduler, dispatcher,
/// agent, status) and deleted again, so the clock starts with the leader's
/// control loops running rather than with whatever follows an election.
async fn warm_up(api: &mut ControlClient<Channel>, cfg: &Config) -> anyhow::Result<()> {
    let (every, timeout) = (cfg.sample, cfg.timeout);
    apply_worker(api, WARM_UP, 1).await?;
    poll_until("the warm-up replica Running", every, timeout, || {
        let mut api = api.clone();
        async move {
            match Progress::of(&list_replicas(&mut api, WARM_UP, false).await?) {
                p if p.total == 1 && p.running == 1 => Ok(()),
                p => Err(p.to_string()),
            }
        }
    })
    .await?;
    api.delete_deployments(pb::DeleteDeploymentsRequest {
        deployments: vec![pb::DeploymentRef {
            namespace: "default".into(),
            name: WARM_UP.into(),
        }],
        ignore_not_found: false,
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow!("deleting the warm-up deployment: {}", s.message()))?;
    poll_until("the warm-up replica gone", every, timeout, || {
        let mut api = api.clone();
        async move {
            match list_replicas(&mut api, WARM_UP, false).await?.len() {
                0 => Ok(()),
                n => Err(format!("{n} left")),
            }
        }
    })
    .await
}

/// Apply `deployments` worker deployments with `clients` applies in flight,
/// all to `address`; returns how long until the last was acknowledged.
async fn apply_all(
    address: String,
    security: drover_pki::Security,
    deployments: usize,
    replicas: u32,
    clients: usize,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..clients.max(1) {
        let (next, address, security) = (next.clone(), address.clone(), security.clone());
        tasks.spawn(async move {
            let mut api = client(&address, &security).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= deployments {
                    return anyhow::Ok(());
                }
                let name = format!("place-{i:04}");
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match apply_worker(&mut api, &name, replicas).await {
                        Ok(()) => break,
                        Err(e) if attempt >= APPLY_ATTEMPTS => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| anyhow!("an apply client failed: {e}"))??;
    }
    Ok(t.elapsed())
}

async fn print_memory(c: &Cluster, agents: usize) {
    let leader = c.wait_for_leader(Duration::from_secs(10)).await.ok();
    for (i, ctl) in c.controllers.iter().enumerate() {
        let role = if Some(i) == leader {
            "leader"
        } else {
            "follower"
        };
        println!(
            "controller {} ({role}) memory at the end: {}",
            ctl.id,
            memory_of(ctl.pid())
        );
    }
    if let Some(m) = Memory::of_self() {
        println!("bench process ({agents} sim agents, their sessions and listeners) memory: {m}");
    }
}

/// `n` agents inside this process, each with the sim runtime, its own
/// session to the controllers, its own Agent service listener on
/// 127.0.0.1:0 and its own data dir under the cluster's temp dir.
struct SimFleet {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl SimFleet {
    fn start(c: &Cluster, n: usize) -> anyhow::Result<SimFleet> {
        let stop = CancellationToken::new();
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let controllers = c.addresses();
        // Room for everything: a bench about the control plane, not about fit.
        let capacity = drover_agent::config::capacity(Some("64"), Some("256Gi"))?;
        // The agents' own runtime stalling would delay their heartbeats and
        // keep-alive answers as much as a stalled controller: say so.
        let since = Instant::now();
        tasks.spawn(drover_controller::stalls::watch(
            stop.clone(),
            move |late| {
                println!(
                    "  {:>8}: the bench process's runtime (its sim agents) was stalled for {}",
                    secs(since.elapsed()),
                    secs(late)
                )
            },
        ));
        for i in 1..=n {
            let node = format!("sim-{i:04}");
            let data_dir = c.dir.path().join("sim-agents").join(&node);
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into())
                .with_context(|| format!("binding the Agent service of {node}"))?
                .with_nodelay(Some(true));
            let bound = incoming.local_addr()?;
            let security = c.agent_security(&node, &data_dir.join("tls"))?;
            let settings = Settings {
                node: node.clone(),
                controllers: controllers.clone(),
                labels: BTreeMap::new(),
                capacity,
                data_dir,
                advertise: bound.to_string(),
                heartbeat: Duration::from_millis(500),
                stop_after_disconnect: None,
                service_proxy: drover_agent::services::ServiceProxy::Off,
                service_dns: None,
                service_dns_upstream: Vec::new(),
                security,
                join: None,
                tls_dir: None,
                debug_sessions: Default::default(),
                logs: Default::default(),
                usage_interval: Duration::from_secs(5),
            };
            let (stop, failures) = (stop.child_token(), failures.clone());
            tasks.spawn(async move {
                let runtime = Arc::new(SimRuntime::new());
                if let Err(e) = drover_agent::run_with(runtime, settings, incoming, stop).await {
                    let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                    f.push(format!("{node}: {e}"));
                }
            });
        }
        Ok(SimFleet {
            stop,
            tasks,
            failures,
        })
    }

    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stop every agent (their sim replicas vanish with them); returns the
    /// errors agents stopped with.
    async fn stop(mut self) -> Vec<String> {
        self.stop.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            eprintln!(
                "{} sim agents did not stop within 30s; aborting them",
                self.tasks.len()
            );
            self.tasks.abort_all();
        }
        self.failures()
    }
}
