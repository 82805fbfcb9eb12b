//! Services on a lab: the cost of going through a cluster IP rather than
//! straight to a replica, and how long a dead replica stays in rotation.
//!
//! ```text
//!  lab (1 controller, 3 agent hosts, --service-proxy nftables), backend: 2 busybox httpd
//!  replicas on host port 8081, Service backend (port 80 → 8081)
//!  client: threads inside host n3's network namespace (setns), HTTP/1.0 GETs
//!    direct   → each thread one endpoint's address:8081          ┐ alternating,
//!    service  → CLUSTER-IP:80 (kernel DNAT to either endpoint)   ┘ --rounds each
//!    => requests/s, p50, p99 per side, and the ratio
//!  per kill: `lab kill` a backend's host at t0; one client asks the cluster IP
//!    every 20 ms (200 ms timeout) => the time from t0 to the last request that
//!    still went to the dead replica (failed), then `lab start` it again
//! ```
//!
//! Prints numbers, asserts nothing. Needs root (network namespaces).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_proto::pb;

use super::measure::{median, ms, percentile, secs};

pub struct Config {
    /// Requests per side and round.
    pub requests: usize,
    /// Client threads.
    pub concurrency: usize,
    pub rounds: usize,
    pub kills: usize,
    /// `process` or `docker`.
    pub runtime: String,
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend}
spec:
  replicas: 2
  selector:
    matchLabels: {app: backend}
  template:
    metadata:
      labels: {app: backend}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: drover/busybox:1
        command: ["sh", "-c"]
        args:
        - mkdir -p www && echo "backend $HOSTNAME" > www/index.html && exec httpd -f -p 8081 -h www
        ports:
        - {name: http, containerPort: 8081, hostPort: 8081}
        readinessProbe:
          tcpSocket: {port: http}
          periodSeconds: 1
"#;

/// One HTTP/1.0 GET; Err on any failure or after `timeout`.
fn get(target: SocketAddr, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if body.starts_with(b"HTTP/1.") {
        Ok(body)
    } else {
        Err(std::io::Error::other("not an HTTP answer"))
    }
}

/// Move this thread into the network namespace `ns` (`/var/run/netns/NS`).
fn enter(ns: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("opening network namespace {ns}"))?;
    // SAFETY: setns on an open namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns into {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `requests` GETs from `threads` threads in `ns`; thread i asks
