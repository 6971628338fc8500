//! The `shardlake-producer` command line against kinesis-local.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, read_all, stack, stack_env, unique};

fn producer(args: &[&str]) -> std::process::Output {
    for name in ["AWS_ENDPOINT_URL_KINESIS", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        stack_env(name);
    }
    Command::new(env!("CARGO_BIN_EXE_shardlake-producer")).args(args).output().unwrap()
}

#[tokio::test]
async fn sends_json_lines_and_reports_failures_with_a_non_zero_exit() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let failures = dir.path().join("failures.jsonl");
    let mut lines: Vec<String> = (0..100).map(|i| format!("{{\"user\":\"u{}\",\"n\":{i}}}", i % 9)).collect();
    lines.insert(10, format!("{{\"user\":\"big\",\"pad\":\"{}\"}}", "x".repeat(1_100_000)));
    lines.insert(20, "{\"n\":\"no user field\"}".into());
    lines.insert(30, String::new());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let stream = unique("cli");
    let out = producer(&[
        "--stream",
        &stream,
        "--create-stream",
        "--shards",
        "2",
        "--input",
        input.to_str().unwrap(),
        "--partition-key-field",
        "user",
        "--failures-file",
        failures.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["sent"].as_u64(), summary["failed"].as_u64()), (Some(100), Some(2)), "{summary}");
    assert!(summary["latency_p99_ms"].as_f64().unwrap() > 0.0);
    let failed: Vec<serde_json::Value> =
        std::fs::read_to_string(&failures).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["line"], 11);
    assert!(failed[0]["reason"].as_str().unwrap().contains("over the 1048576-byte per-record limit"));
    assert_eq!(failed[1]["line"], 21);
    assert!(failed[1]["reason"].as_str().unwrap().contains("no partition key field \"user\""), "{}", failed[1]);

    let sdk = common::sdk_config(&["AWS_ENDPOINT_URL_KINESIS"]).await;
    let read = read_all(&shardlake::aws::kinesis_client(&sdk), &stream, 100, Duration::from_secs(60)).await;
    assert_eq!(read.len(), 100);
    assert!(read.iter().all(|r| r.partition_key.starts_with('u')));
}

#[test]
fn prints_a_summary_and_exits_0_when_everything_is_sent() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, (0..50).map(|i| format!("{{\"n\":{i}}}\n")).collect::<String>()).unwrap();
    let stream = unique("cli-ok");
    let out = producer(&[
        "--stream",
        &stream,
        "--create-stream",
        "--input",
        input.to_str().unwrap(),
        "--aggregate",
        "--rate",
        "500",
        "--metrics",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("sent        50 records"), "{text}");
    assert!(text.contains("failed      0") && text.contains("latency     p50 "), "{text}");
    assert!(text.contains("shardlake_producer_records_sent_total{target=\"cli-ok"), "{text}");
}

#[test]
fn rejects_bad_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer")).args(["--input", "-"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stream"));
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--firehose", "f", "--ordered"])
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Kinesis streams only"));
}

#[test]
fn help_explains_the_concurrency_timeout_and_ttl_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--max-concurrent-requests",
        "--request-timeout-ms",
        "--record-ttl-ms",
        "--ttl-from-first-attempt",
        "--no-newline",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("adapts below this ceiling"), "{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--stream", "s", "--no-newline"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--no-newline is for Firehose");
}

#[test]
fn the_flags_reach_the_producer_settings() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"n\":1}\n").unwrap();
    let stream = unique("cli-flags");
    let out = producer(&[
        "--stream",
        &stream,
        "--create-stream",
        "--input",
        input.to_str().unwrap(),
        "--max-concurrent-requests",
        "3",
        "--request-timeout-ms",
        "1500",
        "--min-request-timeout-ms",
        "500",
        "--record-ttl-ms",
        "5000",
        "--ttl-from-first-attempt",
        "--metrics",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("unknown     0") && text.contains("failed      0"), "{text}");
    let timeout = text
        .lines()
        .find(|l| l.starts_with("shardlake_producer_request_timeout_seconds"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap();
    assert!((0.5..=1.5).contains(&timeout), "the timeout stays within the flags' floor and ceiling: {timeout}");
    let bad = producer(&["--stream", &stream, "--input", input.to_str().unwrap(), "--max-concurrent-requests", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_concurrent_requests must be at least 1"));
}

#[test]
fn a_firehose_line_over_the_limit_only_with_the_added_newline_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let failures = dir.path().join("failures.jsonl");
    // Exactly 1,000 KiB: Firehose's limit, one byte short with the newline.
    let line = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_024_000 - 10));
    assert_eq!(line.len(), 1_024_000);
    std::fs::write(&input, format!("{line}\n")).unwrap();
    // Refused before any call: no endpoint needed (a closed port).
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--firehose", "f", "--input", input.to_str().unwrap(), "--json"])
        .args(["--failures-file", failures.to_str().unwrap()])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_FIREHOSE", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let failed: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&failures).unwrap().lines().next().unwrap()).unwrap();
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("with the newline the CLI adds for Firehose 1024001"), "{reason}");
    assert!(reason.contains("--no-newline") && !reason.contains("partition key"), "{reason}");
    assert_eq!(failed["data"].as_str().unwrap(), line, "the failures file keeps the line as read");
}

#[test]
fn no_newline_is_refused_with_a_kinesis_stream() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--stream", "s", "--no-newline"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-newline") && err.contains("cannot be used with"), "{err}");
}

#[test]
fn a_request_timeout_floor_above_the_ceiling_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--stream", "s", "--min-request-timeout-ms", "20000", "--request-timeout-ms", "1000"])
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("min_request_timeout_ms = 20000 is above request_timeout_ms = 1000"), "{err}");
}
