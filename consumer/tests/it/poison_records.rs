//! Poison records: hostile input among good records on several shards of one
//! stream. Each hostile record ends in the error prefix with its reason and
//! its bytes (or at least their length); none crashes, stalls or restarts the
//! worker, none blows its memory budget, and every good record is in the lake
//! exactly once.
//!
//! The checks are collected and reported together, so one run shows every
//! defect at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::*;
use base64::Engine as _;
use shardlake::aggregation::{UserRecord, aggregate};

const SCHEMA: &str = r#"[[columns]]
name = "event_id"
type = "string"
required = true

[[columns]]
name = "ts"
type = "timestamp"

[[columns]]
name = "country"
type = "string"

[[columns]]
name = "price"
type = "decimal(10,2)"

[[columns]]
name = "amount"
type = "double"

[[columns]]
name = "quantity"
type = "bigint"
"#;

const TEMPLATE: &str =
    "country=!{field:country}/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/hour=!{timestamp:HH}";

const BUDGET_MB: f64 = 64.0;
const RSS_OVERHEAD_MB: f64 = 200.0;
const GOOD: usize = 600;

/// What one user record should become.
#[derive(Debug, Clone)]
enum Want {
    /// A row in the lake.
    Good,
    /// One error line of one of these types (and with `field`, when given).
    Error { name: &'static str, types: &'static [&'static str], field: Option<&'static str> },
    /// Duplicate time keys: a row whose stored `ts` is in its partition's hour,
    /// or one error line of any type.
    DupTs,
}

/// One Kinesis record: partition key, bytes, and what each user record in it
/// (one unless it is an aggregate) should become, with its bytes.
struct Sent {
    key: String,
    data: Vec<u8>,
    users: Vec<(Want, Vec<u8>)>,
}

fn plain(key: &str, data: Vec<u8>, want: Want) -> Sent {
    Sent { key: key.to_string(), data: data.clone(), users: vec![(want, data)] }
}

fn err(name: &'static str, types: &'static [&'static str], field: Option<&'static str>) -> Want {
    Want::Error { name, types, field }
}

fn good_record(i: usize) -> Vec<u8> {
    let countries = ["us", "de", "jp", "br", "in"];
    format!(
        r#"{{"event_id":"good-{i}","ts":"2024-03-15T{:02}:{:02}:{:02}Z","country":"{}","price":{}.{:02},"amount":{}.5,"quantity":{}}}"#,
        i % 6,
        i % 60,
        (i * 7) % 60,
        countries[i % countries.len()],
        i * 3 % 10_000,
        i % 100,
        i,
        i % 17
    )
    .into_bytes()
}

fn hostile() -> Vec<Sent> {
    let head = |id: &str| format!(r#"{{"event_id":"{id}","ts":"2024-03-15T01:00:00Z","country":"us","#);
    let mut out = Vec::new();

    // 20,000 unclosed `[`, and 20,000 `[` closed again, under an unknown field.
    let mut deep1 = format!("{}\"x\":", head("deep1")).into_bytes();
    deep1.extend(std::iter::repeat_n(b'[', 20_000));
    out.push(plain("hostile-deep1", deep1, err("20,000 unclosed [", &["too_deep"], None)));
    let mut deep2 = format!("{}\"x\":", head("deep2")).into_bytes();
    deep2.extend(std::iter::repeat_n(b'[', 20_000));
    deep2.extend(std::iter::repeat_n(b']', 20_000));
    deep2.push(b'}');
    out.push(plain("hostile-deep2", deep2, err("20,000 [ then ]", &["too_deep"], None)));
    // 40 KB of `[`: refused at the depth limit, before it is known to be an array.
    out.push(plain("hostile-brackets", vec![b'['; 40 * 1024], err("40 KB of [", &["too_deep"], None)));
    // 200 levels of {"a": objects (201 with the record itself).
    let mut obj = format!("{}\"a\":", head("obj200"));
    obj.push_str(&"{\"a\":".repeat(199));
    obj.push('1');
    obj.push_str(&"}".repeat(200));
    out.push(plain("hostile-obj200", obj.into_bytes(), err("200 nested objects", &["too_deep"], None)));
    // Numbers no column can hold.
    out.push(plain(
        "hostile-dec",
        format!("{}\"price\":1e2000000000}}", head("dec-huge")).into_bytes(),
        err("decimal 1e2000000000", &["type_mismatch"], Some("price")),
    ));
    out.push(plain(
        "hostile-dbl",
        format!("{}\"amount\":1e400}}", head("dbl-huge")).into_bytes(),
        err("double 1e400", &["type_mismatch"], Some("amount")),
    ));
    // A partition value whose path segment is over the 255-byte file-name limit.
    out.push(plain(
        "hostile-longpart",
        format!(r#"{{"event_id":"long-part","ts":"2024-03-15T02:00:00Z","country":"{}"}}"#, "p".repeat(400))
            .into_bytes(),
        err("400-char partition value", &["partition_too_long"], None),
    ));
    // A KPL aggregate with one ~300 KB partition key shared by 2,000 tiny user records.
    let big_key = "k".repeat(300_000);
    let users: Vec<(Want, Vec<u8>)> = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                (err("empty user record in a 300 KB-key aggregate", &["invalid_json"], None), Vec::new())
            } else {
                (err("`7` in a 300 KB-key aggregate", &["not_object"], None), b"7".to_vec())
            }
        })
        .collect();
    let packed = aggregate(
        &users
            .iter()
            .map(|(_, d)| UserRecord {
                partition_key: big_key.as_str().into(),
                explicit_hash_key: None,
                data: d.clone(),
            })
            .collect::<Vec<_>>(),
    );
    assert!(packed.len() < 1 << 20, "aggregate is {} bytes", packed.len());
    out.push(Sent { key: "hostile-agg-bigkey".into(), data: packed, users });
    // An aggregate with no user records.
    let empty = aggregate(&[]);
    out.push(plain("hostile-agg-empty", empty, err("aggregate of 0 records", &["undecodable_aggregate"], None)));
    // Whitespace only.
    out.push(plain("hostile-ws", b"   \n".to_vec(), err("whitespace only", &["invalid_json"], None)));
    // The time field twice, in different hours.
    out.push(plain(
        "hostile-dupts",
        br#"{"event_id":"dup-ts","ts":"2024-03-15T01:10:00Z","country":"us","ts":"2024-03-15T05:10:00Z"}"#.to_vec(),
        Want::DupTs,
    ));
    // Text after the closing brace, in a record with a wrong-typed field too.
    out.push(plain(
        "hostile-trailing",
        format!("{}\"quantity\":\"seven\"}} trailing text", head("trailing")).into_bytes(),
        err("text after } (and a wrong type)", &["invalid_json"], None),
    ));
    out
}

/// Soft assertions: collected, then reported together.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let msg = what();
            eprintln!("CHECK FAILED: {msg}");
            self.0.push(msg);
        }
    }
}

