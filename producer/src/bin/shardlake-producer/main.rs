//! `shardlake-producer`: sends JSON Lines to a Kinesis stream or a Firehose
//! delivery stream through the embeddable producer, and prints a summary
//! (lines read, sent, unknown outcome, failed, retried, throughput, latency
//! p50/p99). Lines are read as fast as the stream takes them
//! ([`Producer::ready`]), so a large file never piles up in the producer's
//! queue. Every record that is not acknowledged is written to
//! `--failures-file` as it resolves.
//!
//! SIGINT or SIGTERM stops reading; what was read is sent within
//! `--shutdown-timeout`, then given up (unknown when a request carrying it
//! was in flight, failed when never sent); a second signal gives up at once.
//! A stream that stops taking records (deleted, access denied) stops the
//! input with one error line. Exit codes: see [`exit_code`].

mod latency;
mod outcomes;
mod stop;

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::Rng;

use shardlake_producer::{Producer, ProducerConfig, Record};
use sonic_rs::JsonValueTrait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outcomes::{Entry, FailureLog, Summary, collect, print_summary};
use crate::stop::{Control, EXIT_SETUP, Stop, exit_code, watch_signals};

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
    /// Send at most this many records per second, evenly (bursts of at most
    /// 10 ms worth).
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
    #[arg(long, requires = "firehose", conflicts_with = "stream")]
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
    /// `unknown_outcome`), a stable `label`, the reason and the input line
    /// byte for byte (`data`, or `data_base64` when it is not UTF-8). Each
    /// is written as it resolves, also after a signal.
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
    /// After SIGINT or SIGTERM, how long to keep sending what was read
    /// before giving up on it, in seconds. Input reading stops at the
    /// signal; records still unresolved at the deadline are reported as
    /// unknown (a request carrying them was in flight) or failed (never
    /// sent). A second signal gives up at once.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
    /// The longest one control-plane call (ListShards, and with
    /// --create-stream DescribeStreamSummary and CreateStream) may take, in
    /// ms (default 10000). Past it the CLI stops with an error naming the
    /// call; a periodic shard-map refresh past it is retried later.
    #[arg(long, value_name = "MS")]
    control_plane_timeout_ms: Option<u64>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardlake-producer: starting the async runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(summary) => exit_code(&summary),
        Err(e) => {
            eprintln!("shardlake-producer: {e:#}");
            EXIT_SETUP
        }
    };
    // Tokio reads stdin with a blocking read on its own thread, which cannot
    // be cancelled: after a signal on an idle stdin, dropping the runtime
    // would wait for the next line. Everything is written and flushed by now.
    let _ = std::io::stdout().flush();
    runtime.shutdown_background();
    ExitCode::from(code)
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
    // Flags override the config file's settings of the same names.
    for (key, value) in [
        ("linger_ms", args.linger_ms.map(|v| v as i64)),
        ("rate_limit_percent", args.rate_limit_percent.map(|v| v as i64)),
        ("max_concurrent_requests", args.max_concurrent_requests.map(|v| v as i64)),
        ("request_timeout_ms", args.request_timeout_ms.map(|v| v as i64)),
        ("min_request_timeout_ms", args.min_request_timeout_ms.map(|v| v as i64)),
        ("record_ttl_ms", args.record_ttl_ms.map(|v| v as i64)),
        ("control_plane_timeout_ms", args.control_plane_timeout_ms.map(|v| v as i64)),
    ] {
        if let Some(v) = value {
            table.insert(key.into(), v.into());
        }
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

/// The partition key of a line: a field's value, or a random key. A JSON
/// `null` or an empty string is no key; the string `"null"` is one.
fn partition_key(line: &[u8], field: Option<&[&str]>, rng: &mut impl Rng) -> Result<String, String> {
    let Some(path) = field else { return Ok(format!("{:016x}", rng.random::<u64>())) };
    let value = sonic_rs::get(line, path).map_err(|e| format!("no partition key field {:?}: {e}", path.join(".")))?;
    if value.is_null() {
        return Err(format!("partition key field {:?} is null", path.join(".")));
    }
    let key = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.as_raw_str().to_string(),
    };
    if key.is_empty() {
        return Err(format!("partition key field {:?} is empty", path.join(".")));
    }
    Ok(key)
}

