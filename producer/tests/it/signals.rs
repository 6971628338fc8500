//! The CLI under signals and endpoint faults, against kinesis-local and
//! kinesalite behind the project's fault proxy: every line read is reported
//! sent, failed or unknown, and what the stream holds (read back and
//! counted) matches; a hung endpoint or a deleted stream ends the run with
//! one error line and bounded memory.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, read_until_quiet, stack, stack_env, unique};
use faultproxy::{FaultProxy, Flavor, Mode};
use serde_json::Value;
use tokio::time::Instant;

/// A CLI run: the child, its stdin feeder, and its stderr as it comes.
struct Run {
    child: Child,
    feeder: std::thread::JoinHandle<u64>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: std::thread::JoinHandle<String>,
    /// Highest VmHWM (peak RSS) seen, in kB.
    peak_rss_kb: u64,
}

/// Starts the CLI against `endpoint`, feeding up to `lines` lines
/// `{"n":<line number>}` on stdin as fast as it reads them.
fn start(endpoint: &str, args: &[&str], lines: u64) -> Run {
    for name in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        stack_env(name);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(args)
        .env("AWS_ENDPOINT_URL_KINESIS", endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
    // Bounded by `lines`; ends early when the CLI closes its stdin (exits).
    let feeder = std::thread::spawn(move || {
        for n in 1..=lines {
            if writeln!(stdin, "{{\"n\":{n}}}").is_err() {
                return n - 1;
            }
        }
        let _ = stdin.flush();
        lines
    });
    let stderr = Arc::new(Mutex::new(vec![]));
    let (sink, pipe) = (stderr.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            sink.lock().unwrap().push(line);
        }
    });
    let mut pipe = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
        s
    });
    Run { child, feeder, stderr, stdout, peak_rss_kb: 0 }
}

