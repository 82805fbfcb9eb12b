//! Reading a daemon's `/metrics` as Prometheus would: one plain HTTP GET,
//! the body parsed twice — by the `prometheus-parse` crate and by a strict
//! line check of the text format 0.0.4 — so a test fails on output a real
//! scraper would refuse.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: every sample as `name{label="v",...}` → value (histograms as
/// their `_count`), sorted.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// The value of `series` (e.g. `drover_raft_leader` or
    /// `drover_raft_proposals_total{outcome="committed"}`), if exposed.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// [`Samples::get`], or 0 for a series not exposed.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }
}

/// GET `http://{addr}/metrics` and parse it; fails on a non-200 answer, a
/// wrong content type or text that does not parse strictly.
pub async fn scrape(addr: &str) -> anyhow::Result<Samples> {
    let text = get(addr).await?;
    parse(&text)
}

/// The body of `GET /metrics` on `addr`.
pub async fn get(addr: &str) -> anyhow::Result<String> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .with_context(|| format!("reading /metrics from {addr}: timed out"))??;
    let answer = String::from_utf8(answer).context("/metrics is not UTF-8")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("no end of HTTP headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET /metrics on {addr}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    if !head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4")
    {
        bail!("GET /metrics on {addr}: not the Prometheus text format: {head}");
    }
    Ok(body.to_string())
}

/// Parse an exposition with `prometheus-parse` after a strict check of the
/// text format: every sample's family was declared by `# TYPE` before it,
/// names and label sets are well formed, values are numbers, no series twice.
pub fn parse(text: &str) -> anyhow::Result<Samples> {
    strict_check(text)?;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .context("prometheus-parse refused the exposition")?;
    let mut out = BTreeMap::new();
    for s in scrape.samples {
        let value = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => continue,
        };
        let labels = s.labels.to_string();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{labels}}}", s.metric)
        };
        out.insert(key, value);
    }
    Ok(Samples(out))
}

fn strict_check(text: &str) -> anyhow::Result<()> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .with_context(|| format!("line {n}: TYPE without a type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                bail!("line {n}: unknown type {kind:?}");
            }
            if typed.insert(name.to_string(), kind.to_string()).is_some() {
                bail!("line {n}: family {name} declared twice");
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("line {n}: no value: {line:?}"))?;
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            bail!("line {n}: value {value:?} is not a number");
        }
        let name = series.split('{').next().unwrap_or(series);
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !valid_name {
            bail!("line {n}: invalid metric name {name:?}");
        }
        if let Some(labels) = series.strip_prefix(name) {
            let wrapped = labels.starts_with('{') && labels.ends_with('}');
            if !labels.is_empty() && !wrapped {
                bail!("line {n}: malformed label set {labels:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !typed.contains_key(family) {
            bail!("line {n}: sample {name} has no # TYPE before it");
        }
        if !seen.insert(series.to_string()) {
            bail!("line {n}: series {series} appears twice");
        }
    }
    if typed.is_empty() {
        bail!("the exposition declares no metric family");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strict_check_refuses_what_scrapers_refuse() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 0.5\nh_count 3\n";
        let s = parse(good).expect("parses");
        assert_eq!(s.get("a_total{x=\"1\"}"), Some(2.0));
        assert_eq!(s.get("h"), Some(3.0));
        for bad in [
            "a_total 1\n",
            "# TYPE a gauge\na one\n",
            "# TYPE a gauge\na 1\na 2\n",
            "# TYPE 1a gauge\n1a 1\n",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
