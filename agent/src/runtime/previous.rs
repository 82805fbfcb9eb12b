//! The output of each replica's previous run, kept across a restart for
//! `droverctl logs --previous`.
//!
//! ```text
//!   container exits ─▶ supervisor: Restart ─▶ keep_previous(replica, old id)
//!                                               │ the runtime reads the old logs
//!                                               ▼
//!        <data-dir>/previous/<replica>.log  (replaced at every restart)
//!                                               │
//!                                               ▼ then: remove old, start new
//!   droverctl logs --previous ─▶ Agent.Logs{previous} ─▶ read(replica, opts)
//! ```
//!
//! A kept run is a sequence of records, each one piece of output (a line
//! when the runtime knows lines) with its stream and, where the runtime
//! knows it, the time it was written:
//! `[stream: u8][unix ms: i64, i64::MIN unknown][length: u32][bytes]`, all
//! little-endian. Only the newest [`PREVIOUS_LOG_BYTES`] of output are kept,
//! so a crash loop's last words are there and the disk use is bounded.

use std::collections::VecDeque;
use std::path::PathBuf;

use super::{tail_lines, LogChunk, LogOptions, LogSource, UnixMs, PREVIOUS_LOG_BYTES};
use crate::error::{AgentError, Result};

/// One piece of a kept run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub source: LogSource,
    /// When it was written, if the runtime knows.
    pub at: Option<UnixMs>,
    pub data: Vec<u8>,
}

/// Collects a run's output, dropping the oldest records beyond the cap.
#[derive(Debug, Default)]
pub struct Collector {
    records: VecDeque<Record>,
    bytes: u64,
}

impl Collector {
    pub fn push(&mut self, record: Record) {
        let mut record = record;
        if record.data.len() as u64 > PREVIOUS_LOG_BYTES {
            let cut = record.data.len() - PREVIOUS_LOG_BYTES as usize;
            record.data.drain(..cut);
        }
        self.bytes += record.data.len() as u64;
        self.records.push_back(record);
        while self.bytes > PREVIOUS_LOG_BYTES {
            match self.records.pop_front() {
                Some(r) => self.bytes -= r.data.len() as u64,
                None => break,
            }
        }
    }

    pub fn into_records(self) -> Vec<Record> {
        self.records.into()
    }
}

/// The kept runs of one node's replicas, one file each.
#[derive(Debug, Clone)]
pub struct PreviousLogs {
    dir: PathBuf,
}

impl PreviousLogs {
    pub fn new(dir: impl Into<PathBuf>) -> PreviousLogs {
        PreviousLogs { dir: dir.into() }
    }

    fn path(&self, replica: &str) -> PathBuf {
        self.dir.join(format!("{replica}.log"))
    }

    /// Replace the replica's kept run (through a temp file and a rename, so
    /// a reader sees the old run or the new one, never half of one).
    pub async fn keep(&self, replica: &str, records: Vec<Record>) -> Result<()> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| AgentError::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.path(replica);
        let tmp = self.dir.join(format!(".{replica}.log.tmp"));
        tokio::fs::write(&tmp, encode(&records))
            .await
            .map_err(|e| AgentError::io(format!("writing {}", tmp.display()), e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| AgentError::io(format!("writing {}", path.display()), e))
    }

    /// The replica's kept run, filtered as `opts` asks (tail, since,
    /// timestamps), in chunks of at most 256 KiB.
    pub async fn read(&self, replica: &str, opts: &LogOptions) -> Result<Vec<LogChunk>> {
        let path = self.path(replica);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::NoPreviousRun(replica.to_string()))
            }
            Err(e) => return Err(AgentError::io(format!("reading {}", path.display()), e)),
        };
        let records = decode(&bytes).ok_or_else(|| {
            AgentError::io(
                format!("reading {}", path.display()),
                std::io::Error::other("the file is damaged"),
            )
        })?;
        select(records, opts)
    }

    pub fn forget(&self, replica: &str) {
        let _ = std::fs::remove_file(self.path(replica));
    }
}

