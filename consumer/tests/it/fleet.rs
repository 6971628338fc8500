//! Fleet mode: several `shardlake-consumer run` processes share one stream
//! through DynamoDB leases (kinesis-local + dynalite + a moto S3 lake). They
//! balance the shards, take over from a killed worker within seconds, hand
//! over at once on SIGTERM, fence a paused worker's stale commits, and the
//! lake holds every record exactly once (DuckDB).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use shardlake_consumer::checkpoint::{CheckpointStore, DynamoCheckpoints, FleetOptions, Lease, compare_sequences};

/// A fleet of workers on one stream, lake and lease table.
struct Fleet {
    setup: Setup,
    table: String,
    /// The lake: `s3://{bucket}/lake/` on the S3 emulator.
    bucket: String,
    workers: Vec<Option<Child>>,
    observer: DynamoCheckpoints,
}

impl Fleet {
    /// Writes one config per worker (`w0.toml`, ...) with `lease_duration`.
    async fn new(stream: &str, workers: usize, lease_duration: &str) -> Self {
        Self::with_config(stream, workers, lease_duration, "").await
    }

    /// `new` with `extra` config lines (tables) at the end of each config.
    async fn with_config(stream: &str, workers: usize, lease_duration: &str, extra: &str) -> Self {
        Self::with_lines(stream, workers, lease_duration, "", extra).await
    }

    /// `with_config` with `top` lines (top-level keys) before the tables.
    async fn with_lines(stream: &str, workers: usize, lease_duration: &str, top: &str, extra: &str) -> Self {
        Self::with_destination(stream, workers, lease_duration, None, top, extra).await
    }

    /// `with_lines` with the lake at `destination` (default: the S3 bucket).
    async fn with_destination(
        stream: &str,
        workers: usize,
        lease_duration: &str,
        destination: Option<&str>,
        top: &str,
        extra: &str,
    ) -> Self {
        let setup = Setup::new(stream);
        let table = unique("leases");
        let bucket = unique("fleet-lake").to_lowercase();
        s3_client().await.create_bucket().bucket(&bucket).send().await.unwrap();
        let destination = destination.map_or_else(|| format!("s3://{bucket}/lake/"), str::to_string);
        for i in 0..workers {
            let text = format!(
                "stream = \"{stream}\"\ndestination = \"{destination}\"\ncheckpoint_store = \"dynamodb://{table}\"\n\
                 schema = \"schema.toml\"\ntime_field = \"ts\"\nshutdown_timeout = \"30s\"\n{top}\
                 [fleet]\nworker_id = \"w{i}\"\nlease_duration = \"{lease_duration}\"\ncreate_table = true\n\
                 [buffer]\nmax_age = \"1s\"\n[polling]\nidle_interval = \"200ms\"\nmax_idle_interval = \"1s\"\nshard_refresh = \"1s\"\n\
                 [metrics]\naddress = \"127.0.0.1:0\"\n{extra}",
            );
            std::fs::write(setup.dir.path().join(format!("w{i}.toml")), text).unwrap();
        }
        stack_env("AWS_ENDPOINT_URL_DYNAMODB");
        let options = FleetOptions {
            worker_id: "observer".into(),
            lease_duration: Duration::from_secs(10),
            create_table: true,
            timeouts: Default::default(),
        };
        let store =
            CheckpointStore::connect(&format!("dynamodb://{table}"), "shardlake", stream, &options).await.unwrap();
        let observer = store.fleet().unwrap().clone();
        Fleet { setup, table, bucket, workers: (0..workers).map(|_| None).collect(), observer }
    }

    /// Worker `i`'s log, without ANSI colours.
    fn log(&self, i: usize) -> String {
        plain(&std::fs::read_to_string(self.setup.dir.path().join(format!("w{i}.log"))).unwrap_or_default())
    }

    fn logs(&self) -> String {
        (0..self.workers.len()).map(|i| format!("--- w{i}\n{}", self.log(i))).collect()
    }

    /// Starts worker `i` and waits until it serves metrics.
    fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// `start` with `env` added.
    fn start_with(&mut self, i: usize, env: &[(&str, &str)]) {
        const READY: &str = "metrics on http://";
        let before = self.log(i).matches(READY).count();
        let dir = self.setup.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("w{i}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
            // A group of its own, whose parent (this test) is outside it: a
            // stopped worker is then never in an orphaned process group, which
            // the kernel would SIGCONT whenever a member (such as the `kill`
            // behind SHARDLAKE_STOP_AT) exits.
            .process_group(0)
            .args(["run", "--config"])
            .arg(dir.join(format!("w{i}.toml")))
            .env("RUST_LOG", "shardlake_consumer=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log(i).matches(READY).count() == before {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("w{i} exited at start with {status}:\n{}", self.log(i));
            }
            assert!(Instant::now() < deadline, "w{i} not ready after 30 s:\n{}", self.log(i));
            std::thread::sleep(Duration::from_millis(20));
        }
        self.workers[i] = Some(child);
    }

