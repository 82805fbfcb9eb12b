//! The replicated store alone: three controllers on 127.0.0.1/.2/.3 with
//! fsync on (sled flush before raft's persisted messages), measuring apply
//! commit latency with one client, throughput with many concurrent clients
//! (all on the leader, then spread over the members as etcd-load spreads
//! its clients: the peer's figure compares with the second),
//! and leader failover (SIGKILL the leader → first acknowledged write) over
//! repeated kills.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_tests::cluster::{apply_noted, connect, Options};
use drover_tests::Cluster;

use super::measure::{cores, cpu_time, ms, percentile};

/// Latency and throughput of one cluster.
struct Figures {
    p50: Duration,
    p99: Duration,
    /// All clients on the leader.
    throughput: f64,
    /// Clients spread over the members, as etcd-load spreads them.
    spread: f64,
    /// Applies acknowledged in all (warm-up, latency and throughput parts).
    applies: u64,
}

pub async fn run(
    latency_ops: usize,
    clients: usize,
    seconds: u64,
    kills: usize,
) -> anyhow::Result<()> {
    println!(
        "drover store benchmark: 3 controllers on loopback, sled fsync on, {} cores",
        cores()
    );
    // The same measurements on a plaintext cluster first (stopped before the
    // TLS one starts, so they do not share the cores), then on mutual TLS.
    let insecure = {
        println!("-- --insecure (plaintext) --");
        let c = Cluster::start_with(
            3,
            Options {
                insecure: true,
                ..Options::default()
            },
        )
        .await?;
        measure(&c, latency_ops, clients, seconds).await?
    };
    println!("-- mutual TLS (the default) --");
    let mut c = Cluster::start(3).await?;
    let tls = measure(&c, latency_ops, clients, seconds).await?;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "TLS / --insecure: latency p50 {} vs {} ({:.2}x), p99 {} vs {} ({:.2}x), throughput {:.0} vs {:.0} applies/s ({:.2}x)",
        ms(tls.p50),
        ms(insecure.p50),
        ratio(tls.p50, insecure.p50),
        ms(tls.p99),
        ms(insecure.p99),
        ratio(tls.p99, insecure.p99),
        tls.throughput,
        insecure.throughput,
        tls.throughput / insecure.throughput.max(1e-9)
    );
    println!(
        "TLS / --insecure, clients spread over the members: {:.0} vs {:.0} applies/s ({:.2}x)",
        tls.spread,
        insecure.spread,
        tls.spread / insecure.spread.max(1e-9)
    );

    // 3. Failover (TLS cluster): SIGKILL the leader, time until a write is acknowledged.
    let mut detect = Vec::new();
    for round in 0..kills {
        c.wait_converged(Duration::from_secs(60)).await?;
        let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
        let survivor = (leader + 1) % 3;
        let mut client = c.client(survivor).await?;
        apply_noted(&mut client, "failover", 0, "start").await?;
        let t = Instant::now();
        c.kill(leader);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match apply_noted(&mut client, "failover", 0, &(attempt % 50 + 2).to_string()).await {
                Ok(_) => break,
                Err(e) if t.elapsed() > Duration::from_secs(30) => {
                    anyhow::bail!("no write within 30s of the kill: {e}")
                }
                Err(_) => {}
            }
        }
        let took = t.elapsed();
        detect.push(took);
        println!(
            "  kill {:>2}: leader {} killed → first acknowledged write after {}",
            round + 1,
            leader + 1,
            ms(took)
        );
        c.restart(leader)?;
    }
    detect.sort();
    println!(
        "leader failover (SIGKILL → first acknowledged write), {kills} kills: median {}  p99 {}  max {}",
        ms(percentile(&detect, 0.50)),
        ms(percentile(&detect, 0.99)),
        ms(percentile(&detect, 1.0))
    );
    Ok(())
}