async fn run(args: Args) -> Result<Summary> {
    let config = producer_config(&args)?;
    let control = Control { stop: CancellationToken::new(), reason: Arc::new(OnceLock::new()) };
    let stopped_in_setup = |control: &Control| {
        let summary = Summary { stopped: control.reason.get().cloned(), ..Summary::default() };
        print_summary(&summary, Duration::ZERO, args.json);
        summary
    };
    // Signals during setup stop it; the handlers are in place before any call.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let setup = async {
        let sdk = shardlake_aws::client::sdk_config().await;
        if args.create_stream {
            let stream = args.stream.as_deref().expect("clap requires --stream");
            shardlake_producer::stream::ensure_stream_within(
                &shardlake_aws::client::kinesis_client(&sdk),
                stream,
                args.shards,
                Duration::from_secs(60),
                config.validate()?.control_plane_timeout,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}{}", endpoint_hint()))?;
        }
        Producer::builder(config.clone())
            .sdk_config(sdk)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("{e}{}", endpoint_hint()))
    };
    let producer = tokio::select! {
        r = setup => r?,
        _ = sigint.recv() => {
            control.stop(Stop::Signal { name: "SIGINT", number: 2 });
            eprintln!("shardlake-producer: SIGINT during setup: nothing was read");
            return Ok(stopped_in_setup(&control));
        }
        _ = sigterm.recv() => {
            control.stop(Stop::Signal { name: "SIGTERM", number: 15 });
            eprintln!("shardlake-producer: SIGTERM during setup: nothing was read");
            return Ok(stopped_in_setup(&control));
        }
    };
    watch_signals((sigint, sigterm), control.clone(), producer.clone(), Duration::from_secs(args.shutdown_timeout));

    let input: Box<dyn AsyncRead + Unpin + Send> = if args.input == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(&args.input).await.with_context(|| format!("opening {}", args.input))?)
    };
    let failures = FailureLog {
        out: match &args.failures_file {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => None,
        },
    };
    let pacer = args.rate.map(pacer);
    let field: Option<Vec<&str>> = args.partition_key_field.as_deref().map(|f| f.split('.').collect());
    let newline = args.firehose.is_some() && !args.no_newline;
    let max_record_bytes = producer.settings().max_record_bytes;
    let started = Instant::now();

    // Acks are awaited in order by a collector, so the reader can keep up to
    // the producer's budget of records in flight.
    let (tx, rx) = mpsc::channel::<Entry>(producer.settings().max_buffered_records);
    let collector = tokio::spawn(collect(rx, failures, control.clone(), newline));

    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut buf = Vec::with_capacity(4096);
    let mut rng = rand::rng();
    let mut line_no = 0u64;
    let send = async |entry: Entry| tx.send(entry).await.map_err(|_| anyhow::anyhow!("the collector stopped"));
    loop {
        buf.clear();
        let read = tokio::select! {
            biased;
            _ = control.stop.cancelled() => break,
            r = reader.read_until(b'\n', &mut buf) => r.with_context(|| format!("reading {}", args.input))?,
        };
        if read == 0 {
            break;
        }
        line_no += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let refused = |partition_key: String, label: &str, reason| Entry::Refused {
            line: line_no,
            partition_key,
            data: line.to_vec(),
            label: label.to_string(),
            reason,
        };
        let key = match partition_key(line, field.as_deref(), &mut rng) {
            Ok(k) => k,
            Err(reason) => {
                send(refused(String::new(), "bad_line", reason)).await?;
                continue;
            }
        };
        if newline && line.len() == max_record_bytes {
            let reason = format!(
                "the line is {} bytes, and with the newline the CLI adds for Firehose {}, over the {max_record_bytes}-byte \
                 per-record limit; send it with --no-newline, or split it",
                line.len(),
                line.len() + 1
            );
            send(refused(key, "too_large", reason)).await?;
            continue;
        }
        let data =
            if newline { bytes::Bytes::from([line, b"\n"].concat()) } else { bytes::Bytes::copy_from_slice(line) };
        let len = data.len();
        // Backpressure: read on only when the producer's queue has room for
        // the next round of requests, so no line ages in it. A stop ends the
        // wait, and the line already read still goes to the producer (its
        // budget is closed, failing the line, only once the producer gives up).
        let stopped = tokio::select! {
            biased;
            _ = control.stop.cancelled() => true,
            _ = async {
                if let Some(p) = &pacer {
                    p.until_ready().await;
                }
                producer.ready().await;
            } => false,
        };
        match producer.enqueue(Record::new(key, data)).await {
            Ok(ack) => send(Entry::Enqueued { line: line_no, len, ack }).await?,
            Err(e) => {
                let (label, reason) = (e.reason.label(), e.reason.to_string());
                send(refused(e.record.partition_key, label, reason)).await?;
            }
        }
        if stopped {
            break;
        }
    }
    drop(tx);
    // Drains everything handed over; the signal task aborts it at the
    // shutdown deadline or on a second signal.
    producer.shutdown().await;
    let mut summary = collector.await.context("the collector panicked")??;
    let elapsed = started.elapsed();
    summary.lines_read = line_no;
    summary.stopped = control.reason.get().cloned();
    summary.retries = counter_total(&producer.metrics().records_retried);
    summary.maybe_duplicated = producer.metrics().records_maybe_duplicated.get();
    print_summary(&summary, elapsed, args.json);
    match (&summary.stopped, &summary.first_failure) {
        (Some(Stop::TargetUnusable(_)), _) | (_, None) => {}
        (_, Some((line, reason))) => eprintln!("first failure: line {line}: {reason}"),
    }
    if args.metrics {
        let text = prometheus::TextEncoder::new().encode_to_string(&producer.registry().gather())?;
        print!("{text}");
    }
    Ok(summary)
}