/// Apply since, tail and timestamps to a kept run.
fn select(records: Vec<Record>, opts: &LogOptions) -> Result<Vec<LogChunk>> {
    let timed = records.iter().all(|r| r.at.is_some());
    if (opts.timestamps || opts.since_unix_ms.is_some()) && !timed {
        return Err(AgentError::Unsupported(
            "this runtime does not record when each line was written: --since and --timestamps need the docker runtime".into(),
        ));
    }
    let mut records: Vec<Record> = match opts.since_unix_ms {
        Some(since) => records
            .into_iter()
            .filter(|r| r.at.is_some_and(|at| at >= since))
            .collect(),
        None => records,
    };
    if let Some(n) = opts.tail {
        records = tail_records(records, n);
    }
    let mut chunks: Vec<LogChunk> = Vec::new();
    for r in records {
        let mut data = Vec::with_capacity(r.data.len() + 32);
        if opts.timestamps {
            data.extend_from_slice(drover_proto::timestamp::rfc3339(r.at.unwrap_or(0)).as_bytes());
            data.push(b' ');
        }
        data.extend_from_slice(&r.data);
        match chunks.last_mut() {
            Some(last) if last.source == r.source && last.data.len() + data.len() <= 256 * 1024 => {
                last.data.extend_from_slice(&data)
            }
            _ => chunks.push(LogChunk {
                source: r.source,
                data,
            }),
        }
    }
    Ok(chunks)
}

/// The records holding the last `n` lines (the first one cut to its line).
fn tail_records(records: Vec<Record>, n: u32) -> Vec<Record> {
    let mut left = n;
    let mut kept = Vec::new();
    for mut r in records.into_iter().rev() {
        if left == 0 {
            break;
        }
        let lines = {
            let body = r.data.strip_suffix(b"\n").unwrap_or(&r.data);
            body.iter().filter(|b| **b == b'\n').count() as u32 + 1
        };
        if lines > left {
            r.data = tail_lines(&r.data, left).to_vec();
            left = 0;
        } else {
            left -= lines;
        }
        kept.push(r);
    }
    kept.reverse();
    kept
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.push(match r.source {
            LogSource::Stdout => 1,
            LogSource::Stderr => 2,
        });
        out.extend_from_slice(&r.at.unwrap_or(i64::MIN).to_le_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.data);
    }
    out
}

fn decode(mut bytes: &[u8]) -> Option<Vec<Record>> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let source = match bytes.first()? {
            1 => LogSource::Stdout,
            2 => LogSource::Stderr,
            _ => return None,
        };
        let at = i64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(9..13)?.try_into().ok()?) as usize;
        let data = bytes.get(13..13 + len)?.to_vec();
        bytes = &bytes[13 + len..];
        records.push(Record {
            source,
            at: (at != i64::MIN).then_some(at),
            data,
        });
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: LogSource, at: Option<i64>, text: &str) -> Record {
        Record {
            source,
            at,
            data: text.as_bytes().to_vec(),
        }
    }

    fn text(chunks: &[LogChunk]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    #[test]
    fn records_round_trip_through_the_file_format() {
        let records = vec![
            line(LogSource::Stdout, Some(1_700_000_000_000), "a\n"),
            line(LogSource::Stderr, None, "b"),
        ];
        assert_eq!(decode(&encode(&records)), Some(records));
        assert_eq!(decode(&[1, 0, 0]), None);
    }

    #[test]
    fn the_collector_keeps_the_newest_output_within_the_cap() {
        let mut c = Collector::default();
        let big = vec![b'x'; (PREVIOUS_LOG_BYTES / 2) as usize];
        for _ in 0..3 {
            c.push(Record {
                source: LogSource::Stdout,
                at: None,
                data: big.clone(),
            });
        }
        c.push(line(LogSource::Stdout, None, "last words\n"));
        let records = c.into_records();
        let total: usize = records.iter().map(|r| r.data.len()).sum();
        assert!(total as u64 <= PREVIOUS_LOG_BYTES);
        assert_eq!(records.last().expect("kept").data, b"last words\n");
    }

    #[test]
    fn since_tail_and_timestamps_select_like_kubectl() {
        let records = vec![
            line(LogSource::Stdout, Some(1_000), "one\n"),
            line(LogSource::Stderr, Some(2_000), "two\n"),
            line(LogSource::Stdout, Some(3_000), "three\n"),
        ];
        let all = select(records.clone(), &LogOptions::default()).expect("selects");
        assert_eq!(text(&all), "one\ntwo\nthree\n");
        let since = LogOptions {
            since_unix_ms: Some(2_000),
            ..Default::default()
        };
        assert_eq!(
            text(&select(records.clone(), &since).expect("since")),
            "two\nthree\n"
        );
        let tail = LogOptions {
            tail: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            text(&select(records, &tail).expect("tail")),
            "1970-01-01T00:00:03Z three\n"
        );
    }

    #[test]
    fn untimed_runs_refuse_since_and_timestamps_and_tail_by_line() {
        let records = vec![line(LogSource::Stdout, None, "a\nb\nc\n")];
        let opts = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert!(matches!(
            select(records.clone(), &opts),
            Err(AgentError::Unsupported(_))
        ));
        let tail = LogOptions {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(text(&select(records, &tail).expect("tail")), "b\nc\n");
    }
}
