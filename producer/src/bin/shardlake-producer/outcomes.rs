//! The outcome of every record read: the collector that awaits each in
//! input order, the failures file written as they resolve, and the summary.

use std::io::Write;
use std::time::Duration;

use crate::latency::LatencyHistogram;
use anyhow::{Context, Result};
use base64::Engine;
use shardlake_producer::{AckFuture, Error};
use tokio::sync::mpsc;

use crate::stop::{Control, Stop};

/// What happened, for the summary and the exit code.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Input lines read (the number of the last one): with a `stopped`
    /// reason, resume after this line.
    pub(crate) lines_read: u64,
    /// Why the input was not read to the end, if it was not.
    pub(crate) stopped: Option<Stop>,
    /// Records acknowledged.
    pub(crate) sent: u64,
    /// Records given up after a request carrying them timed out or was
    /// abandoned in flight: they may or may not be in the stream.
    pub(crate) unknown: u64,
    /// Records not delivered (rejected, bad lines, expired or never sent).
    pub(crate) failed: u64,
    /// Of `failed`, records whose TTL ran out before their first attempt:
    /// admission let in more than the producer could send in time.
    pub(crate) expired_unsent: u64,
    /// Records that needed more than one attempt, delivered or not.
    pub(crate) retried: u64,
    /// Every retry, as the producer counted them.
    pub(crate) retries: u64,
    /// Records (sent or unknown) that may be stored more than once: resent
    /// after a request carrying them went unanswered.
    pub(crate) maybe_duplicated: u64,
    /// Payload bytes of the acknowledged records.
    pub(crate) bytes: u64,
    /// Latency of the acknowledged records (bounded memory).
    pub(crate) latencies: LatencyHistogram,
    /// The first failure, for one line on stderr.
    pub(crate) first_failure: Option<(u64, String)>,
}

/// The failures file: one JSON line per record not acknowledged, written
/// as it resolves, flushed whenever the writer catches up (and at exit).
pub(crate) struct FailureLog {
    pub(crate) out: Option<std::io::BufWriter<std::fs::File>>,
}

impl FailureLog {
    /// One line: `kind` is `unknown_outcome` for records that may have been
    /// stored, `failed` for the others; `label` is a stable reason code.
    /// `data` is the input line byte for byte: a JSON string when it is
    /// UTF-8, else `data_base64`, so a resend sends the same bytes.
    pub(crate) fn write(
        &mut self,
        line: u64,
        partition_key: &str,
        data: &[u8],
        label: &str,
        reason: &str,
    ) -> Result<()> {
        let Some(out) = &mut self.out else { return Ok(()) };
        let kind = if label == "unknown_outcome" { "unknown_outcome" } else { "failed" };
        let mut entry = serde_json::json!({
            "line": line,
            "partition_key": partition_key,
            "kind": kind,
            "label": label,
            "reason": reason,
        });
        match std::str::from_utf8(data) {
            Ok(text) => entry["data"] = text.into(),
            Err(_) => entry["data_base64"] = base64::engine::general_purpose::STANDARD.encode(data).into(),
        }
        writeln!(out, "{entry}").context("writing the failures file")
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            out.flush().context("writing the failures file")?;
        }
        Ok(())
    }
}

/// From the reader to the collector, in input order.
pub(crate) enum Entry {
    /// A record handed to the producer, with its payload length.
    Enqueued { line: u64, len: usize, ack: AckFuture },
    /// A line that never reached the stream.
    Refused { line: u64, partition_key: String, data: Vec<u8>, label: String, reason: String },
}