fn short(s: &str) -> String {
    if s.len() <= 160 { s.to_string() } else { format!("{}… ({} bytes)", &s[..s.floor_char_boundary(160)], s.len()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_error_prefix_without_crashing_stalling_or_bloating_the_worker() {
    let Some(_stack) = stack() else { return };
    let started = Instant::now();
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let setup = Setup::new(&stream);
    std::fs::write(setup.dir.path().join("schema.toml"), SCHEMA).unwrap();
    setup.config_with_buffer(
        &setup.lake().display().to_string(),
        &format!("partition = \"{TEMPLATE}\""),
        &format!("memory_budget_mb = {BUDGET_MB}\nmax_mb = 16"),
    );

    // Good records with hostile ones spread among them.
    let bad = hostile();
    let mut sent: Vec<Sent> = Vec::new();
    let every = GOOD / (bad.len() + 1);
    let mut bad_iter = bad.into_iter();
    for i in 0..GOOD {
        sent.push(plain(&format!("good-{i}"), good_record(i), Want::Good));
        if (i + 1) % every == 0
            && let Some(b) = bad_iter.next()
        {
            sent.push(b);
        }
    }
    sent.extend(bad_iter);
    let user_total: usize = sent.iter().map(|s| s.users.len()).sum();
    let pairs: Vec<(String, Vec<u8>)> = sent.iter().map(|s| (s.key.clone(), s.data.clone())).collect();
    let landed = put_records(&client, &stream, &pairs).await;

    let hostile_shards: BTreeSet<&str> = sent
        .iter()
        .zip(&landed)
        .filter(|(s, _)| !matches!(s.users[0].0, Want::Good))
        .map(|(_, (shard, _))| shard.as_str())
        .collect();
    assert!(hostile_shards.len() >= 2, "hostile records all landed on {hostile_shards:?}");
    eprintln!(
        "put {} Kinesis records ({user_total} user records, {GOOD} good) on 4 shards; hostile ones on {hostile_shards:?}",
        sent.len()
    );

    let mut checks = Checks::default();
    let mut consumer = setup.start(&[]);
    let pid = consumer.id();

    // Everything committed, the process alive all along.
    let deadline = Instant::now() + Duration::from_secs(75);
    let mut exited = None;
    let mut peak_rss = 0.0_f64;
    loop {
        if let Some(status) = consumer.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        peak_rss = peak_rss.max(peak_rss_mib(pid));
        let behind = setup.behind(&landed);
        if behind.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            checks.check(false, || format!("shards {behind:?} not committed after 75 s (stalled)"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("committed (or gave up) {:.1} s after the start", started.elapsed().as_secs_f64());
    checks.check(exited.is_none(), || format!("consumer exited while reading: {exited:?}"));
    let alive = exited.is_none();

    // Metrics: every user record counted once, as written or errored.
    let mut metrics = String::new();
    if alive {
        let limit = Instant::now() + Duration::from_secs(5);
        loop {
            metrics = setup.metrics();
            let counted = metric_sum(&metrics, "shardlake_consumer_records_written_total")
                + metric_sum(&metrics, "shardlake_consumer_records_errored_total");
            if counted >= user_total as f64 || Instant::now() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak_rss = peak_rss.max(peak_rss_mib(pid));
    }
    let written = metric_sum(&metrics, "shardlake_consumer_records_written_total");
    let errored = metric_sum(&metrics, "shardlake_consumer_records_errored_total");
    let errored_by_type = metric_by_label(&metrics, "shardlake_consumer_records_errored_total", "error_type");
    eprintln!("metrics: written {written}, errored {errored} {errored_by_type:?}; user records sent {user_total}");
    checks.check(!alive || written + errored == user_total as f64, || {
        format!("records_written ({written}) + records_errored ({errored}) != user records sent ({user_total})")
    });

    // Peak memory.
    eprintln!("peak RSS (VmHWM) of the consumer: {peak_rss:.1} MiB (budget {BUDGET_MB} MB + {RSS_OVERHEAD_MB} MB)");
    checks.check(!alive || peak_rss < BUDGET_MB + RSS_OVERHEAD_MB, || {
        format!("peak RSS {peak_rss:.1} MiB >= memory budget {BUDGET_MB} MB + {RSS_OVERHEAD_MB} MB")
    });

    // Stop it (graceful, exit 0) before reading the lake.
    if alive {
        let status = terminate(&mut consumer);
        checks.check(status.success(), || format!("consumer exited with {status} after SIGTERM"));
    }
    let log = setup.log();
    for bad in ["overflowed its stack", "panicked", "shard reader failed; restarting it", "fatal runtime error"] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(bad)).take(3).collect();
        checks.check(hits.is_empty(), || {
            format!("log has {bad:?}: {:#?}", hits.iter().map(|h| short(h)).collect::<Vec<_>>())
        });
    }
    checks.check(log.matches("metrics on http://").count() == 1, || "consumer started more than once".into());

    // Error lines: exactly one per hostile user record, of its type, with its bytes.
    let by_seq: BTreeMap<&str, usize> = landed.iter().enumerate().map(|(i, (_, seq))| (seq.as_str(), i)).collect();
    let errors = setup.error_lines();
    let mut lines_per_user: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut type_problems: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut raw_problems: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut stray = Vec::new();
    for (folder, lines) in &errors {
        for l in lines {
            checks.check(l["error_type"] == folder.as_str(), || {
                format!("error line in {folder}/ says {}", l["error_type"])
            });
            let seq = l["sequence_number"].as_str().unwrap_or_default();
            let Some(&rec) = by_seq.get(seq) else {
                stray.push(format!("{folder}: unknown sequence number {seq}"));
                continue;
            };
            let sub = l["sub_sequence_number"].as_u64().map_or(0, |s| s as usize);
            let Some((want, bytes)) = sent[rec].users.get(sub) else {
                stray.push(format!("{folder}: {seq} has no user record {sub}"));
                continue;
            };
            *lines_per_user.entry((rec, sub)).or_default() += 1;
            let name = match want {
                Want::Good => {
                    stray.push(format!(
                        "good record {} in {folder}/: {}",
                        String::from_utf8_lossy(bytes),
                        short(l["error_message"].as_str().unwrap_or(""))
                    ));
                    continue;
                }
                Want::DupTs => "duplicate ts keys",
                Want::Error { name, types, field } => {
                    let type_ok = types.contains(&folder.as_str());
                    let field_ok = field.is_none_or(|f| l["field"] == f);
                    if !(type_ok && field_ok) {
                        let e = type_problems.entry(name.to_string()).or_insert((0, String::new()));
                        e.0 += 1;
                        e.1 = format!(
                            "want {types:?}{}, got {folder} (field {}): {}",
                            field.map(|f| format!(" field {f}")).unwrap_or_default(),
                            l["field"],
                            short(l["error_message"].as_str().unwrap_or(""))
                        );
                    }
                    name
                }
            };
            checks.check(l["stream"] == stream.as_str(), || format!("{name}: error line without the stream"));
            let raw_ok = if let Some(raw) = l["raw"].as_str() {
                raw.as_bytes() == bytes.as_slice()
            } else if let Some(b64) = l["raw_base64"].as_str() {
                base64::engine::general_purpose::STANDARD.decode(b64).is_ok_and(|d| d == *bytes)
            } else {
                l["raw_length"].as_u64() == Some(bytes.len() as u64)
            };
            if !raw_ok {
                let e = raw_problems.entry(name.to_string()).or_insert((0, String::new()));
                e.0 += 1;
                e.1 = format!(
                    "{} bytes sent; line has raw {:?}, raw_base64 {}, raw_length {}",
                    bytes.len(),
                    l["raw"].as_str().map(short),
                    l["raw_base64"].as_str().map_or(0, str::len),
                    l["raw_length"]
                );
            }
        }
    }
    for (name, (n, example)) in &type_problems {
        checks.check(false, || format!("{name}: {n} error line(s) of the wrong type, e.g. {example}"));
    }
    for (name, (n, example)) in &raw_problems {
        checks.check(false, || format!("{name}: {n} error line(s) without the original bytes, e.g. {example}"));
    }
    checks.check(stray.is_empty(), || {
        format!("{} unexpected error lines, e.g. {:?}", stray.len(), &stray[..stray.len().min(3)])
    });
    let mut missing: BTreeMap<&str, usize> = BTreeMap::new();
    let mut doubled: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dup_ts_errored = false;
    for (rec, s) in sent.iter().enumerate() {
        for (sub, (want, _)) in s.users.iter().enumerate() {
            let n = lines_per_user.get(&(rec, sub)).copied().unwrap_or(0);
            match want {
                Want::Good => {}
                Want::DupTs => dup_ts_errored = n > 0,
                Want::Error { name, .. } if n == 0 => *missing.entry(name).or_default() += 1,
                Want::Error { name, .. } if n > 1 => *doubled.entry(name).or_default() += 1,
                Want::Error { .. } => {}
            }
        }
    }
    checks.check(missing.is_empty(), || format!("hostile user records with no error line: {missing:?}"));
    checks.check(doubled.is_empty(), || format!("hostile user records with several error lines: {doubled:?}"));
    let line_counts: BTreeMap<&str, usize> = errors.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    eprintln!("error lines by type: {line_counts:?}");
    if alive {
        for (kind, n) in &line_counts {
            let m = errored_by_type.get(*kind).copied().unwrap_or(0.0);
            checks.check(m == *n as f64, || {
                format!("records_errored_total{{error_type={kind:?}}} is {m}, error lines {n}")
            });
        }
    }

    // The lake: every good record exactly once, in the partition of its ts;
    // the duplicate-ts record, if written, in the hour of the ts it stores.
    let good_expected = GOOD as u64 + u64::from(!dup_ts_errored);
    let (rows, distinct, misplaced) = setup.duckdb_check();
    eprintln!(
        "lake: {rows} rows, {distinct} distinct event ids, {misplaced} outside their ts hour (want {good_expected})"
    );
    checks.check((rows, distinct, misplaced) == (good_expected, good_expected, 0), || {
        format!(
            "lake (rows, distinct event ids, misplaced) = {:?}, want ({good_expected}, {good_expected}, 0)",
            (rows, distinct, misplaced)
        )
    });
    let detail = python(
        r#"
import sys, duckdb
q = """
select count(*) filter (where event_id not like 'good-%' and event_id <> 'dup-ts'),
       count(*) filter (where event_id = 'dup-ts'),
       coalesce(max(strftime(ts at time zone 'UTC', '%H')) filter (where event_id = 'dup-ts'), '-'),
       coalesce(max(hour) filter (where event_id = 'dup-ts'), '-')
from read_parquet(? , hive_partitioning = true, hive_types_autocast = false)
"""
print(*duckdb.sql(q.replace('?', repr(sys.argv[1] + '/**/*.parquet'))).fetchall()[0])
"#,
        &[setup.lake().to_str().unwrap()],
    );
    let d: Vec<&str> = detail.split_whitespace().collect();
    eprintln!(
        "hostile rows in the lake: {}; dup-ts rows {} (stored hour {}, partition hour {}; errored: {dup_ts_errored})",
        d[0], d[1], d[2], d[3]
    );
    checks.check(d[0] == "0", || format!("{} hostile records are rows in the lake", d[0]));
    // Duplicate keys: the last wins, for the stored value and the partition alike.
    checks.check(!dup_ts_errored, || "dup-ts went to the error output instead of the lake".to_string());
    if !dup_ts_errored {
        checks.check(d[1] == "1" && d[2] == d[3] && d[2].trim_start_matches('0') == "5", || {
            format!("dup-ts: {} rows, stored ts hour {} but partition hour={}", d[1], d[2], d[3])
        });
    }
    // No partition path segment over the file-name limit.
    for f in parquet_files(&setup.lake()) {
        let rel = f.strip_prefix(setup.lake()).unwrap().to_path_buf();
        checks.check(rel.iter().all(|c| c.len() <= 255), || format!("path segment over 255 bytes in {rel:?}"));
    }

    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
    assert!(checks.0.is_empty(), "{} check(s) failed:\n- {}", checks.0.len(), checks.0.join("\n- "));
}