/// The endpoint named in a setup error: the SDK config has no getter for a
/// custom endpoint URL, so it comes from the environment the SDK reads.
fn endpoint_hint() -> String {
    ["AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_FIREHOSE", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().map(|url| format!(" (endpoint {url} from {v})")))
        .unwrap_or_default()
}

/// The sum of a counter over its labels.
fn counter_total(counter: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
}

/// The `--rate` limiter: `rate` records per second with a burst of 10 ms
/// worth (at least 1), so the first second does not go out at once.
fn pacer(rate: NonZeroU32) -> governor::DefaultDirectRateLimiter {
    let burst = NonZeroU32::new((rate.get() / 100).max(1)).expect("at least 1");
    governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_taken_as_shipped() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/producer.toml");
        let args = Args::try_parse_from(["shardlake-producer", "--stream", "events", "--config", path]).unwrap();
        let config = producer_config(&args).unwrap();
        assert_eq!((config.linger_ms, config.max_batch_records, config.retry.max_resends_after_unknown), (100, 500, 2));
    }

    #[test]
    fn the_rate_allows_a_burst_of_10_ms_not_a_second() {
        let burst = |rate: u32| {
            let p = pacer(NonZeroU32::new(rate).unwrap());
            (0..rate).take_while(|_| p.check().is_ok()).count()
        };
        // Issue 29: `--rate 1000` sent 2,000 records in 1.0 s (a second's
        // burst, then the rate).
        // (A few more may come due while the loop checks.)
        assert!((10..=15).contains(&burst(1_000)), "{}", burst(1_000));
        assert!((1..=2).contains(&burst(50)));
        assert!((1_000..=1_200).contains(&burst(100_000)));
    }

    #[test]
    fn the_string_null_is_a_key_and_json_null_is_not() {
        let mut rng = rand::rng();
        let f = Some(&["user_id"][..]);
        assert_eq!(partition_key(br#"{"user_id":"null"}"#, f, &mut rng).unwrap(), "null");
        assert_eq!(partition_key(br#"{"user_id":42}"#, f, &mut rng).unwrap(), "42");
        assert!(partition_key(br#"{"user_id":null}"#, f, &mut rng).unwrap_err().contains("is null"));
        assert!(partition_key(br#"{"user_id":""}"#, f, &mut rng).unwrap_err().contains("is empty"));
    }
}
