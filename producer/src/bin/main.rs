//! `shardlake-producer`: sends JSON Lines to a Kinesis stream or a Firehose
//! delivery stream through the embeddable producer, and prints a summary
//! (sent, unknown outcome, failed, retried, throughput, latency p50/p99).
//! Lines are read as fast as the stream takes them ([`Producer::ready`]), so
//! a large file never piles up in the producer's queue. Exits with 1 when a
//! record failed or has an unknown outcome (written to `--failures-file` if
//! given), 2 on a setup error.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::Rng;
use shardlake_producer::service::api;
use shardlake_producer::{AckFuture, Producer, ProducerConfig, Record};
use sonic_rs::JsonValueTrait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "shardlake-producer", version, about = "Send JSON Lines to Kinesis or Firehose, KPL-style.")]
struct Args {
    /// Kinesis data stream to write to.
    #[arg(long, required_unless_present = "firehose", conflicts_with = "firehose")]
    stream: Option<String>,
    /// Firehose delivery stream to write to.
    #[arg(long)]
    firehose: Option<String>,
    /// JSON Lines input file, or `-` for stdin. Each non-empty line is one
    /// record, sent as is (to Firehose with its newline, see --no-newline).
    #[arg(long, default_value = "-")]
    input: String,
    /// Field (dotted path for nested fields) whose value is the partition key;
    /// default: a random key per record.
    #[arg(long)]
    partition_key_field: Option<String>,
    /// Send at most this many records per second.
    #[arg(long)]
    rate: Option<NonZeroU32>,
    /// Producer settings in TOML (the fields of `ProducerConfig` except
    /// `target`); the flags below override them.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Linger time in milliseconds (default 100).
    #[arg(long)]
    linger_ms: Option<u64>,
    /// Per-shard rate limit in percent of the shard limits (default 150; 0 = off).
    #[arg(long)]
    rate_limit_percent: Option<u32>,
    /// The most requests in flight at once (default 24). The producer starts
    /// at 1 and adapts below this ceiling to what the endpoint sustains, so
    /// it rarely needs changing; lower it to cap the load on a shared stream,
    /// or set 1 to send one request at a time.
    #[arg(long, value_name = "N")]
    max_concurrent_requests: Option<usize>,
    /// The longest a request may go unanswered before it is resent, in ms
    /// (default 10000). The timeout in force follows the observed latency
    /// below this ceiling. Raise it for a slow link with large requests,
    /// where one request can take seconds; a timed-out request may still be
    /// stored, so its resend can duplicate records.
    #[arg(long, value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// The shortest request timeout, in ms (default 2000), however fast the
    /// endpoint answers. Raise it if latency spikes cause timeouts.
    #[arg(long, value_name = "MS")]
    min_request_timeout_ms: Option<u64>,
    /// How long a record may take to be delivered before it is given up, in
    /// ms (default 30000). Raise it to ride out longer outages or throttling.
    #[arg(long, value_name = "MS")]
    record_ttl_ms: Option<u64>,
    /// Start each record's TTL at its first attempt instead of when it is
    /// handed to the producer. Lines are fed only as fast as the stream
    /// takes them, so this matters mostly with a --config that enlarges the
    /// producer's queue.
    #[arg(long)]
    ttl_from_first_attempt: bool,
    /// How many times a record may be sent again after a request carrying it
    /// went unanswered (timeout, connection reset): each resend may store a
    /// duplicate (default 2; 0 never resends such a record).
    #[arg(long, value_name = "N")]
    max_resends_after_unknown: Option<u32>,
    /// Send Firehose records without the trailing newline. By default each
    /// line keeps its newline, so the objects Firehose writes to S3 are JSON
    /// Lines; use this when a Firehose processor or the destination adds its
    /// own delimiter.
    #[arg(long, requires = "firehose")]
    no_newline: bool,
    /// KPL aggregation (Kinesis only).
    #[arg(long)]
    aggregate: bool,
    /// Strict per-partition-key ordering (Kinesis only): a key's later
    /// records wait while a request carrying the key is in flight, so they
    /// are stored in order. A request that times out may still be stored
    /// late, after its resend and later records of its keys (A, B, A): the
    /// order holds for answered requests only.
    #[arg(long)]
    ordered: bool,
    /// Write the records that failed or have an unknown outcome here, as
    /// JSON Lines with the line number, `kind` (`failed` or
    /// `unknown_outcome`), a stable `label`, the reason and the data.
    #[arg(long)]
    failures_file: Option<PathBuf>,
    /// Create the Kinesis stream if it does not exist, and wait until ACTIVE.
    #[arg(long, requires = "stream")]
    create_stream: bool,
    /// Shards of a stream made by `--create-stream`.
    #[arg(long, default_value_t = 1, requires = "create_stream")]
    shards: u32,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Print the producer's Prometheus metrics after the summary.
    #[arg(long)]
    metrics: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(summary) if summary.failed == 0 && summary.unknown == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("shardlake-producer: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn producer_config(args: &Args) -> Result<ProducerConfig> {
    let mut table: toml::Table = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let mut target = toml::Table::new();
    match (&args.stream, &args.firehose) {
        (Some(s), _) => target.insert("kinesis_stream".into(), s.clone().into()),
        (None, Some(f)) => target.insert("firehose_delivery_stream".into(), f.clone().into()),
        (None, None) => bail!("give --stream or --firehose"),
    };
    table.insert("target".into(), target.into());
    if let Some(v) = args.linger_ms {
        table.insert("linger_ms".into(), (v as i64).into());
    }
    if let Some(v) = args.rate_limit_percent {
        table.insert("rate_limit_percent".into(), (v as i64).into());
    }
    if let Some(v) = args.max_concurrent_requests {
        table.insert("max_concurrent_requests".into(), (v as i64).into());
    }
    if let Some(v) = args.request_timeout_ms {
        table.insert("request_timeout_ms".into(), (v as i64).into());
    }
    if let Some(v) = args.min_request_timeout_ms {
        table.insert("min_request_timeout_ms".into(), (v as i64).into());
    }
    if let Some(v) = args.record_ttl_ms {
        table.insert("record_ttl_ms".into(), (v as i64).into());
    }
    if args.ttl_from_first_attempt {
        table.insert("ttl_start".into(), "first_attempt".into());
    }
    if let Some(v) = args.max_resends_after_unknown {
        let retry = table.entry("retry").or_insert_with(|| toml::Table::new().into());
        let retry = retry.as_table_mut().context("[retry] in --config must be a table")?;
        retry.insert("max_resends_after_unknown".into(), i64::from(v).into());
    }
    if args.aggregate {
        table.insert("aggregation".into(), true.into());
    }
    if args.ordered {
        table.insert("ordering".into(), true.into());
    }
    let config: ProducerConfig = table.try_into().context("invalid producer settings")?;
    config.validate()?;
    Ok(config)
}

/// The partition key of a line: a field's value, or a random key.
fn partition_key(line: &[u8], field: Option<&[&str]>, rng: &mut impl Rng) -> Result<String, String> {
    let Some(path) = field else { return Ok(format!("{:016x}", rng.random::<u64>())) };
    let value = sonic_rs::get(line, path).map_err(|e| format!("no partition key field {:?}: {e}", path.join(".")))?;
    let key = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.as_raw_str().to_string(),
    };
    if key.is_empty() || key == "null" {
        return Err(format!("partition key field {:?} is empty or null", path.join(".")));
    }
    Ok(key)
}

