//! Helpers for the consumer's integration tests: streams on the Kinesis
//! emulator, a consumer process with a generated config, and lake checks with
//! our own Parquet reader and DuckDB.

#![allow(dead_code, missing_docs)]

#[path = "../../../../tests/it/common/mod.rs"]
pub mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
pub use common::{gen_events, python, s3_client, stack, stack_env, unique};
use shardlake::events::{EVENTS_SCHEMA_TOML, GenOptions, generate};
use shardlake_consumer::checkpoint::compare_sequences;

/// A Kinesis client for the emulator (kinesis-local).
pub async fn kinesis() -> Client {
    stack_env("AWS_ENDPOINT_URL_KINESIS");
    let config = shardlake::aws::sdk_config().await;
    shardlake::aws::kinesis_client(&config)
}

/// A Glue client for the catalog emulator (moto).
pub async fn glue() -> aws_sdk_glue::Client {
    stack_env("AWS_ENDPOINT_URL_GLUE");
    let config = shardlake::aws::sdk_config().await;
    shardlake::aws::glue_client(&config, &Default::default())
}

/// Polls `check` every 100 ms until it returns `Some` or `limit` passes.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a stream with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(client: &Client, shards: i32) -> String {
    let name = unique("stream");
    client.create_stream().stream_name(&name).shard_count(shards).send().await.expect("create stream");
    wait_active(client, &name).await;
    name
}

/// Waits until the stream is ACTIVE (after create, split, merge).
pub async fn wait_active(client: &Client, name: &str) {
    poll("stream ACTIVE", Duration::from_secs(30), || async {
        let d = client.describe_stream_summary().stream_name(name).send().await.ok()?;
        (d.stream_description_summary()?.stream_status() == &StreamStatus::Active).then_some(())
    })
    .await
}

/// Where a put record landed: shard id and sequence number.
pub type Landed = (String, String);

/// Puts records (partition key, data) in PutRecords batches of 500, retrying
/// failed entries; returns where each record landed.
pub async fn put_records(client: &Client, stream: &str, records: &[(String, Vec<u8>)]) -> Vec<Landed> {
    put_hashed(client, stream, records, &[]).await
}

/// Puts `records` into `shards` only, round robin (by explicit hash key).
pub async fn put_to_shards(client: &Client, stream: &str, shards: &[String], records: Vec<Vec<u8>>) -> Vec<Landed> {
    let listed = client.list_shards().stream_name(stream).send().await.unwrap();
    let hashes: Vec<String> = shards
        .iter()
        .map(|id| {
            let shard = listed.shards().iter().find(|s| s.shard_id() == id).expect("shard listed");
            shard.hash_key_range().unwrap().starting_hash_key().to_string()
        })
        .collect();
    let keyed: Vec<(String, Vec<u8>)> = records.into_iter().enumerate().map(|(i, r)| (format!("k{i}"), r)).collect();
    let by_record: Vec<String> = (0..keyed.len()).map(|i| hashes[i % hashes.len()].clone()).collect();
    put_hashed(client, stream, &keyed, &by_record).await
}

/// `events` with `fields` (JSON members, `"a":1,"b":"x"`) added to each.
pub fn with_fields(events: Vec<Vec<u8>>, fields: &str) -> Vec<Vec<u8>> {
    events
        .into_iter()
        .map(|e| {
            let text = String::from_utf8(e).unwrap();
            format!("{},{fields}}}", text.trim_end().strip_suffix('}').unwrap()).into_bytes()
        })
        .collect()
}

/// `put_records`, with record `i` sent to explicit hash key `hashes[i]`
/// when `hashes` is not empty.
async fn put_hashed(client: &Client, stream: &str, records: &[(String, Vec<u8>)], hashes: &[String]) -> Vec<Landed> {
    let mut shards = Vec::with_capacity(records.len());
    for (c, chunk) in records.chunks(500).enumerate() {
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        let mut out = vec![(String::new(), String::new()); chunk.len()];
        for _ in 0..20 {
            if pending.is_empty() {
                break;
            }
            let entries = pending
                .iter()
                .map(|&i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&chunk[i].0)
                        .set_explicit_hash_key(hashes.get(c * 500 + i).cloned())
                        .data(Blob::new(chunk[i].1.clone()))
                        .build()
                        .unwrap()
                })
                .collect::<Vec<_>>();
            let resp = client.put_records().stream_name(stream).set_records(Some(entries)).send().await;
            let Ok(resp) = resp else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut still = Vec::new();
            for (&i, r) in pending.iter().zip(resp.records()) {
                match (r.shard_id(), r.sequence_number()) {
                    (Some(s), Some(q)) if r.error_code().is_none() => out[i] = (s.to_string(), q.to_string()),
                    _ => still.push(i),
                }
            }
            pending = still;
        }
        assert!(pending.is_empty(), "{} records could not be put", pending.len());
        shards.extend(out);
    }
    shards
}