/// Awaits each record's outcome in input order, counts it, and writes every
/// one not acknowledged to the failures file as it comes.
pub(crate) async fn collect(
    mut rx: mpsc::Receiver<Entry>,
    mut failures: FailureLog,
    control: Control,
    added_newline: bool,
) -> Result<Summary> {
    let mut s = Summary::default();
    loop {
        let entry = match rx.try_recv() {
            Ok(entry) => entry,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Caught up: make what is written visible before waiting.
                failures.flush()?;
                match rx.recv().await {
                    Some(entry) => entry,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match entry {
            Entry::Refused { line, partition_key, data, label, reason } => {
                s.failed += 1;
                failures.write(line, &partition_key, &data, &label, &reason)?;
                s.first_failure.get_or_insert((line, reason));
            }
            Entry::Enqueued { line, len, ack } => match ack.await {
                Ok(ack) => {
                    s.sent += 1;
                    s.bytes += len as u64;
                    s.retried += u64::from(ack.attempts > 1);
                    s.latencies.record(ack.latency);
                }
                Err(e) => {
                    if e.reason.is_unknown_outcome() {
                        s.unknown += 1;
                    } else {
                        s.failed += 1;
                        s.expired_unsent += u64::from(matches!(e.reason, Error::Expired { attempts: 0, .. }));
                    }
                    s.retried += u64::from(e.reason.attempts().is_some_and(|a| a > 1));
                    let reason = e.reason.to_string();
                    if e.reason.is_target_unusable() && control.reason.get().is_none() {
                        eprintln!("shardlake-producer: stopping: the target no longer takes records: {reason}");
                        control.stop(Stop::TargetUnusable(reason.clone()));
                    }
                    // The input line as read, without the newline added for Firehose.
                    let data = e.record.data.as_ref();
                    let data = if added_newline { data.strip_suffix(b"\n").unwrap_or(data) } else { data };
                    failures.write(line, &e.record.partition_key, data, e.reason.label(), &reason)?;
                    s.first_failure.get_or_insert((line, reason));
                }
            },
        }
    }
    failures.flush()?;
    Ok(s)
}

pub(crate) fn print_summary(s: &Summary, elapsed: Duration, json: bool) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (p50, p99) = (s.latencies.quantile(0.50), s.latencies.quantile(0.99));
    let rate = s.sent as f64 / secs;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        let v = serde_json::json!({
            "lines_read": s.lines_read, "stopped": s.stopped.as_ref().map(Stop::label),
            "sent": s.sent, "unknown_outcome": s.unknown, "failed": s.failed, "expired_unsent": s.expired_unsent,
            "retried": s.retried, "retries": s.retries, "maybe_duplicated": s.maybe_duplicated,
            "bytes": s.bytes, "elapsed_s": secs, "records_per_s": rate,
            "latency_p50_ms": ms(p50), "latency_p99_ms": ms(p99),
        });
        println!("{v}");
        return;
    }
    println!("read        {} lines", s.lines_read);
    if let Some(stop) = &s.stopped {
        let why = match stop {
            Stop::Signal { name, .. } => name.to_string(),
            Stop::TargetUnusable(reason) => format!("the target stopped taking records ({reason})"),
        };
        println!("stopped     by {why}: lines after {} were not read", s.lines_read);
    }
    println!("sent        {} records ({:.1} MB)", s.sent, s.bytes as f64 / 1e6);
    println!("unknown     {} (a request timed out or was abandoned; they may or may not be stored)", s.unknown);
    if s.expired_unsent > 0 {
        println!("failed      {} ({} expired before their first attempt)", s.failed, s.expired_unsent);
    } else {
        println!("failed      {}", s.failed);
    }
    println!("retried     {} records ({} retries)", s.retried, s.retries);
    println!("may be duplicated: {} (resent after a request went unanswered)", s.maybe_duplicated);
    println!("elapsed     {secs:.2} s");
    println!("throughput  {rate:.0} records/s, {:.2} MB/s", s.bytes as f64 / 1e6 / secs);
    println!("latency     p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failures_file_keeps_the_bytes_of_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let mut log = FailureLog { out: Some(std::io::BufWriter::new(std::fs::File::create(&path).unwrap())) };
        log.write(1, "k", "caf\u{e9} \"q\"".as_bytes(), "failed", "r").unwrap();
        log.write(2, "k", b"\xff\xfe{}", "unknown_outcome", "r").unwrap();
        log.flush().unwrap();
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["data"].as_str().unwrap().as_bytes(), "caf\u{e9} \"q\"".as_bytes());
        assert_eq!(lines[1]["kind"], "unknown_outcome");
        let raw = base64::engine::general_purpose::STANDARD.decode(lines[1]["data_base64"].as_str().unwrap()).unwrap();
        assert_eq!(raw, b"\xff\xfe{}");
    }
}