/// What happened, for the summary and the exit code.
#[derive(Debug, Default)]
struct Summary {
    /// Records acknowledged.
    sent: u64,
    /// Records given up after a request carrying them went unanswered
    /// (timeout, reset): they may or may not be in the stream.
    unknown: u64,
    /// Records not delivered (rejected, bad lines, expired unsent...).
    failed: u64,
    /// Records that needed more than one attempt, delivered or not.
    retried: u64,
    /// Every retry, as the producer counted them.
    retries: u64,
    /// Records (sent or unknown) that may be stored more than once: resent
    /// after a request carrying them went unanswered.
    maybe_duplicated: u64,
    /// Payload bytes of the acknowledged records.
    bytes: u64,
    latencies: Vec<Duration>,
}

impl Summary {
    fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i]
    }
}

struct FailureLog {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl FailureLog {
    /// One line: `kind` is `unknown_outcome` for records that may have been
    /// stored, `failed` for the others; `label` is a stable reason code.
    fn write(&mut self, line: u64, partition_key: &str, data: &[u8], label: &str, reason: &str) -> Result<()> {
        if let Some(out) = &mut self.out {
            let kind = if label == "unknown_outcome" { "unknown_outcome" } else { "failed" };
            let entry = serde_json::json!({
                "line": line,
                "partition_key": partition_key,
                "kind": kind,
                "label": label,
                "reason": reason,
                "data": String::from_utf8_lossy(data),
            });
            writeln!(out, "{entry}")?;
        }
        Ok(())
    }
}

async fn run(args: Args) -> Result<Summary> {
    let config = producer_config(&args)?;
    let sdk = shardlake::aws::sdk_config().await;
    if args.create_stream {
        let stream = args.stream.as_deref().expect("clap requires --stream");
        api::ensure_stream(&shardlake::aws::kinesis_client(&sdk), stream, args.shards, Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let producer = Producer::builder(config).sdk_config(sdk).build().await?;
    let input: Box<dyn AsyncRead + Unpin + Send> = if args.input == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&args.input).await.with_context(|| format!("opening {}", args.input))?)
    };
    let mut failures = FailureLog {
        out: match &args.failures_file {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => None,
        },
    };
    let pacer = args.rate.map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)));
    let field: Option<Vec<&str>> = args.partition_key_field.as_deref().map(|f| f.split('.').collect());
    let started = Instant::now();

    // Acks are awaited in order by a collector, so the reader can keep up to
    // the producer's budget of records in flight.
    let (ack_tx, mut ack_rx) = mpsc::channel::<(u64, usize, AckFuture)>(producer.settings().max_buffered_records);
    let collector = tokio::spawn(async move {
        let mut summary = Summary::default();
        let mut rejected = vec![];
        while let Some((line, len, ack)) = ack_rx.recv().await {
            match ack.await {
                Ok(ack) => {
                    summary.sent += 1;
                    summary.bytes += len as u64;
                    summary.retried += u64::from(ack.attempts > 1);
                    summary.latencies.push(ack.latency);
                }
                Err(e) => {
                    if e.reason.is_unknown_outcome() {
                        summary.unknown += 1;
                    } else {
                        summary.failed += 1;
                    }
                    summary.retried += u64::from(e.reason.attempts().is_some_and(|a| a > 1));
                    rejected.push((line, e));
                }
            }
        }
        (summary, rejected)
    });
    let newline = args.firehose.is_some() && !args.no_newline;

    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut buf = Vec::with_capacity(4096);
    let mut rng = rand::rng();
    let (mut line_no, mut bad_lines) = (0u64, 0u64);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).await.with_context(|| format!("reading {}", args.input))? == 0 {
            break;
        }
        line_no += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let key = match partition_key(line, field.as_deref(), &mut rng) {
            Ok(k) => k,
            Err(reason) => {
                bad_lines += 1;
                failures.write(line_no, "", line, "bad_line", &reason)?;
                continue;
            }
        };
        if let Some(p) = &pacer {
            p.until_ready().await;
        }
        // Backpressure: read on only when the producer's queue has room for
        // the next round of requests, so no line ages in it.
        producer.ready().await;
        let data =
            if newline { bytes::Bytes::from([line, b"\n"].concat()) } else { bytes::Bytes::copy_from_slice(line) };
        let len = data.len();
        match producer.enqueue(Record::new(key, data)).await {
            Ok(ack) => ack_tx.send((line_no, len, ack)).await.context("collector stopped")?,
            Err(e) => {
                bad_lines += 1;
                let (label, reason) = (e.reason.label(), e.reason.to_string());
                failures.write(line_no, &e.record.partition_key, &e.record.data, label, &reason)?;
            }
        }
    }
    drop(ack_tx);
    producer.shutdown().await;
    let (mut summary, rejected) = collector.await.context("collector panicked")?;
    let elapsed = started.elapsed();
    for (line, e) in &rejected {
        failures.write(*line, &e.record.partition_key, &e.record.data, e.reason.label(), &e.reason.to_string())?;
    }
    if let Some(out) = &mut failures.out {
        out.flush()?;
    }
    summary.failed += bad_lines;
    summary.retries = counter_total(&producer.metrics().records_retried);
    summary.maybe_duplicated = producer.metrics().records_maybe_duplicated.get();
    print_summary(&mut summary, elapsed, args.json);
    if !rejected.is_empty() {
        eprintln!("first failure: line {}: {}", rejected[0].0, rejected[0].1.reason);
    }
    if args.metrics {
        let text = prometheus::TextEncoder::new().encode_to_string(&producer.registry().gather())?;
        print!("{text}");
    }
    Ok(summary)
}