/// Latency (one client, sequential applies via the leader, then via a
/// follower), then throughput (`clients` concurrent clients for `seconds`,
/// all on the leader, then spread over the members).
async fn measure(
    c: &Cluster,
    latency_ops: usize,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let mut client = c.client(leader).await?;
    for i in 0..20 {
        apply_noted(&mut client, "warmup", 0, &(i % 3 + 1).to_string()).await?;
    }
    let mut samples = Vec::with_capacity(latency_ops);
    for i in 0..latency_ops {
        let t = Instant::now();
        apply_noted(&mut client, "latency", 0, &i.to_string())
            .await
            .context("latency apply")?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "apply commit latency, 1 client, {latency_ops} applies via the leader: p50 {}  p99 {}  max {}",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(percentile(&samples, 1.0))
    );
    let follower = (leader + 1) % 3;
    let mut fclient = c.client(follower).await?;
    let mut fsamples = Vec::with_capacity(latency_ops / 4);
    for i in 0..latency_ops / 4 {
        let t = Instant::now();
        apply_noted(&mut fclient, "latency-f", 0, &i.to_string())
            .await
            .context("latency apply")?;
        fsamples.push(t.elapsed());
    }
    fsamples.sort();
    println!(
        "apply commit latency, 1 client, {} applies via a follower (forwarded): p50 {}  p99 {}",
        latency_ops / 4,
        ms(percentile(&fsamples, 0.50)),
        ms(percentile(&fsamples, 0.99))
    );

    let on_leader = vec![c.controllers[leader].address.clone()];
    let (on_leader_rate, n) = throughput(c, &on_leader, clients, seconds).await;
    println!(
        "throughput, {clients} concurrent clients on the leader for {seconds}s: {on_leader_rate:.0} applies/s ({n} acknowledged)"
    );
    // etcd-load's shape: client i on member i mod 3, a follower relaying
    // what it is sent to the leader.
    let members: Vec<String> = (0..c.controllers.len())
        .map(|i| {
            c.controllers[(leader + i) % c.controllers.len()]
                .address
                .clone()
        })
        .collect();
    let (spread, spread_n) = throughput(c, &members, clients, seconds).await;
    println!(
        "throughput, {clients} concurrent clients spread over the {} members (client i on member i mod {}, the leader first: etcd-load's shape) for {seconds}s: {spread:.0} applies/s ({spread_n} acknowledged)",
        members.len(),
        members.len()
    );
    Ok(Figures {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        throughput: on_leader_rate,
        spread,
        applies: 20 + latency_ops as u64 + (latency_ops / 4) as u64 + n + spread_n,
    })
}