/// `targets[i % len]`. Returns the elapsed time, the sorted latencies and
/// the failures.
fn load(
    ns: &str,
    targets: &[SocketAddr],
    requests: usize,
    threads: usize,
) -> anyhow::Result<(Duration, Vec<Duration>, usize)> {
    let left = Arc::new(AtomicUsize::new(requests));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (ns, target, left) = (ns.to_string(), targets[i % targets.len()], left.clone());
            std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, usize)> {
                enter(&ns)?;
                let (mut lat, mut failed) = (Vec::new(), 0);
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let t = Instant::now();
                    match get(target, Duration::from_secs(2)) {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                Ok((lat, failed))
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for h in handles {
        let (lat, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(lat);
        failed += f;
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok((elapsed, all, failed))
}

/// From `ns`, ask `target` every 20 ms until 2 s pass with no failure;
/// the time from `t0` to the last failure (zero: none failed).
fn time_out_of_rotation(
    ns: &str,
    target: SocketAddr,
    t0: Instant,
    limit: Duration,
) -> anyhow::Result<(Duration, usize)> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> anyhow::Result<(Duration, usize)> {
        enter(&ns)?;
        let (mut last_failure, mut failures) = (None, 0);
        let mut last_ok_streak_start = Instant::now();
        loop {
            let now = Instant::now();
            match get(target, Duration::from_millis(200)) {
                Ok(_) => {}
                Err(_) => {
                    failures += 1;
                    last_failure = Some(now.duration_since(t0));
                    last_ok_streak_start = Instant::now();
                }
            }
            if last_ok_streak_start.elapsed() > Duration::from_secs(2) {
                return Ok((last_failure.unwrap_or_default(), failures));
            }
            if t0.elapsed() > limit {
                bail!("requests still failing {} after the kill", secs(limit));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

async fn endpoints(
    client: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<String>> {
    let answer = client
        .list_endpoints(pb::ListConfigRequest {
            namespace: "default".into(),
            names: vec!["backend".into()],
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut out = Vec::new();
    for o in answer.objects {
        let v: serde_json::Value = serde_json::from_str(&o.json)?;
        for e in v["endpoints"].as_array().into_iter().flatten() {
            let port = e["ports"][0]["target_port"].as_u64().unwrap_or_default();
            out.push(format!("{}:{port}", e["ip"].as_str().unwrap_or_default()));
        }
    }
    out.sort();
    Ok(out)
}

async fn wait_endpoints(
    client: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    want: usize,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let eps = endpoints(client).await?;
        if eps.len() == want {
            return Ok(eps);
        }
        if Instant::now() > deadline {
            bail!("backend has endpoints {eps:?}, not {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn side(name: &str, (elapsed, lat, failed): &(Duration, Vec<Duration>, usize)) -> f64 {
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    println!(
        "  {name:<8} {rate:>8.0} requests/s   p50 {}   p99 {}   failed {failed}",
        ms(median(lat)),
        ms(percentile(lat, 0.99)),
    );
    rate
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("lab");
    let opts = drover_lab::UpOptions {
        dir: dir.clone(),
        controllers: 1,
        agents: 3,
        runtime: cfg.runtime.clone(),
        controller_bin: drover_lab::built_binary("drover-controller")?,
        agent_bin: drover_lab::built_binary("drover-agent")?,
        controller_args: Vec::new(),
        agent_args: Vec::new(),
        busybox_path: None,
    };
    let mut lab = drover_lab::up(&opts, &mut |line| eprintln!("  lab: {line}")).await?;
    let result = measure(&cfg, &mut lab).await;
    if let Err(e) = drover_lab::down(&dir) {
        eprintln!("lab down failed: {e:#}");
    }
    result
}

async fn measure(cfg: &Config, lab: &mut drover_lab::Lab) -> anyhow::Result<()> {
    let mut client = super::client(&lab.servers()[0], &lab.security()?).await?;
    client
        .apply(pb::ApplyRequest {
            files: vec![pb::ManifestFile {
                name: "backend.yaml".into(),
                content: MANIFEST.into(),
            }],
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let eps = wait_endpoints(&mut client, 2).await?;
    let services = client
        .list_services(pb::ListConfigRequest {
            namespace: "default".into(),
            names: vec!["backend".into()],
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let record: serde_json::Value =
        serde_json::from_str(&services.objects.first().context("no Service backend")?.json)?;
    let cluster_ip = record["cluster_ip"]
        .as_str()
        .context("no cluster IP")?
        .to_string();
    let service: SocketAddr = format!("{cluster_ip}:80").parse()?;
    let direct: Vec<SocketAddr> = eps.iter().map(|e| e.parse()).collect::<Result<_, _>>()?;
    let ns = lab.host("n3")?.ns.clone();
    // Warm up both paths (ARP, conntrack, httpd start).
    load(&ns, &direct, 200, 2)?;
    load(&ns, &[service], 200, 2)?;
    println!(
        "services ({} runtime, lab, client on n3, {} threads, {} requests per side and round, debug or release as built):",
        cfg.runtime, cfg.concurrency, cfg.requests
    );
    let (mut direct_rates, mut service_rates) = (Vec::new(), Vec::new());
    for round in 1..=cfg.rounds {
        println!(" round {round}");
        let d = load(&ns, &direct, cfg.requests, cfg.concurrency)?;
        direct_rates.push(side("direct", &d));
        let s = load(&ns, &[service], cfg.requests, cfg.concurrency)?;
        service_rates.push(side("service", &s));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "services: cluster IP / direct requests/s = {:.2}",
        mean(&service_rates) / mean(&direct_rates)
    );

    let mut out_of_rotation = Vec::new();
    for kill in 1..=cfg.kills {
        let eps = wait_endpoints(&mut client, 2).await?;
        let victim_ip = eps[kill % 2]
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let Some(victim) = lab
            .agents()
            .find(|h| h.ip == victim_ip && h.name != "n3")
            .map(|h| h.name.clone())
        else {
            eprintln!("  kill {kill}: the backend is on the client's host; skipped");
            continue;
        };
        let t0 = Instant::now();
        lab.kill(&victim)?;
        let (gone, failures) = time_out_of_rotation(&ns, service, t0, Duration::from_secs(30))?;
        println!(
            "  kill {kill}: host {victim}: last request to the dead replica {} after the kill ({failures} failed)",
            secs(gone)
        );
        out_of_rotation.push(gone);
        lab.start(&victim)?;
    }
    if !out_of_rotation.is_empty() {
        out_of_rotation.sort();
        println!(
            "services: host death → out of every node's rotation: median {}, max {} ({} kills; node timeout 3 s)",
            secs(median(&out_of_rotation)),
            secs(*out_of_rotation.last().unwrap_or(&Duration::ZERO)),
            out_of_rotation.len()
        );
    }
    Ok(())
}