impl Run {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    fn sample_rss(&mut self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            self.peak_rss_kb = self.peak_rss_kb.max(kb);
        }
    }

    /// Polls until the CLI exits, or panics at `timeout`; returns the status
    /// and how long it took.
    async fn wait(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            self.sample_rss();
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("the CLI did not exit within {timeout:?}; stderr: {:?}", self.stderr.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until stderr has a line containing `text`.
    async fn wait_for_stderr(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr.lock().unwrap().iter().any(|l| l.contains(text)) {
            assert!(Instant::now() < deadline, "no {text:?} on stderr: {:?}", self.stderr.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stdout, the lines the feeder wrote, and stderr, after exit.
    fn finish(self) -> (String, u64, Vec<String>) {
        let fed = self.feeder.join().unwrap();
        let out = self.stdout.join().unwrap();
        // The stderr thread ends with the pipe; give it a moment to drain.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.stderr) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = self.stderr.lock().unwrap().clone();
        (out, fed, err)
    }
}

/// Polls until the proxy has passed `n` requests upstream.
async fn wait_for_requests(proxy: &FaultProxy, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while proxy.counts.snapshot().0 < n {
        assert!(Instant::now() < deadline, "only {:?} requests through the proxy", proxy.counts.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the CLI reported, by line number.
struct Reported {
    summary: Value,
    failed: HashSet<u64>,
    unknown: HashSet<u64>,
}

fn reported(stdout: &str, failures: &std::path::Path) -> Reported {
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    let (mut failed, mut unknown) = (HashSet::new(), HashSet::new());
    for l in std::fs::read_to_string(failures).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let line = v["line"].as_u64().unwrap();
        assert_eq!(v["data"].as_str().unwrap(), format!("{{\"n\":{line}}}"), "the failures file keeps the line");
        let fresh = match v["kind"].as_str().unwrap() {
            "failed" => failed.insert(line),
            "unknown_outcome" => unknown.insert(line),
            other => panic!("kind {other}"),
        };
        assert!(fresh, "line {line} reported twice");
    }
    let lines_read = summary["lines_read"].as_u64().unwrap();
    assert_eq!(summary["failed"].as_u64().unwrap(), failed.len() as u64, "{summary}");
    assert_eq!(summary["unknown_outcome"].as_u64().unwrap(), unknown.len() as u64, "{summary}");
    assert_eq!(
        summary["sent"].as_u64().unwrap() + failed.len() as u64 + unknown.len() as u64,
        lines_read,
        "every line read has one outcome: {summary}"
    );
    Reported { summary, failed, unknown }
}

/// Every line read and reported sent is in the stream exactly once, every
/// failed line is absent, an unknown one at most once, and no line after
/// the last one read is there.
fn check_against_stream(r: &Reported, stored: &[common::ReadRecord]) {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for rec in stored {
        let v: Value = serde_json::from_slice(&rec.data).unwrap();
        *count.entry(v["n"].as_u64().unwrap()).or_default() += 1;
    }
    let lines_read = r.summary["lines_read"].as_u64().unwrap();
    for n in 1..=lines_read {
        let c = count.get(&n).copied().unwrap_or(0);
        if r.failed.contains(&n) {
            assert_eq!(c, 0, "line {n} reported failed but stored");
        } else if r.unknown.contains(&n) {
            assert!(c <= 1, "line {n} (unknown) stored {c} times");
        } else {
            assert_eq!(c, 1, "line {n} reported sent, stored {c} times");
        }
    }
    let beyond = count.keys().filter(|n| **n > lines_read).count();
    assert_eq!(beyond, 0, "lines never read are in the stream");
}

async fn kinesis_local_stream(shards: u32) -> (aws_sdk_kinesis::Client, String) {
    let sdk = common::sdk_config(&["AWS_ENDPOINT_URL_KINESIS"]).await;
    let client = shardlake::aws::kinesis_client(&sdk);
    let stream = unique("sig");
    shardlake_producer::stream::ensure_stream(&client, &stream, shards, Duration::from_secs(30)).await.unwrap();
    (client, stream)
}

/// SIGTERM mid-run against `upstream` (behind the fault proxy, with
/// latency so requests are in flight): the CLI drains what it read, exits
/// 143, and the stream holds exactly the lines reported sent.
async fn sigterm_drains_and_reports_every_line_read(
    client: aws_sdk_kinesis::Client,
    upstream: &str,
    stream: &str,
    throttle_rate: f64,
) {
    let proxy = FaultProxy::start(upstream, Flavor::Kinesis).await.unwrap();
    proxy.set_latency(Duration::from_millis(150));
    // Throttled requests are not stored, so a record still lands once.
    proxy.set_random_faults(throttle_rate, 27);
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let f = failures.to_str().unwrap();
    let mut run = start(&proxy.endpoint, &["--stream", stream, "--json", "--failures-file", f], 200_000);
    wait_for_requests(&proxy, 6, Duration::from_secs(30)).await;
    run.signal("-TERM");
    let (status, took) = run.wait(Duration::from_secs(40)).await;
    let (stdout, fed, stderr) = run.finish();
    let r = reported(&stdout, &failures);
    assert_eq!(status.code(), Some(143), "every line read was sent: {stdout} {stderr:?}");
    assert_eq!(r.summary["stopped"], "SIGTERM");
    let lines_read = r.summary["lines_read"].as_u64().unwrap();
    assert!(lines_read > 0 && lines_read < fed, "read {lines_read} of {fed} fed");
    if throttle_rate > 0.0 {
        assert!(r.summary["retries"].as_u64().unwrap() > 0, "throttled records were retried: {}", r.summary);
    }
    assert!(stderr.iter().any(|l| l.contains("SIGTERM: no more input is read")), "{stderr:?}");
    let stored = read_until_quiet(&client, stream, Duration::from_secs(60)).await;
    check_against_stream(&r, &stored);
    eprintln!("{upstream}: drained {lines_read} lines ({fed} fed) in {took:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_records_in_flight_drains_and_reports_every_line_read() {
    let Some(_stack) = stack() else { return };
    let (client, stream) = kinesis_local_stream(2).await;
    sigterm_drains_and_reports_every_line_read(client, &stack_env("AWS_ENDPOINT_URL_KINESIS"), &stream, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_third_of_requests_are_throttled_still_reports_every_line_read() {
    let Some(_stack) = stack() else { return };
    let (client, stream) = kinesis_local_stream(2).await;
    sigterm_drains_and_reports_every_line_read(client, &stack_env("AWS_ENDPOINT_URL_KINESIS"), &stream, 0.3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_kinesalite_drains_and_reports_every_line_read() {
    let Some(_stack) = stack() else { return };
    let kinesalite = stack_env("SHARDLAKE_KINESALITE_ENDPOINT");
    let client = client_via(&kinesalite).await;
    let stream = unique("sig-lite");
    shardlake_producer::stream::ensure_stream(&client, &stream, 2, Duration::from_secs(30)).await.unwrap();
    sigterm_drains_and_reports_every_line_read(client, &kinesalite, &stream, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_deadline_gives_up_on_a_black_hole_and_reports_in_flight_records_unknown() {
    let Some(_stack) = stack() else { return };
    let (client, stream) = kinesis_local_stream(1).await;
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_KINESIS"), Flavor::Kinesis).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let f = failures.to_str().unwrap();
    let args = ["--stream", &stream, "--json", "--failures-file", f, "--shutdown-timeout", "2"];
    let mut run = start(&proxy.endpoint, &args, 200_000);
    wait_for_requests(&proxy, 4, Duration::from_secs(30)).await;
    proxy.set(Mode::BlackHole);
    // Requests now hang (the request timeout is 10 s, past the deadline).
    let hung_before = proxy.counts.snapshot().3;
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.counts.snapshot().3 == hung_before {
        assert!(Instant::now() < deadline, "no request reached the black hole");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.signal("-TERM");
    let (status, took) = run.wait(Duration::from_secs(20)).await;
    let (stdout, _, stderr) = run.finish();
    assert!(took < Duration::from_secs(6), "exits at the 2 s deadline, took {took:?}");
    assert_eq!(status.code(), Some(3), "stopped with unknown outcomes: {stdout} {stderr:?}");
    let r = reported(&stdout, &failures);
    assert!(!r.unknown.is_empty(), "the records in flight are unknown: {}", r.summary);
    assert!(stderr.iter().any(|l| l.contains("shutdown deadline of 2s passed")), "{stderr:?}");
    proxy.set(Mode::Pass);
    let stored = read_until_quiet(&client, &stream, Duration::from_secs(60)).await;
    check_against_stream(&r, &stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_gives_up_at_once_and_still_writes_the_outcomes() {
    let Some(_stack) = stack() else { return };
    let (client, stream) = kinesis_local_stream(1).await;
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_KINESIS"), Flavor::Kinesis).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let f = failures.to_str().unwrap();
    let args = ["--stream", &stream, "--json", "--failures-file", f, "--shutdown-timeout", "60"];
    let mut run = start(&proxy.endpoint, &args, 200_000);
    wait_for_requests(&proxy, 4, Duration::from_secs(30)).await;
    proxy.set(Mode::BlackHole);
    run.signal("-INT");
    run.wait_for_stderr("SIGINT: no more input is read", Duration::from_secs(10)).await;
    let second = Instant::now();
    run.signal("-INT");
    let (status, _) = run.wait(Duration::from_secs(20)).await;
    let took = second.elapsed();
    let (stdout, _, stderr) = run.finish();
    assert!(took < Duration::from_secs(3), "the second signal ends the run at once, took {took:?}");
    assert!(stderr.iter().any(|l| l.contains("SIGINT again")), "{stderr:?}");
    let r = reported(&stdout, &failures);
    assert_eq!(r.summary["stopped"], "SIGINT");
    let clean = r.failed.is_empty() && r.unknown.is_empty();
    assert_eq!(status.code(), Some(if clean { 130 } else { 3 }), "{stdout}");
    proxy.set(Mode::Pass);
    let stored = read_until_quiet(&client, &stream, Duration::from_secs(60)).await;
    check_against_stream(&r, &stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_endpoint_at_start_fails_with_one_line_naming_the_call() {
    let Some(_stack) = stack() else { return };
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_KINESIS"), Flavor::Kinesis).await.unwrap();
    proxy.set(Mode::BlackHole);
    for (extra, call) in [(None, "ListShards"), (Some("--create-stream"), "DescribeStreamSummary")] {
        let stream = unique("sig-hung");
        let mut args = vec!["--stream", &stream, "--control-plane-timeout-ms", "1000"];
        args.extend(extra);
        let mut run = start(&proxy.endpoint, &args, 10);
        let (status, took) = run.wait(Duration::from_secs(20)).await;
        let (_, _, stderr) = run.finish();
        assert_eq!(status.code(), Some(2), "{stderr:?}");
        assert!(took < Duration::from_secs(6), "fails at the deadline, took {took:?}");
        let lines: Vec<&String> = stderr.iter().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one error line: {lines:?}");
        assert!(lines[0].contains(call) && lines[0].contains("no answer"), "{}", lines[0]);
        assert!(lines[0].contains(&proxy.endpoint), "names the endpoint: {}", lines[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_mid_run_stops_the_input_with_one_line_and_bounded_memory() {
    let Some(_stack) = stack() else { return };
    let kinesalite = stack_env("SHARDLAKE_KINESALITE_ENDPOINT");
    let sdk = common::sdk_config(&[]).await;
    let client = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&sdk).endpoint_url(&kinesalite).build(),
    );
    let stream = unique("sig-gone");
    shardlake_producer::stream::ensure_stream(&client, &stream, 1, Duration::from_secs(30)).await.unwrap();
    let proxy = FaultProxy::start(&kinesalite, Flavor::Kinesis).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let failures = dir.path().join("failures.jsonl");
    let f = failures.to_str().unwrap();
    let mut run = start(&proxy.endpoint, &["--stream", &stream, "--json", "--failures-file", f], 3_000_000);
    wait_for_requests(&proxy, 10, Duration::from_secs(30)).await;
    client.delete_stream().stream_name(&stream).send().await.unwrap();
    let deleted = Instant::now();
    let (status, _) = run.wait(Duration::from_secs(60)).await;
    let took = deleted.elapsed();
    let peak_mb = run.peak_rss_kb / 1024;
    let (stdout, fed, stderr) = run.finish();
    assert_eq!(status.code(), Some(3), "{stdout} {stderr:?}");
    let lines: Vec<&String> = stderr.iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, not one per record: {lines:?}");
    assert!(lines[0].contains("ResourceNotFoundException"), "{}", lines[0]);
    let r = reported(&stdout, &failures);
    assert_eq!(r.summary["stopped"], "target_unusable");
    let lines_read = r.summary["lines_read"].as_u64().unwrap();
    assert!(lines_read < fed, "input stopped: read {lines_read} of {fed}");
    assert!(took < Duration::from_secs(20), "stops promptly, took {took:?}");
    assert!(peak_mb < 150, "peak RSS {peak_mb} MB");
    eprintln!(
        "deleted stream: stopped {took:?} after the delete, {lines_read} lines read of {fed} fed, peak RSS {peak_mb} MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_stdin_exits_at_once() {
    let Some(_stack) = stack() else { return };
    let kinesalite = stack_env("SHARDLAKE_KINESALITE_ENDPOINT");
    let client = client_via(&kinesalite).await;
    let stream = unique("sig-idle");
    shardlake_producer::stream::ensure_stream(&client, &stream, 1, Duration::from_secs(30)).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--stream", &stream, "--json"])
        .env("AWS_ENDPOINT_URL_KINESIS", &kinesalite)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stdin stays open and silent, as from a quiet upstream.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{{\"n\":1}}").unwrap();
    stdin.flush().unwrap();
    let pid = child.id().to_string();
    // Wait until the one line is sent (the CLI then waits on stdin).
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_until_quiet(&client, &stream, Duration::from_secs(10)).await.is_empty() {
        assert!(Instant::now() < deadline, "the line never arrived");
    }
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "still running on an idle stdin");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    drop(stdin);
    assert!(took < Duration::from_secs(3), "exits without waiting for stdin, took {took:?}");
    assert_eq!(status.code(), Some(143));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((summary["lines_read"].as_u64(), summary["sent"].as_u64()), (Some(1), Some(1)), "{summary}");
}

/// A Kinesis client through `endpoint`, SDK retries off.
async fn client_via(endpoint: &str) -> aws_sdk_kinesis::Client {
    let sdk = common::sdk_config(&[]).await;
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&sdk)
            .endpoint_url(endpoint)
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shard_map_refresh_is_abandoned_and_retried() {
    let Some(_stack) = stack() else { return };
    let (_, stream) = kinesis_local_stream(1).await;
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_KINESIS"), Flavor::Kinesis).await.unwrap();
    let mut config = shardlake_producer::ProducerConfig::kinesis(&stream);
    config.shard_map_refresh_secs = 1;
    config.control_plane_timeout_ms = 300;
    let producer = shardlake_producer::Producer::builder(config)
        .kinesis_client(client_via(&proxy.endpoint).await)
        .build()
        .await
        .unwrap();
    proxy.set(Mode::BlackHole);
    let refreshes = |outcome| producer.metrics().shard_map_refreshes.with_label_values(&[outcome]).get();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refreshes("error") == 0 {
        assert!(Instant::now() < deadline, "the hung refresh was never abandoned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(Mode::Pass);
    let ok_before = refreshes("ok");
    while refreshes("ok") == ok_before {
        assert!(Instant::now() < deadline, "no refresh after the hung one");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    producer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_within_a_deadline_hands_every_record_back_unknown_or_not_sent() {
    let Some(_stack) = stack() else { return };
    let (client, stream) = kinesis_local_stream(1).await;
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_KINESIS"), Flavor::Kinesis).await.unwrap();
    let mut config = shardlake_producer::ProducerConfig::kinesis(&stream);
    config.max_concurrent_requests = 1;
    config.max_batch_records = 10;
    let producer = shardlake_producer::Producer::builder(config)
        .kinesis_client(client_via(&proxy.endpoint).await)
        .build()
        .await
        .unwrap();
    proxy.set(Mode::BlackHole);
    let mut acks = vec![];
    for n in 0..100 {
        acks.push(producer.enqueue(shardlake_producer::Record::new(format!("k{n}"), format!("{n}"))).await.unwrap());
    }
    let started = Instant::now();
    assert!(!producer.shutdown_within(Duration::from_millis(500)).await, "the black hole keeps records unresolved");
    let (mut unknown, mut not_sent) = (0, 0);
    for ack in acks {
        let err = tokio::time::timeout(Duration::from_secs(2), ack).await.expect("resolved after abort").unwrap_err();
        match err.reason {
            shardlake_producer::Error::UnknownOutcome { .. } => unknown += 1,
            shardlake_producer::Error::ShutDown => not_sent += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // One request of up to 10 records was in flight; the rest never left.
    assert!((1..=10).contains(&unknown), "{unknown} unknown, {not_sent} not sent");
    assert_eq!(unknown + not_sent, 100);
    assert!(producer.enqueue(shardlake_producer::Record::new("k", "late")).await.is_err(), "closed after abort");
    proxy.set(Mode::Pass);
    let stored = read_until_quiet(&client, &stream, Duration::from_secs(30)).await;
    assert!(stored.len() <= unknown, "only unknown records may be stored: {} stored", stored.len());
}