/// `clients` concurrent clients for `seconds`, client i writing through
/// `addresses[i % len]`: the applies per second acknowledged, and how many.
/// A failed apply is counted apart and reported.
async fn throughput(c: &Cluster, addresses: &[String], clients: usize, seconds: u64) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..clients {
        let (done, failed) = (done.clone(), failed.clone());
        let address = addresses[n % addresses.len()].clone();
        let security = c.security.clone();
        tasks.spawn(async move {
            let Ok(mut client) = connect(&address, &security).await else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut i = 0u32;
            while Instant::now() < stop_at {
                i += 1;
                match apply_noted(
                    &mut client,
                    &format!("load-{n}"),
                    0,
                    &(i % 50 + 1).to_string(),
                )
                .await
                {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    let t = Instant::now();
    while tasks.join_next().await.is_some() {}
    let elapsed = t.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("  ({failed} applies or connections failed during this run)");
    }
    (n as f64 / elapsed, n)
}

/// Latency and throughput with metrics on and off, alternating `rounds`
/// times (a fresh cluster each), then the medians side by side. "On" is the
/// default controller with every controller scraped once a second (a busier
/// scraper than Prometheus' usual 15 s); "off" is `--metrics-listen=`, which
/// serves nothing and records nothing.
pub async fn metrics_compare(
    latency_ops: usize,
    clients: usize,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    println!(
        "drover store benchmark, metrics on vs off: 3 controllers on loopback, mutual TLS, sled fsync on, {} cores, {rounds} rounds each",
        cores()
    );
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 1..=rounds {
        for metrics in [true, false] {
            println!(
                "-- round {round}, metrics {} --",
                if metrics { "on" } else { "off" }
            );
            let options = Options {
                extra_args: if metrics {
                    Vec::new()
                } else {
                    vec!["--metrics-listen=".to_string()]
                },
                ..Options::default()
            };
            let c = Cluster::start_with(3, options).await?;
            let cpu = |c: &Cluster| -> Duration {
                c.controllers
                    .iter()
                    .filter_map(|x| x.pid().and_then(cpu_time))
                    .sum()
            };
            let scraper = metrics.then(|| super::scrape_every_second(&c));
            let cpu_before = cpu(&c);
            let figures = measure(&c, latency_ops, clients, seconds).await?;
            let used = cpu(&c).saturating_sub(cpu_before);
            if let Some(s) = scraper {
                let scrapes = s.stop().await?;
                println!("  ({scrapes} scrapes during the round)");
            }
            // Controllers' CPU per 1,000 acknowledged applies: less at the
            // mercy of other work on the machine than the clock is.
            let per_k = used.as_secs_f64() * 1000.0 / figures.applies.max(1) as f64;
            println!(
                "  controllers' CPU: {:.2} s for {} applies ({per_k:.3} s per 1,000)",
                used.as_secs_f64(),
                figures.applies
            );
            if metrics {
                on.push((figures, per_k))
            } else {
                off.push((figures, per_k))
            }
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        percentile(v, 0.5)
    };
    let fmedian = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut on_p50, mut off_p50): (Vec<_>, Vec<_>) = (
        on.iter().map(|(f, _)| f.p50).collect(),
        off.iter().map(|(f, _)| f.p50).collect(),
    );
    let (mut on_p99, mut off_p99): (Vec<_>, Vec<_>) = (
        on.iter().map(|(f, _)| f.p99).collect(),
        off.iter().map(|(f, _)| f.p99).collect(),
    );
    let (mut on_tp, mut off_tp): (Vec<_>, Vec<_>) = (
        on.iter().map(|(f, _)| f.throughput).collect(),
        off.iter().map(|(f, _)| f.throughput).collect(),
    );
    let (mut on_cpu, mut off_cpu): (Vec<_>, Vec<_>) = (
        on.iter().map(|(_, c)| *c).collect(),
        off.iter().map(|(_, c)| *c).collect(),
    );
    let (p50_on, p50_off) = (median(&mut on_p50), median(&mut off_p50));
    let (p99_on, p99_off) = (median(&mut on_p99), median(&mut off_p99));
    let (tp_on, tp_off) = (fmedian(&mut on_tp), fmedian(&mut off_tp));
    let (cpu_on, cpu_off) = (fmedian(&mut on_cpu), fmedian(&mut off_cpu));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "metrics on / off (medians of {rounds}): latency p50 {} vs {} ({:.3}x), p99 {} vs {} ({:.3}x), \
         throughput {:.0} vs {:.0} applies/s ({:.3}x; cost {:+.1} %, target < 2 %)",
        ms(p50_on),
        ms(p50_off),
        ratio(p50_on, p50_off),
        ms(p99_on),
        ms(p99_off),
        ratio(p99_on, p99_off),
        tp_on,
        tp_off,
        tp_on / tp_off.max(1e-9),
        (1.0 - tp_on / tp_off.max(1e-9)) * 100.0
    );
    println!(
        "metrics on / off: controllers' CPU per 1,000 applies {cpu_on:.3} s vs {cpu_off:.3} s ({:.3}x; cost {:+.1} %)",
        cpu_on / cpu_off.max(1e-9),
        (cpu_on / cpu_off.max(1e-9) - 1.0) * 100.0
    );
    Ok(())
}