    /// A metric's value from worker `i`'s `/metrics` (0 when absent).
    fn metric(&self, i: usize, name: &str) -> f64 {
        use std::io::{Read, Write};
        let log = self.log(i);
        let line = log.lines().rev().find(|l| l.contains("metrics on http://")).expect("metrics line");
        let address = line.split("http://").nth(1).unwrap().trim_end_matches("/metrics");
        let mut conn = std::net::TcpStream::connect(address).unwrap();
        write!(conn, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Worker `i`'s `/healthz` answer (status line, headers, body).
    fn healthz(&self, i: usize) -> String {
        let log = self.log(i);
        let line = log.lines().rev().find(|l| l.contains("metrics on http://")).expect("metrics line");
        http_get(line.split("http://").nth(1).unwrap().trim_end_matches("/metrics"), "/healthz")
    }

    /// Panics when a worker has exited.
    fn assert_running(&mut self) {
        for i in 0..self.workers.len() {
            if let Some(status) = self.workers[i].as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("w{i} exited with {status}:\n{}", self.log(i));
            }
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.workers[i].as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// Shard → owner of every live lease.
    async fn owners(&self) -> BTreeMap<String, String> {
        let now = shardlake_consumer::checkpoint::dynamodb::now_ms();
        let leases: Vec<Lease> = self.observer.leases().await.unwrap();
        leases.into_iter().filter(|l| !l.is_free(now)).filter_map(|l| Some((l.shard, l.owner?))).collect()
    }

    /// Waits until all `shards` are held, by `workers` workers within one
    /// shard of each other; returns owner → count.
    async fn wait_balanced(&self, shards: usize, workers: usize, limit: Duration) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + limit;
        loop {
            let owners = self.owners().await;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for o in owners.values() {
                *counts.entry(o.clone()).or_default() += 1;
            }
            let (min, max) = (counts.values().min().copied(), counts.values().max().copied());
            if owners.len() == shards && counts.len() == workers && max.unwrap() - min.unwrap() <= 1 {
                return counts;
            }
            assert!(Instant::now() < deadline, "not balanced after {limit:?}: {counts:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every shard's checkpoint is at or past the last record put to it.
    async fn wait_committed(&self, landed: &[Landed], limit: Duration) {
        let mut last: BTreeMap<&str, &str> = BTreeMap::new();
        for (shard, seq) in landed {
            let e = last.entry(shard.as_str()).or_insert(seq.as_str());
            if compare_sequences(seq, e).is_gt() {
                *e = seq.as_str();
            }
        }
        let deadline = Instant::now() + limit;
        loop {
            let leases = self.observer.leases().await.unwrap();
            let behind: Vec<&str> = last
                .iter()
                .filter(|(shard, seq)| {
                    !leases.iter().any(|l| {
                        l.shard == **shard && l.checkpoint.as_deref().is_some_and(|c| compare_sequences(c, seq).is_ge())
                    })
                })
                .map(|(s, _)| *s)
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "shards {behind:?} not committed after {limit:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until no shard is held by `worker` and every one of `shards`
    /// is held by another live worker; returns the time it took.
    async fn wait_taken_from(&self, worker: &str, shards: &[String], limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let owners = self.owners().await;
            if shards.iter().all(|s| owners.get(s).is_some_and(|o| o != worker)) {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "{worker}'s shards not taken over after {limit:?}: {owners:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to every running worker; each must exit cleanly.
    fn terminate_all(&mut self) {
        for i in 0..self.workers.len() {
            if let Some(mut child) = self.workers[i].take() {
                let status = terminate(&mut child);
                assert!(status.success(), "w{i}: {status}\n{}", self.log(i));
            }
        }
    }

    /// Downloads the S3 lake and checks it with DuckDB: `records` rows,
    /// as many distinct ids, none in a wrong partition.
    async fn check_lake(&self, records: u64) {
        self.setup.download(&s3_client().await, &self.bucket, "lake/").await;
        assert_eq!(self.setup.duckdb_check(), (records, records, 0), "table {}\n{}", self.table, self.logs());
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().flatten() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The shard a log line names (`shard=...`).
fn shard_of(line: &str) -> Option<&str> {
    line.split("shard=").nth(1)?.split_whitespace().next().map(|s| s.trim_matches('"'))
}

/// Timestamps (RFC 3339, which sort as text) of the lines of every worker's
/// log that contain all of `parts`.
fn times(fleet: &Fleet, parts: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = (0..fleet.workers.len())
        .flat_map(|i| {
            fleet
                .log(i)
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

fn shards_of(owners: &BTreeMap<String, String>, worker: &str) -> Vec<String> {
    owners.iter().filter(|(_, o)| *o == worker).map(|(s, _)| s.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_balance_eight_shards_and_write_each_record_once() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 8).await;
    let mut fleet = Fleet::new(&stream, 3, "10s").await;
    let records = keyed(events(800, 31, 4));
    let mut landed = put_records(&client, &stream, &records[..400]).await;
    for i in 0..3 {
        fleet.start(i);
    }
    let counts = fleet.wait_balanced(8, 3, Duration::from_secs(60)).await;
    eprintln!("balanced: {counts:?}");
    landed.extend(put_records(&client, &stream, &records[400..]).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    let counts = fleet.wait_balanced(8, 3, Duration::from_secs(5)).await;
    assert!(counts.values().all(|n| (2..=3).contains(n)), "{counts:?}");
    poll("leases_held to add up to 8", Duration::from_secs(10), || async {
        let held: f64 = (0..3).map(|i| fleet.metric(i, "shardlake_consumer_leases_held")).sum();
        (held == 8.0).then_some(())
    })
    .await;
    // Renewals run every lease_duration / 3 (3.3 s): each worker renews soon.
    poll("every worker to renew its leases", Duration::from_secs(10), || async {
        (0..3).all(|i| fleet.metric(i, "shardlake_consumer_lease_renew_seconds_count") > 0.0).then_some(())
    })
    .await;
    let taken: f64 = (0..3)
        .map(|i| {
            fleet.metric(i, "shardlake_consumer_leases_taken_total")
                + fleet.metric(i, "shardlake_consumer_leases_stolen_total")
        })
        .sum();
    assert!(taken >= 8.0, "{taken} leases taken or stolen");
    fleet.terminate_all();
    fleet.check_lake(800).await;
}

/// Enhanced fan-out in a fleet: three workers share one registered stream
/// consumer and read their shards over SubscribeToShard; every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_enhanced_fan_out_write_each_record_once() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 8).await;
    let mut fleet = Fleet::with_config(&stream, 3, "10s", "[retrieval]\nmode = \"fan-out\"\n").await;
    let records = keyed(events(600, 37, 4));
    let mut landed = put_records(&client, &stream, &records[..300]).await;
    for i in 0..3 {
        fleet.start(i);
    }
    fleet.wait_balanced(8, 3, Duration::from_secs(60)).await;
    landed.extend(put_records(&client, &stream, &records[300..]).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    let subscribed: f64 =
        (0..3).map(|i| fleet.metric(i, "shardlake_consumer_fan_out_subscriptions_total{outcome=\"subscribed\"}")).sum();
    assert!(subscribed >= 8.0, "{subscribed} subscriptions\n{}", fleet.logs());
    let fallbacks: f64 =
        (0..3).map(|i| fleet.metric(i, "shardlake_consumer_fan_out_subscriptions_total{outcome=\"fallback\"}")).sum();
    eprintln!("FAN-OUT FLEET: {subscribed} subscriptions, {fallbacks} fallbacks to polling");
    for i in 0..3 {
        assert!(fleet.log(i).contains("enhanced fan-out as arn:"), "{}", fleet.log(i));
    }
    fleet.terminate_all();
    fleet.check_lake(600).await;
}

/// An 8-shard stream read by 3 balanced workers with `lease`, after 450 of
/// 600 events (seeded) were put: the stream, the fleet, the events and where
/// the first 450 landed.
async fn three_balanced_workers_on_eight_shards(
    client: &aws_sdk_kinesis::Client,
    lease: &str,
    seed: u64,
) -> (String, Fleet, Vec<(String, Vec<u8>)>, Vec<Landed>) {
    let stream = create_stream(client, 8).await;
    let mut fleet = Fleet::new(&stream, 3, lease).await;
    let records = keyed(events(600, seed, 4));
    let mut landed = put_records(client, &stream, &records[..300]).await;
    for i in 0..3 {
        fleet.start(i);
    }
    fleet.wait_balanced(8, 3, Duration::from_secs(60)).await;
    landed.extend(put_records(client, &stream, &records[300..450]).await);
    (stream, fleet, records, landed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_shards_are_taken_over_within_15_seconds() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let (stream, mut fleet, records, mut landed) = three_balanced_workers_on_eight_shards(&client, "10s", 32).await;
    let victim = shards_of(&fleet.owners().await, "w0");
    assert!(!victim.is_empty());
    let mut child = fleet.workers[0].take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let took = fleet.wait_taken_from("w0", &victim, Duration::from_secs(30)).await;
    eprintln!("TAKEOVER after SIGKILL: {:.2} s for {} shards (lease 10 s)", took.as_secs_f64(), victim.len());
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");
    landed.extend(put_records(&client, &stream, &records[450..]).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    fleet.terminate_all();
    fleet.check_lake(600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_shards_over_without_waiting_for_expiry() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    // A long lease: a hand-over that waited for expiry would take 30 s.
    let (stream, mut fleet, records, mut landed) = three_balanced_workers_on_eight_shards(&client, "30s", 33).await;
    let victim = shards_of(&fleet.owners().await, "w0");
    let started = Instant::now();
    let mut child = fleet.workers[0].take().unwrap();
    let status = terminate(&mut child);
    assert!(status.success(), "{status}\n{}", fleet.log(0));
    assert!(fleet.log(0).contains("lease released"), "{}", fleet.log(0));
    fleet.wait_taken_from("w0", &victim, Duration::from_secs(25)).await;
    let took = started.elapsed();
    eprintln!(
        "HANDOVER after SIGTERM: {:.2} s from the signal ({} shards, lease 30 s)",
        took.as_secs_f64(),
        victim.len()
    );
    assert!(took < Duration::from_secs(10), "hand-over took {took:?}");
    landed.extend(put_records(&client, &stream, &records[450..]).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    fleet.terminate_all();
    fleet.check_lake(600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_past_its_expiry_never_commits_after_waking() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let mut fleet = Fleet::new(&stream, 2, "3s").await;
    let records = keyed(events(600, 34, 4));
    let mut landed = put_records(&client, &stream, &records[..200]).await;
    fleet.start(0);
    fleet.start(1);
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    fleet.wait_committed(&landed, Duration::from_secs(60)).await;
    // Records w0 is reading (and buffering, max_age 1 s) when it freezes.
    landed.extend(put_records(&client, &stream, &records[200..400]).await);
    let victim = shards_of(&fleet.owners().await, "w0");
    fleet.signal(0, "-STOP");
    let took = fleet.wait_taken_from("w0", &victim, Duration::from_secs(30)).await;
    eprintln!("TAKEOVER after SIGSTOP: {:.2} s for {} shards (lease 3 s)", took.as_secs_f64(), victim.len());
    landed.extend(put_records(&client, &stream, &records[400..]).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    fleet.signal(0, "-CONT");
    // w0 wakes with stale leases: it must find them lost, commit nothing.
    poll("w0 to notice its lost leases", Duration::from_secs(20), || async {
        fleet.log(0).contains("lease lost").then_some(())
    })
    .await;
    fleet.terminate_all();
    fleet.check_lake(600).await;
}

/// The deterministic stale commit: w0 freezes between uploading a batch and
/// committing it, w1 takes its shards after expiry, replays the pending intent
/// and moves on; when w0 wakes its commit is refused (`LeaseLost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_before_its_commit_is_fenced_when_it_wakes() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let mut fleet = Fleet::new(&stream, 2, "3s").await;
    let records = keyed(events(400, 35, 4));
    let mut landed = put_records(&client, &stream, &records[..200]).await;
    fleet.start_with(0, &[("SHARDLAKE_STOP_AT", "before_commit:1")]);
    poll("w0 to freeze before its first commit", Duration::from_secs(30), || async {
        fleet.log(0).contains("SHARDLAKE_STOP_AT: freezing").then_some(())
    })
    .await;
    let frozen = shards_of(&fleet.owners().await, "w0");
    let mut pending = Vec::new();
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let state = fleet.observer.load(shard).await.unwrap();
        eprintln!("FROZEN STATE {shard}: {state:?}");
        pending.extend(state.intent.map(|_| shard));
    }
    fleet.start(1);
    let took = fleet
        .wait_taken_from("w0", &["shardId-000000000000".into(), "shardId-000000000001".into()], Duration::from_secs(30))
        .await;
    eprintln!("TAKEOVER from a frozen worker: {:.2} s ({} shards, lease 3 s)", took.as_secs_f64(), frozen.len());
    landed.extend(put_records(&client, &stream, &records[200..]).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    fleet.signal(0, "-CONT");
    poll("w0 to find its lease lost", Duration::from_secs(20), || async {
        fleet.log(0).contains("lease lost").then_some(())
    })
    .await;
    fleet.terminate_all();
    let w0 = fleet.log(0);
    let after = &w0[w0.find("SHARDLAKE_STOP_AT").unwrap()..];
    assert!(after.contains("lease lost: dropped the unflushed batch"), "{w0}");
    // w0 may take a shard again to rebalance; it commits nothing of a shard
    // before that (a commit already in flight when it froze may land first:
    // that one was made under the lease).
    let mut retaken = std::collections::BTreeSet::new();
    let mut late_commits = Vec::new();
    for line in after.lines().skip_while(|l| !l.contains("lease lost")) {
        let Some(shard) = shard_of(line) else { continue };
        if line.contains("lease taken") || line.contains("lease stolen") {
            retaken.insert(shard.to_string());
        } else if line.contains("batch committed") && !retaken.contains(shard) {
            late_commits.push(line);
        }
    }
    assert!(after.lines().any(|l| l.contains("lease lost") && shard_of(l).is_some()), "{w0}");
    assert!(late_commits.is_empty(), "w0 committed without a lease after waking: {late_commits:#?}\n{w0}");
    fleet.check_lake(400).await;
    assert!(pending.is_empty() || fleet.log(1).contains("replaying a pending batch"), "{pending:?}\n{}", fleet.logs());
}

/// Resharding while three workers run: every child starts only after all its
/// parents ended and were committed, whichever workers held them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_three_workers_keeps_parents_first_and_loses_nothing() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let mut fleet = Fleet::new(&stream, 3, "10s").await;
    let records: Vec<(String, Vec<u8>)> =
        events(900, 36, 6).into_iter().enumerate().map(|(i, e)| (format!("key-{}", i % 24), e)).collect();
    let mut landed = put_records(&client, &stream, &records[..300]).await;
    for i in 0..3 {
        fleet.start(i);
    }
    landed.extend(split_and_merge_while_putting(&client, &stream, &records[300..600], &records[600..]).await);
    let used: std::collections::BTreeSet<&str> = landed.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(used.len(), 5, "records should land on parents and children: {used:?}");
    fleet.wait_committed(&landed, Duration::from_secs(120)).await;
    fleet.terminate_all();
    fleet.check_lake(900).await;
    for (child, parents) in [
        ("shardId-000000000002", &["shardId-000000000000"][..]),
        ("shardId-000000000004", &["shardId-000000000001", "shardId-000000000003"][..]),
    ] {
        let child_first = times(&fleet, &["batch committed", child]);
        let child_first = child_first.first().unwrap_or_else(|| panic!("{child} never committed\n{}", fleet.logs()));
        for parent in parents {
            let ended = times(&fleet, &["shard ended", parent]);
            let last_commit = times(&fleet, &["batch committed", parent]);
            let done = ended.last().max(last_commit.last()).unwrap_or_else(|| panic!("{parent} never ended"));
            assert!(done < child_first, "{child} committed at {child_first} before {parent} ended at {done}");
        }
    }
    let owners: Vec<String> =
        (0..3).filter(|i| fleet.log(*i).contains("batch committed")).map(|i| format!("w{i}")).collect();
    eprintln!("RESHARDING: committed by {owners:?}");
}

/// DynamoDB failing under a two-worker fleet, each worker through its own
/// fault proxy: 500s for 10 s, then connections refused for 30 s (leases
/// expire meanwhile), then one worker cut off by a black hole for 30 s
/// (requests accepted, never answered) while the other is fine. No worker
/// exits; a worker whose renewals fail for a lease duration gives its leases
/// up and says so on `/healthz`; the healthy worker takes the cut-off one's
/// shards; once DynamoDB answers, the fleet balances again and the lake holds
/// every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_500s_refusals_and_a_black_hole_never_end_a_worker_and_leases_recover() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let extra = "[timeouts]\ncall = \"5s\"\n[health]\nfailing_after = \"5s\"\n";
    let mut fleet = Fleet::with_config(&stream, 2, "6s", extra).await;
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").unwrap();
    let mut dynamodb = vec![];
    for _ in 0..2 {
        dynamodb.push(faultproxy::FaultProxy::start(&upstream, faultproxy::Flavor::DynamoDb).await.unwrap());
    }
    let set = |mode: faultproxy::Mode| dynamodb.iter().for_each(|d| d.set(mode));
    let records = keyed(events(800, 35, 3));
    let mut landed = put_records(&client, &stream, &records[..200]).await;
    for (i, proxy) in dynamodb.iter().enumerate() {
        fleet.start_with(i, &[("AWS_ENDPOINT_URL_DYNAMODB", &proxy.endpoint)]);
    }
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    fleet.wait_committed(&landed, Duration::from_secs(60)).await;

    set(faultproxy::Mode::ServerError);
    // Health while it happens: both workers answer 503 naming DynamoDB's
    // callers within the 10 s of 500s (failing_after is 5 s), not after.
    let mut seen = [false; 2];
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet.assert_running();
        for (i, seen) in seen.iter_mut().enumerate() {
            let answer = fleet.healthz(i);
            *seen |= answer.starts_with("HTTP/1.1 503") && answer.contains(" failing for ");
        }
    }
    assert_eq!(seen, [true, true], "no 503 during the DynamoDB 500s:\n{}", fleet.logs());
    set(faultproxy::Mode::Pass);
    landed.extend(put_records(&client, &stream, &records[200..400]).await);
    fleet.wait_committed(&landed, Duration::from_secs(60)).await;

    set(faultproxy::Mode::Refuse);
    let refused = Instant::now();
    poll("both workers to give their expired leases up", Duration::from_secs(25), || async {
        (0..2).all(|i| fleet.metric(i, "shardlake_consumer_leases_held") == 0.0).then_some(())
    })
    .await;
    poll("both workers to answer /healthz 503 naming the renewals", Duration::from_secs(15), || async {
        (0..2)
            .all(|i| {
                let answer = fleet.healthz(i);
                answer.starts_with("HTTP/1.1 503") && answer.contains("lease_renewal failing")
            })
            .then_some(())
    })
    .await;
    while refused.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet.assert_running();
    }
    set(faultproxy::Mode::Pass);
    landed.extend(put_records(&client, &stream, &records[400..600]).await);
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;

    // w0 cut off: its calls hang until the call timeout. It must give its
    // leases up (not keep reporting them) while w1 takes every shard.
    dynamodb[0].set(faultproxy::Mode::BlackHole);
    let cut = Instant::now();
    landed.extend(put_records(&client, &stream, &records[600..700]).await);
    poll("w0 to give its leases up and w1 to hold all four", Duration::from_secs(40), || async {
        let owners = fleet.owners().await;
        (fleet.metric(0, "shardlake_consumer_leases_held") == 0.0
            && owners.len() == 4
            && fleet.metric(1, "shardlake_consumer_leases_held") == 4.0)
            .then_some(())
    })
    .await;
    poll("w0 to answer /healthz 503 naming its DynamoDB calls", Duration::from_secs(30), || async {
        let answer = fleet.healthz(0);
        (answer.starts_with("HTTP/1.1 503") && answer.contains("worker: ") && answer.contains(" failing for "))
            .then_some(())
    })
    .await;
    assert!(fleet.healthz(1).starts_with("HTTP/1.1 200"), "{}", fleet.healthz(1));
    fleet.wait_committed(&landed, Duration::from_secs(60)).await;
    while cut.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet.assert_running();
    }
    assert!(dynamodb[0].counts.hung.load(std::sync::atomic::Ordering::Relaxed) > 0, "the black hole held no call");
    dynamodb[0].set(faultproxy::Mode::Pass);
    landed.extend(put_records(&client, &stream, &records[700..]).await);
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    fleet.terminate_all();
    fleet.check_lake(800).await;
}

/// Two workers write the same hourly partitions from their own shards and
/// both register them: each partition ends in the catalog once, created by
/// one of them, and the other's already-exists is no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_registering_the_same_partitions_leave_one_entry_each() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = unique("fleet").replace('-', "_");
    let stream = create_stream(&client, 4).await;
    let top = format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\n");
    let mut fleet = Fleet::with_lines(&stream, 2, "10s", &top, "").await;
    let records = keyed(events(800, 33, 3));
    fleet.start(0);
    fleet.start(1);
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    let landed = put_records(&client, &stream, &records).await;
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    fleet.setup.download(&s3_client().await, &fleet.bucket, "lake/").await;
    let mut lake = BTreeMap::new();
    for file in parquet_files(&fleet.setup.lake()) {
        let dir = file.parent().unwrap().strip_prefix(fleet.setup.lake()).unwrap().display().to_string();
        let values: Vec<String> = dir.split('/').map(|seg| seg.split_once('=').unwrap().1.to_string()).collect();
        lake.insert(values, format!("s3://{}/lake/{dir}/", fleet.bucket));
    }
    assert!(lake.len() >= 3, "{lake:?}");
    poll("the catalog to list the lake's partitions", Duration::from_secs(30), || async {
        let page = glue.get_partitions().database_name(&db).table_name("events").send().await.unwrap();
        let catalog: BTreeMap<Vec<String>, String> = page
            .partitions()
            .iter()
            .map(|p| (p.values().to_vec(), p.storage_descriptor().unwrap().location().unwrap().to_string()))
            .collect();
        (page.partitions().len() == lake.len() && catalog == lake).then_some(())
    })
    .await;
    let created: f64 = (0..2).map(|i| fleet.metric(i, "shardlake_consumer_catalog_partitions_registered_total")).sum();
    let failures: f64 = (0..2).map(|i| fleet.metric(i, "shardlake_consumer_catalog_failures_total")).sum();
    assert_eq!((created, failures), (lake.len() as f64, 0.0), "{}", fleet.logs());
    for i in 0..2 {
        assert!(fleet.healthz(i).starts_with("HTTP/1.1 200"), "w{i}: {}", fleet.healthz(i));
    }
    fleet.terminate_all();
    fleet.check_lake(800).await;
}

/// Schema evolution in a fleet: readers of both workers meet the same new
/// fields at once; version 2 is stored once (the first writer wins, the
/// other worker adopts it), the table gets each column once, and every
/// record lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_meeting_the_same_new_fields_make_one_schema_version() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = unique("fleet").replace('-', "_");
    let stream = create_stream(&client, 4).await;
    let top = format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\n");
    let mut fleet = Fleet::with_lines(&stream, 2, "10s", &top, "").await;
    fleet.start(0);
    fleet.start(1);
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    let mut landed = put_records(&client, &stream, &keyed(events(400, 38, 2))).await;
    landed.extend(put_records(&client, &stream, &keyed(with_coupons(events(400, 39, 2)))).await);
    fleet.wait_committed(&landed, Duration::from_secs(90)).await;
    let metric = |name: &str| -> Vec<f64> { (0..2).map(|i| fleet.metric(i, name)).collect() };
    assert_eq!(metric("shardlake_consumer_schema_version"), [2.0, 2.0], "{}", fleet.logs());
    let added: f64 = metric("shardlake_consumer_schema_columns_added_total").iter().sum();
    assert_eq!(added, 2.0, "one worker added the two columns, the other adopted them\n{}", fleet.logs());
    let table = glue.get_table().database_name(&db).name("events").send().await.unwrap().table.unwrap();
    let columns: Vec<&str> = table.storage_descriptor().unwrap().columns().iter().map(|c| c.name()).collect();
    assert_eq!(columns.iter().filter(|c| **c == "coupon" || **c == "score").count(), 2, "{columns:?}");
    assert_eq!(columns.last(), Some(&"_extra"));
    fleet.terminate_all();
    fleet.check_lake(800).await;
    let coupons = python(
        "import sys, duckdb\nprint(duckdb.sql(f\"select count(coupon) from read_parquet('{sys.argv[1]}/**/*.parquet', union_by_name = true)\").fetchall()[0][0])",
        &[fleet.setup.lake().to_str().unwrap()],
    );
    assert_eq!(coupons.trim(), "400");
}

/// Partition values of every partition the Glue table lists, beside those
/// of the lake's data files (downloaded into the setup's lake folder).
async fn catalog_and_lake_partitions(
    glue: &aws_sdk_glue::Client,
    db: &str,
    lake: &std::path::Path,
) -> (std::collections::BTreeSet<Vec<String>>, std::collections::BTreeSet<Vec<String>>) {
    let mut listed = std::collections::BTreeSet::new();
    let mut token = None;
    loop {
        let page = glue.get_partitions().database_name(db).table_name("events").set_next_token(token).send().await;
        let page = page.unwrap();
        listed.extend(page.partitions().iter().map(|p| p.values().to_vec()));
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let in_lake = parquet_files(lake)
        .iter()
        .map(|f| {
            let dir = f.parent().unwrap().strip_prefix(lake).unwrap().display().to_string();
            dir.split('/').map(|seg| seg.split_once('=').unwrap().1.to_string()).collect()
        })
        .collect();
    (listed, in_lake)
}

/// Column names of the lake's Glue table.
async fn table_columns(glue: &aws_sdk_glue::Client, db: &str) -> Vec<String> {
    let table = glue.get_table().database_name(db).name("events").send().await.unwrap().table.unwrap();
    table.storage_descriptor().unwrap().columns().iter().map(|c| c.name().to_string()).collect()
}

/// Issue 25, row 1: schema versions in a fleet converge without a restart.
/// w0 stores version 2 (f1) and is killed before the table update; w1,
/// which never met f1, adopts version 2 and puts f1 in the table; then the
/// live workers meet new fields at once while a third joins and w0 comes
/// back. Every worker ends on the newest version, the table has each column
/// once, `/healthz` is 200 everywhere and every record is in the lake once,
/// with every new field in its column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolving_workers_converge_after_a_kill_a_race_and_a_join_without_a_restart() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = unique("fleet").replace('-', "_");
    let stream = create_stream(&client, 4).await;
    let top = format!(
        "catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\nevolve_interval = \"0s\"\n"
    );
    let mut fleet = Fleet::with_lines(&stream, 3, "10s", &top, "").await;
    fleet.start_with(0, &[("SHARDLAKE_CRASH_AT", "after_schema_version:1")]);
    fleet.start(1);
    fleet.wait_balanced(4, 2, Duration::from_secs(60)).await;
    let w0_shards = shards_of(&fleet.owners().await, "w0");
    let f1 = with_fields(events(100, 41, 2), r#""f1":"a""#);
    let mut landed = put_to_shards(&client, &stream, &w0_shards, f1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = fleet.workers[0].as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "w0 was not killed at after_schema_version\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    fleet.workers[0] = None;
    assert!(!status.success() && fleet.log(0).contains("aborting at after_schema_version"), "{}", fleet.log(0));
    poll("w1 on version 2 and f1 in the table, with no f1 record read by w1", Duration::from_secs(20), || async {
        let v2 = fleet.metric(1, "shardlake_consumer_schema_version") == 2.0;
        (v2 && table_columns(&glue, &db).await.iter().any(|c| c == "f1")).then_some(())
    })
    .await;
    assert!(fleet.log(1).contains("adopted the schema version another worker stored"), "{}", fleet.log(1));

    let f2 = keyed(with_fields(events(200, 42, 2), r#""f2":1"#));
    landed.extend(put_records(&client, &stream, &f2).await);
    fleet.start(2);
    let f3 = keyed(with_fields(events(200, 43, 2), r#""f1":"b","f3":true"#));
    landed.extend(put_records(&client, &stream, &f3).await);
    fleet.start(0);
    fleet.wait_committed(&landed, Duration::from_secs(120)).await;
    let version = poll("every worker on the newest version", Duration::from_secs(20), || async {
        let v: Vec<f64> = (0..3).map(|i| fleet.metric(i, "shardlake_consumer_schema_version")).collect();
        (v.iter().all(|x| *x == v[0]) && v[0] >= 3.0).then_some(v[0])
    })
    .await;
    let columns = table_columns(&glue, &db).await;
    for f in ["f1", "f2", "f3"] {
        assert_eq!(columns.iter().filter(|c| *c == f).count(), 1, "{columns:?}");
    }
    assert_eq!(columns.last().map(String::as_str), Some("_extra"));
    for i in 0..3 {
        poll(&format!("w{i} /healthz 200"), Duration::from_secs(30), || async {
            fleet.healthz(i).starts_with("HTTP/1.1 200").then_some(())
        })
        .await;
    }
    eprintln!("fleet converged on schema version {version} with columns {columns:?}");
    fleet.terminate_all();
    fleet.check_lake(500).await;
    let (listed, in_lake) = catalog_and_lake_partitions(&glue, &db, &fleet.setup.lake()).await;
    assert_eq!(listed, in_lake, "GetPartitions lists exactly the lake's partitions");
    let counts = python(
        "import sys, duckdb\nprint(*duckdb.sql(f\"select count(f1), count(f2), count(f3), count(*) filter (where _extra is not null) \
         from read_parquet('{sys.argv[1]}/**/*.parquet', union_by_name = true)\").fetchall()[0])",
        &[fleet.setup.lake().to_str().unwrap()],
    );
    assert_eq!(counts.trim(), "300 200 200 0", "every new field is in its column");
}

/// Issue 25, rows 2 and 8: a batch of 1,100 partitions with ~425-byte paths
/// (a DynamoDB store: a checkpoint item holds 400 KB) commits, with the
/// pending list capped by bytes; every partition is registered, and the
/// checkpoint's pending list empties once the catalog confirmed them,
/// though no batch commits after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1100_long_partitions_commits_and_its_pending_list_empties_once_registered() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = unique("fleet").replace('-', "_");
    let stream = create_stream(&client, 1).await;
    let top = format!(
        "catalog = \"glue://{db}/events\"\ncatalog_create = true\npartition = \"tenant=!{{field:tenant}}/source=!{{field:source}}/\"\n"
    );
    let mut fleet = Fleet::with_lines(&stream, 1, "10s", &top, "").await;
    let (t, s) = ("t".repeat(195), "s".repeat(200));
    let records: Vec<Vec<u8>> = events(1_100, 44, 1)
        .into_iter()
        .enumerate()
        .map(|(i, e)| with_fields(vec![e], &format!(r#""tenant":"{t}{i:05}","source":"{s}""#)).remove(0))
        .collect();
    let landed = put_records(&client, &stream, &keyed(records)).await;
    fleet.start(0);
    fleet.wait_committed(&landed, Duration::from_secs(120)).await;
    assert!(fleet.log(0).contains("more partitions wait for the catalog than a checkpoint keeps"), "{}", fleet.log(0));
    poll("1,100 partitions registered", Duration::from_secs(120), || async {
        let mut n = 0;
        let mut token = None;
        loop {
            let get = glue.get_partitions().database_name(&db).table_name("events").set_next_token(token);
            let page = get.send().await.unwrap();
            n += page.partitions().len();
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        (n == 1_100).then_some(())
    })
    .await;
    poll("the checkpoint's pending list empty", Duration::from_secs(30), || async {
        let state = fleet.observer.load("shardId-000000000000").await.unwrap();
        state.catalog_pending.is_empty().then_some(())
    })
    .await;
    assert!(fleet.healthz(0).starts_with("HTTP/1.1 200"), "{}", fleet.healthz(0));
    fleet.terminate_all();
    fleet.setup.download(&s3_client().await, &fleet.bucket, "lake/").await;
    let counts = python(
        "import sys, duckdb\nprint(*duckdb.sql(f\"select count(*), count(distinct event_id), count(distinct tenant) \
         from read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning = true)\").fetchall()[0])",
        &[fleet.setup.lake().to_str().unwrap()],
    );
    assert_eq!(counts.trim(), "1100 1100 1100");
}

/// Issue 25, row 3: a record whose new field's value is an object with a
/// 450,000-character key, and one with 900 long keys, would make column
/// types too long for a stored version and for Glue: both fields stay in
/// `_extra` (counted), the records are written, a normal new field still
/// becomes a column, and the shard never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_too_large_for_a_column_stays_in_extra_and_the_shard_goes_on() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = unique("fleet").replace('-', "_");
    let stream = create_stream(&client, 1).await;
    let top = format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\n");
    let mut fleet = Fleet::with_lines(&stream, 1, "10s", &top, "").await;
    let huge = format!(r#""blob":{{"{}":1}}"#, "k".repeat(450_000));
    let wide: Vec<String> =
        (0..900).map(|i| format!(r#""a_long_nested_key_name_of_fifty_characters_{i:05}":1"#)).collect();
    let wide = format!(r#""wide":{{{}}}"#, wide.join(","));
    let mut records = events(20, 45, 1);
    records.extend(with_fields(events(1, 46, 1), &huge));
    records.extend(with_fields(events(1, 47, 1), &wide));
    records.extend(with_fields(events(20, 48, 1), r#""coupon":"c""#));
    let landed = put_records(&client, &stream, &keyed(records)).await;
    fleet.start(0);
    fleet.wait_committed(&landed, Duration::from_secs(60)).await;
    let refused = fleet.metric(0, "shardlake_consumer_schema_fields_in_extra_total{reason=\"refused\"}");
    assert_eq!(refused, 2.0, "{}", fleet.log(0));
    let columns = table_columns(&glue, &db).await;
    assert!(columns.iter().any(|c| c == "coupon"), "{columns:?}");
    assert!(!columns.iter().any(|c| c == "blob" || c == "wide"), "{columns:?}");
    assert!(fleet.log(0).contains("fields whose column type would be too long stay in _extra"), "{}", fleet.log(0));
    assert!(fleet.healthz(0).starts_with("HTTP/1.1 200"), "{}", fleet.healthz(0));
    fleet.terminate_all();
    fleet.check_lake(42).await;
    let (listed, in_lake) = catalog_and_lake_partitions(&glue, &db, &fleet.setup.lake()).await;
    assert_eq!(listed, in_lake, "GetPartitions lists exactly the lake's partitions");
    let kept = python(
        "import sys, duckdb\nprint(*duckdb.sql(f\"select count(*) filter (where _extra like '%\\\"blob\\\"%'), \
         count(*) filter (where _extra like '%\\\"wide\\\"%'), count(coupon) \
         from read_parquet('{sys.argv[1]}/**/*.parquet', union_by_name = true)\").fetchall()[0])",
        &[fleet.setup.lake().to_str().unwrap()],
    );
    assert_eq!(kept.trim(), "1 1 20");
}

/// Waits until worker `i` has exited (a crash hook fired) and forgets it.
async fn wait_exited(fleet: &mut Fleet, i: usize, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = fleet.workers[i].as_mut().unwrap().try_wait().unwrap() {
            fleet.workers[i] = None;
            return status;
        }
        assert!(Instant::now() < deadline, "w{i} did not exit within {limit:?}\n{}", fleet.log(i));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two workers writing one Iceberg table in the Glue Data Catalog, on S3
/// (their concurrent commits fenced by Glue's `VersionId` check), killed
/// (abort, as SIGKILL) at every step of the protocol (after the intent,
/// between upload and table commit, between table commit and checkpoint)
/// while the stream goes from 4 to 8 shards: pyiceberg reads every record
/// once, and every snapshot names the batches it holds, each batch once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_iceberg_workers_on_glue_and_s3_killed_at_every_step_through_a_reshard_append_each_record_once() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let db = unique("fleet").replace('-', "_");
    let table = format!("glue://{db}/events");
    let top = format!(
        "table_format = \"iceberg\"\ncatalog = \"{table}\"\ncatalog_create = true\ncommit_interval = \"500ms\"\n"
    );
    let mut fleet = Fleet::with_destination(&stream, 2, "3s", None, &top, "").await;
    let records = keyed(events(1200, 41, 6));
    let mut landed = put_records(&client, &stream, &records[..400]).await;

    // Round 1: w0 dies right after its first intent, w1 between an upload and its table commit.
    fleet.start_with(0, &[("SHARDLAKE_CRASH_AT", "after_intent:1")]);
    fleet.start_with(1, &[("SHARDLAKE_CRASH_AT", "before_commit:2")]);
    for i in 0..2 {
        assert!(!wait_exited(&mut fleet, i, Duration::from_secs(60)).await.success());
    }
    // Round 2: w0 dies between a table commit and its checkpoint; w1 runs on.
    fleet.start_with(0, &[("SHARDLAKE_CRASH_AT", "after_table_commit:1")]);
    fleet.start(1);
    landed.extend(put_records(&client, &stream, &records[400..800]).await);
    assert!(!wait_exited(&mut fleet, 0, Duration::from_secs(60)).await.success());
    // Round 3: 4 -> 8 shards under the fleet, then w0 back.
    client
        .update_shard_count()
        .stream_name(&stream)
        .target_shard_count(8)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .expect("update shard count");
    wait_active(&client, &stream).await;
    fleet.start(0);
    landed.extend(put_records(&client, &stream, &records[800..]).await);
    let shards: std::collections::BTreeSet<&str> = landed.iter().map(|(s, _)| s.as_str()).collect();
    assert!(shards.len() > 4, "records should land on the parents and the children: {shards:?}");
    fleet.wait_committed(&landed, Duration::from_secs(120)).await;
    fleet.terminate_all();

    for (point, i) in [("after_intent", 0), ("before_commit", 1), ("after_table_commit", 0)] {
        assert!(fleet.log(i).contains(&format!("aborting at {point}")), "w{i} at {point}:\n{}", fleet.log(i));
    }
    let logs = fleet.logs();
    assert!(logs.contains("replayed batch already in the table"), "{logs}");
    let v = iceberg_view(&table);
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(1200), Some(1200)), "{v}\n{logs}");
    let seen = batches_named_once(&v);
    let children = seen
        .iter()
        .filter(|n| !["0", "1", "2", "3"].iter().any(|k| n.contains(&format!("shardId-00000000000{k}/"))))
        .count();
    assert!(children > 0, "no batch of a child shard: {seen:?}");
    eprintln!("ICEBERG FLEET: {} snapshots, {} batches", v["batches"].as_array().unwrap().len(), seen.len());
}
