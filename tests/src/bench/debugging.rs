//! Throughput of `droverctl port-forward` and `droverctl cp` beside a direct
//! connection, on one Docker agent.
//!
//! ```text
//!  replica: busybox httpd serving an N MiB file of random bytes (no hostPort)
//!  port-forward  GET via droverctl port-forward (TCP → gRPC/TLS → agent → container IP)
//!       direct   GET to the container's IP:8080 from this host
//!  cp            droverctl cp REPLICA:/www/blob (tar through an exec stream, TLS)
//!       direct   docker cp CONTAINER:/www/blob (the engine's own archive API)
//!  each: `rounds` runs, alternating, median of each side; ratio = drover / direct
//! ```
//!
//! The agent's node carries a name unique to the run; its containers are
//! removed when the benchmark ends, however it ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use drover_tests::cluster::containers_of;
use drover_tests::docker::Containers;
use drover_tests::Cluster;

use super::measure::median;

pub struct Config {
    pub mebibytes: u32,
    pub rounds: usize,
    pub timeout: Duration,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let node = format!("bench-debug-{}", std::process::id());
    let _sweep = Containers(vec![node.clone()]);
    let c = Cluster::with_agents(1, "docker", std::slice::from_ref(&node)).await?;
    let bytes = u64::from(cfg.mebibytes) << 20;
    let script = format!(
        "mkdir -p /www && head -c {bytes} /dev/urandom > /www/blob && touch /www/ready && exec httpd -f -p 8080 -h /www"
    );
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: fat}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: fat}}}}
  template:
    metadata: {{labels: {{app: fat}}}}
    spec:
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", {script:?}]
"#,
        image = super::IMAGE
    );
    let file = c.dir.path().join("fat.yaml");
    std::fs::write(&file, manifest)?;
    check(
        &c.ctl().run(&["apply", "-f", &file.to_string_lossy()]),
        "apply",
    )?;
    let placed = c
        .wait_for("the replica running", cfg.timeout, || {
            c.running_placements("fat", 1)
        })
        .await?;
    let replica = placed.into_keys().next().context("one replica")?;
    c.wait_for("the file written", cfg.timeout, || async {
        let out = c
            .ctl()
            .run(&["exec", &replica, "--", "test", "-e", "/www/ready"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await?;
    let container = containers_of(&node, false)
        .into_iter()
        .next()
        .context("the replica's container")?;
    let ip = docker_ip(&container)?;

    let mut forward = c.ctl().spawn(&["port-forward", &replica, ":8080"]);
    let deadline = Instant::now() + cfg.timeout;
    let local: u16 = loop {
        let out = forward.output();
        if let Some(line) = out.lines().find(|l| l.starts_with("Forwarding from ")) {
            break line
                .split(" -> ")
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .context("the Forwarding line's port")?;
        }
        if forward.exited().is_some() || Instant::now() > deadline {
            bail!("port-forward did not start: {out}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "drover debugging benchmark: a {} MiB file, {} rounds per side, one Docker agent, mutual TLS",
        cfg.mebibytes, cfg.rounds
    );

    let (mut pf, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..cfg.rounds {
        direct.push(rate(bytes, || http_get(&format!("{ip}:8080"), bytes))?);
        pf.push(rate(bytes, || {
            http_get(&format!("127.0.0.1:{local}"), bytes)
        })?);
    }
    report(
        "port-forward GET",
        &pf,
        "direct GET to the container IP",
        &direct,
    );

    let (mut cp, mut docker_cp) = (Vec::new(), Vec::new());
    let out = c.dir.path().join("copy");
    for _ in 0..cfg.rounds {
        docker_cp.push(rate(bytes, || {
            let _ = std::fs::remove_file(&out);
            let o = Command::new("docker")
                .args(["cp", &format!("{container}:/www/blob")])
                .arg(&out)
                .output()?;
            check(&o, "docker cp")
        })?);
        cp.push(rate(bytes, || {
            let _ = std::fs::remove_file(&out);
            check(
                &c.ctl().run(&[
                    "cp",
                    &format!("{replica}:/www/blob"),
                    &out.to_string_lossy(),
                ]),
                "droverctl cp",
            )
        })?);
    }
    report("cp from the replica", &cp, "docker cp", &docker_cp);
    Ok(())
}

/// MiB/s of one run of `f` moving `bytes`.
fn rate(bytes: u64, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
}

fn report(what: &str, ours: &[f64], base: &str, theirs: &[f64]) {
    let (a, b) = (median_f(ours), median_f(theirs));
    println!(
        "{what}: {a:.0} MiB/s; {base}: {b:.0} MiB/s; ratio {:.2}",
        a / b
    );
}

fn median_f(values: &[f64]) -> f64 {
    // `measure::median` works on durations: rates as nanoseconds per MiB.
    let as_durations: Vec<Duration> = values
        .iter()
        .map(|r| Duration::from_secs_f64(1.0 / r))
        .collect();
    1.0 / median(&as_durations).as_secs_f64()
}

fn http_get(addr: &str, expect: u64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.write_all(b"GET /blob HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total < expect {
        bail!("GET {addr} returned {total} bytes, fewer than the file's {expect}");
    }
    Ok(())
}

fn docker_ip(container: &str) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            container,
        ])
        .output()?;
    check(&out, "docker inspect")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(String::from)
        .ok_or_else(|| anyhow!("container {container} has no IP address"))
}

fn check(out: &std::process::Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}