/// On a 2-shard stream: splits shard 0 in the middle of its hash range
/// (children 2 and 3), puts `after_split`, merges shard 3 with its neighbour
/// shard 1 (child 4), puts `after_merge`. Returns where those records landed,
/// which must cover parents and children alike.
pub async fn split_and_merge_while_putting(
    client: &Client,
    stream: &str,
    after_split: &[(String, Vec<u8>)],
    after_merge: &[(String, Vec<u8>)],
) -> Vec<Landed> {
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((1u128 << 126).to_string())
        .send()
        .await
        .expect("split shard");
    wait_active(client, stream).await;
    let mut landed = put_records(client, stream, after_split).await;
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge("shardId-000000000003")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await
        .expect("merge shards");
    wait_active(client, stream).await;
    landed.extend(put_records(client, stream, after_merge).await);
    landed
}

/// `count` reference events (hour partitions over `hours` hours), one JSON text each.
pub fn events(count: u64, seed: u64, hours: u32) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    generate(&GenOptions { count, seed, hours, ..GenOptions::default() }, &mut buf).unwrap();
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

/// `events` with `"coupon":"C{i}","score":{i}.5` added at the end of each.
pub fn with_coupons(events: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let text = String::from_utf8(e).unwrap();
            format!("{},\"coupon\":\"C{i}\",\"score\":{i}.5}}", text.trim_end().strip_suffix('}').unwrap()).into_bytes()
        })
        .collect()
}

/// Keys the events by their `event_id`.
pub fn keyed(events: Vec<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let v: serde_json::Value = serde_json::from_slice(&e).unwrap_or_default();
            let key = v["event_id"].as_str().map(str::to_string).unwrap_or_else(|| format!("k{i}"));
            (key, e)
        })
        .collect()
}

/// A test's working folder: the config, the lake and the checkpoints.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub stream: String,
}