/// The sum of a counter over its labels.
fn counter_total(counter: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
}

fn print_summary(s: &mut Summary, elapsed: Duration, json: bool) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (p50, p99) = (s.percentile(0.50), s.percentile(0.99));
    let rate = s.sent as f64 / secs;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        let v = serde_json::json!({
            "sent": s.sent, "unknown_outcome": s.unknown, "failed": s.failed,
            "retried": s.retried, "retries": s.retries, "maybe_duplicated": s.maybe_duplicated,
            "bytes": s.bytes, "elapsed_s": secs, "records_per_s": rate,
            "latency_p50_ms": ms(p50), "latency_p99_ms": ms(p99),
        });
        println!("{v}");
        return;
    }
    println!("sent        {} records ({:.1} MB)", s.sent, s.bytes as f64 / 1e6);
    println!("unknown     {} (a request went unanswered; they may or may not be stored)", s.unknown);
    println!("failed      {}", s.failed);
    println!("retried     {} records ({} retries)", s.retried, s.retries);
    println!("may be duplicated: {} (resent after a request went unanswered)", s.maybe_duplicated);
    println!("elapsed     {secs:.2} s");
    println!("throughput  {rate:.0} records/s, {:.2} MB/s", s.bytes as f64 / 1e6 / secs);
    println!("latency     p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));
}