impl Setup {
    pub fn new(stream: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.toml"), EVENTS_SCHEMA_TOML).unwrap();
        Setup { dir, stream: stream.to_string() }
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// Writes `consumer.toml` with test-friendly timings plus `extra` lines.
    pub fn config(&self, extra: &str) -> PathBuf {
        self.config_to(&self.lake().display().to_string(), extra)
    }

    /// `config` with another destination (`s3://...`).
    pub fn config_to(&self, destination: &str, extra: &str) -> PathBuf {
        self.config_with_buffer(destination, extra, "")
    }

    /// `config_to` with `buffer` lines added to the `[buffer]` table
    /// (`memory_budget_mb = 64`; a `max_age` there replaces the 1 s default).
    pub fn config_with_buffer(&self, destination: &str, extra: &str, buffer: &str) -> PathBuf {
        let path = self.dir.path().join("consumer.toml");
        let text = format!(
            "stream = \"{}\"\ndestination = \"{}\"\ncheckpoint_store = \"file://{}\"\n{}\
             time_field = \"ts\"\nshutdown_timeout = \"30s\"\n{extra}\n\
             [buffer]\n{}{buffer}\n[polling]\nidle_interval = \"200ms\"\nmax_idle_interval = \"1s\"\nshard_refresh = \"1s\"\n\
             [metrics]\naddress = \"127.0.0.1:0\"\n",
            self.stream,
            destination,
            self.dir.path().join("checkpoints").display(),
            // `infer_sample` in `extra` means inferred-schema mode; `schema =` another schema.
            if extra.contains("infer_sample") || extra.contains("schema =") {
                ""
            } else {
                "schema = \"schema.toml\"\n"
            },
            if buffer.contains("max_age") { "" } else { "max_age = \"1s\"\n" },
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs the consumer with `SHARDLAKE_CRASH_AT=crash_at` (`point:n`) until
    /// it aborts there; panics if it exits any other way.
    pub async fn run_until_crash(&self, crash_at: &str) {
        let mut crashing = self.start(&[("SHARDLAKE_CRASH_AT", crash_at)]);
        let status = tokio::task::spawn_blocking(move || crashing.wait().unwrap()).await.unwrap();
        let point = crash_at.split(':').next().unwrap();
        assert!(!status.success(), "expected a crash at {crash_at}");
        assert!(self.log().contains(&format!("aborting at {point}")), "{}", self.log());
    }

    /// Starts `shardlake-consumer run` with `env` added, and waits until it
    /// serves metrics (so it handles signals).
    pub fn start(&self, env: &[(&str, &str)]) -> Child {
        const READY: &str = "metrics on http://";
        let before = self.log().matches(READY).count();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("consumer.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
            .args(["run", "--config"])
            .arg(self.dir.path().join("consumer.toml"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "shardlake_consumer=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(READY).count() == before {
            if let Some(status) = child.try_wait().unwrap() {
                // A crash hook may fire before the line appears; the caller checks.
                assert!(!env.is_empty(), "consumer exited at start with {status}:\n{}", self.log());
                break;
            }
            assert!(Instant::now() < deadline, "consumer not ready after 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("consumer.log")).unwrap_or_default()
    }

    /// Copies every object under `s3://bucket/prefix` into the local lake
    /// folder, so the same checks run on it.
    pub async fn download(&self, s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> usize {
        let mut n = 0;
        let mut token = None;
        loop {
            let list = s3.list_objects_v2().bucket(bucket).prefix(prefix).set_continuation_token(token).send().await;
            let list = list.unwrap();
            for o in list.contents() {
                let key = o.key().unwrap();
                let body = s3.get_object().bucket(bucket).key(key).send().await.unwrap().body.collect().await.unwrap();
                let path = self.lake().join(key.strip_prefix(prefix).unwrap());
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, body.into_bytes()).unwrap();
                n += 1;
            }
            token = list.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return n;
            }
        }
    }

    /// The consumer's `/metrics` and `/healthz` address, from its log.
    pub fn metrics_address(&self) -> String {
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains("metrics on http://")).expect("metrics line in the log");
        line.split("http://").nth(1).unwrap().trim_end_matches("/metrics").to_string()
    }

    /// The consumer's `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_address(), "/metrics")
    }

    /// The consumer's `/healthz` answer: status line, headers and body.
    pub fn healthz(&self) -> String {
        http_get(&self.metrics_address(), "/healthz")
    }

    /// Rows in the lake's data files, by our own Parquet reader.
    pub fn lake_rows(&self) -> u64 {
        parquet_files(&self.lake())
            .iter()
            .map(|p| {
                let f = std::fs::File::open(p).unwrap();
                let r = parquet::file::serialized_reader::SerializedFileReader::new(f).unwrap();
                parquet::file::reader::FileReader::metadata(&r).file_metadata().num_rows() as u64
            })
            .sum()
    }

    /// Error lines in the error prefix, by error type.
    pub fn error_lines(&self) -> BTreeMap<String, Vec<serde_json::Value>> {
        let mut out = BTreeMap::new();
        let root = self.lake().join("_errors");
        let Ok(kinds) = std::fs::read_dir(&root) else { return out };
        for kind in kinds {
            let kind = kind.unwrap().path();
            let mut lines = Vec::new();
            for f in std::fs::read_dir(&kind).unwrap() {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                lines.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
            }
            out.insert(kind.file_name().unwrap().to_string_lossy().into_owned(), lines);
        }
        out
    }

    /// Waits until the lake holds `rows` rows (our reader).
    pub async fn wait_rows(&self, rows: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.lake_rows();
            if n >= rows {
                return;
            }
            assert!(Instant::now() < deadline, "lake has {n} of {rows} rows after {limit:?}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Shards whose checkpoint is not yet at or past the last record put to them.
    pub fn behind(&self, landed: &[Landed]) -> Vec<String> {
        let mut last: BTreeMap<&str, &str> = BTreeMap::new();
        for (shard, seq) in landed {
            let e = last.entry(shard.as_str()).or_insert(seq.as_str());
            if compare_sequences(seq, e).is_gt() {
                *e = seq.as_str();
            }
        }
        let dir = self.dir.path().join("checkpoints/shardlake").join(&self.stream);
        last.iter()
            .filter(|(shard, seq)| {
                let state = std::fs::read(dir.join(format!("{shard}.json"))).ok();
                let checkpoint = state
                    .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s).ok())
                    .and_then(|v| v["checkpoint"].as_str().map(str::to_string));
                !checkpoint.is_some_and(|c| compare_sequences(&c, seq).is_ge())
            })
            .map(|(shard, _)| shard.to_string())
            .collect()
    }

    /// Waits until every shard's checkpoint is at or past the last record
    /// put to it: everything is committed, not just uploaded.
    pub async fn wait_committed(&self, landed: &[Landed], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let behind = self.behind(landed);
            if behind.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "shards {behind:?} not committed after {limit:?}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// DuckDB over the lake with hive partitioning: total rows, distinct
    /// event ids, and rows whose partition columns disagree with `ts`.
    pub fn duckdb_check(&self) -> (u64, u64, u64) {
        let out = python(
            r#"
import sys, duckdb
q = """
select count(*), count(distinct event_id),
       count(*) filter (where year::int <> year(ts at time zone 'UTC') or month::int <> month(ts at time zone 'UTC')
                        or day::int <> day(ts at time zone 'UTC') or hour::int <> hour(ts at time zone 'UTC'))
from read_parquet(? , hive_partitioning = true, hive_types_autocast = false, union_by_name = true)
"""
print(*duckdb.sql(q.replace('?', repr(sys.argv[1] + '/**/*.parquet'))).fetchall()[0])
"#,
            &[self.lake().to_str().unwrap()],
        );
        let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    }
}

/// GET over plain HTTP/1.1 with std only (the endpoint is on 127.0.0.1).
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

/// Every `.parquet` file under `root`.
pub fn parquet_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

/// A process's peak resident set size in MiB (`VmHWM` in `/proc/PID/status`).
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

/// The sum of every series of metric `name` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') { rest.split_once("} ")?.1 } else { rest.strip_prefix(' ')? };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Each series of metric `name` by the value of its label `label`.
pub fn metric_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let want = format!("{label}=\"");
        let Some(v) = labels.split(',').find_map(|kv| kv.strip_prefix(want.as_str())) else { continue };
        *out.entry(v.trim_end_matches('"').to_string()).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Sends SIGTERM (graceful stop) and waits for the exit.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    terminate_wait(child)
}

/// Waits up to 60 s for a signalled consumer to exit.
pub fn terminate_wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "consumer did not stop within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Python that defines `load_table(url)`: the Iceberg table a shardlake
/// catalog URL names (`glue://DATABASE/TABLE` on the test Glue and S3, or
/// `sqlite://FILE/NAMESPACE/TABLE`), opened by pyiceberg
/// (`scripts/iceberg_catalog.py`).
pub fn py_load_iceberg() -> String {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    format!(
        "import sys\nsys.path.insert(0, {:?})\nfrom iceberg_catalog import load_table\n",
        scripts.display().to_string()
    )
}

/// pyiceberg's view of the table at catalog URL `url`: rows, distinct event
/// ids, each append snapshot's batches, compaction snapshots, and data files.
pub fn iceberg_view(url: &str) -> serde_json::Value {
    const READ: &str = r#"
import json, duckdb
t = load_table(sys.argv[1])
arrow = t.scan().to_arrow()
con = duckdb.connect()
con.register("t", arrow)
rows, distinct = con.sql("select count(*), count(distinct event_id) from t").fetchall()[0]
# A compaction (pyiceberg's overwrite) commits a delete and an append, both marked.
compactions = [s for s in t.snapshots() if "shardlake.compaction" in s.summary.additional_properties]
appends = [s for s in t.snapshots() if s.summary.operation.value == "append" and s not in compactions]
print(json.dumps({"rows": rows, "distinct": distinct,
  "batches": [json.loads(s.summary.additional_properties.get("shardlake.batches", "[]")) for s in appends],
  "compactions": len(compactions),
  "files": len(list(t.scan().plan_files()))}))
"#;
    serde_json::from_str(&python(&format!("{}{READ}", py_load_iceberg()), &[url])).unwrap()
}

/// The batches an [`iceberg_view`] names, checking that every append
/// snapshot names some and that none is named twice.
pub fn batches_named_once(view: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for names in view["batches"].as_array().unwrap() {
        let names = names.as_array().unwrap();
        assert!(!names.is_empty(), "a snapshot without batches: {view}");
        for n in names {
            assert!(seen.insert(n.as_str().unwrap().to_string()), "batch {n} appended twice: {view}");
        }
    }
    seen
}
