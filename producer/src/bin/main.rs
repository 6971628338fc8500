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

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use rand::Rng;
use shardlake_producer::latency::LatencyHistogram;
use shardlake_producer::service::api;
use shardlake_producer::{AckFuture, Producer, ProducerConfig, Record};
use sonic_rs::JsonValueTrait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// Every record read was sent.
const EXIT_OK: u8 = 0;
/// The input was read to the end; some records failed or have an unknown
/// outcome (see the failures file).
const EXIT_FAILED: u8 = 1;
/// Bad usage or setup (config, a missing stream at start, a control-plane
/// call past its deadline); nothing was sent.
const EXIT_SETUP: u8 = 2;
/// Stopped before the end of the input (a signal, or a stream that stopped
/// taking records) with records failed or of unknown outcome.
const EXIT_STOPPED_WITH_FAILURES: u8 = 3;

/// The exit code of a run: 0 all sent; 1 input read to the end with
/// failures or unknown outcomes; 3 stopped early with failures or unknown
/// outcomes; 128 + the signal number (130 SIGINT, 143 SIGTERM) stopped by a
/// signal with every record read sent (resume after `lines_read`).
fn exit_code(s: &Summary) -> u8 {
    let clean = s.failed == 0 && s.unknown == 0;
    match (&s.stopped, clean) {
        (None, true) => EXIT_OK,
        (None, false) => EXIT_FAILED,
        (Some(Stop::Signal { number, .. }), true) => 128 + number,
        (Some(_), _) => EXIT_STOPPED_WITH_FAILURES,
    }
}

/// Why the input was not read to the end.
#[derive(Debug, Clone)]
enum Stop {
    /// SIGINT or SIGTERM.
    Signal {
        /// `SIGINT` or `SIGTERM`.
        name: &'static str,
        /// Its number, for the exit code.
        number: u8,
    },
    /// The target stopped taking records (deleted, access denied).
    TargetUnusable(String),
}

impl Stop {
    fn label(&self) -> &str {
        match self {
            Stop::Signal { name, .. } => name,
            Stop::TargetUnusable(_) => "target_unusable",
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
    if let Some(v) = args.control_plane_timeout_ms {
        table.insert("control_plane_timeout_ms".into(), (v as i64).into());
    }
    if args.ttl_from_first_attempt {
        table.insert("ttl_start".into(), "first_attempt".into());
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

/// What happened, for the summary and the exit code.
#[derive(Debug, Default)]
struct Summary {
    /// Input lines read (the number of the last one): with a `stopped`
    /// reason, resume after this line.
    lines_read: u64,
    /// Why the input was not read to the end, if it was not.
    stopped: Option<Stop>,
    /// Records acknowledged.
    sent: u64,
    /// Records given up after a request carrying them timed out or was
    /// abandoned in flight: they may or may not be in the stream.
    unknown: u64,
    /// Records not delivered (rejected, bad lines, expired or never sent).
    failed: u64,
    /// Records that needed more than one attempt, delivered or not.
    retried: u64,
    /// Every retry, as the producer counted them.
    retries: u64,
    /// Payload bytes of the acknowledged records.
    bytes: u64,
    /// Latency of the acknowledged records (bounded memory).
    latencies: LatencyHistogram,
    /// The first failure, for one line on stderr.
    first_failure: Option<(u64, String)>,
}

/// The failures file: one JSON line per record not acknowledged, written
/// as it resolves, flushed whenever the writer catches up (and at exit).
struct FailureLog {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl FailureLog {
    /// One line: `kind` is `unknown_outcome` for records that may have been
    /// stored, `failed` for the others; `label` is a stable reason code.
    /// `data` is the input line byte for byte: a JSON string when it is
    /// UTF-8, else `data_base64`, so a resend sends the same bytes.
    fn write(&mut self, line: u64, partition_key: &str, data: &[u8], label: &str, reason: &str) -> Result<()> {
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

    fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            out.flush().context("writing the failures file")?;
        }
        Ok(())
    }
}

/// From the reader to the collector, in input order.
enum Entry {
    /// A record handed to the producer, with its payload length.
    Enqueued { line: u64, len: usize, ack: AckFuture },
    /// A line that never reached the stream.
    Refused { line: u64, partition_key: String, data: Vec<u8>, label: String, reason: String },
}

/// State shared by the reader, the collector and the signal task.
#[derive(Clone)]
struct Control {
    /// Stop reading input: the first signal, or a target that stopped
    /// taking records.
    stop: CancellationToken,
    /// Why, set once (the first reason wins).
    reason: Arc<OnceLock<Stop>>,
}

impl Control {
    fn stop(&self, why: Stop) {
        if self.reason.set(why).is_ok() {
            self.stop.cancel();
        }
    }
}

/// Watches SIGINT and SIGTERM: the first stops the input and starts the
/// shutdown deadline, the second gives up on what is left at once.
fn watch_signals(
    (mut sigint, mut sigterm): (Signal, Signal),
    control: Control,
    producer: Producer,
    shutdown_timeout: Duration,
) {
    let deadline_producer = producer.clone();
    let stop = control.stop.clone();
    // The deadline counts from the first signal (or the stream stopping).
    tokio::spawn(async move {
        stop.cancelled().await;
        tokio::time::sleep(shutdown_timeout).await;
        eprintln!(
            "shardlake-producer: the shutdown deadline of {}s passed; giving up on the records not resolved",
            shutdown_timeout.as_secs()
        );
        deadline_producer.abort();
    });
    tokio::spawn(async move {
        let (name, number) = next_signal(&mut sigint, &mut sigterm).await;
        eprintln!(
            "shardlake-producer: {name}: no more input is read; sending what was read within {}s \
             (--shutdown-timeout); a second signal gives up at once",
            shutdown_timeout.as_secs()
        );
        control.stop(Stop::Signal { name, number });
        let (name, _) = next_signal(&mut sigint, &mut sigterm).await;
        eprintln!("shardlake-producer: {name} again: giving up on the records not resolved");
        producer.abort();
    });
}

/// The next SIGINT or SIGTERM: its name and number.
async fn next_signal(sigint: &mut Signal, sigterm: &mut Signal) -> (&'static str, u8) {
    tokio::select! {
        _ = sigint.recv() => ("SIGINT", 2),
        _ = sigterm.recv() => ("SIGTERM", 15),
    }
}

/// Awaits each record's outcome in input order, counts it, and writes every
/// one not acknowledged to the failures file as it comes.
async fn collect(
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
        let sdk = shardlake::aws::sdk_config().await;
        if args.create_stream {
            let stream = args.stream.as_deref().expect("clap requires --stream");
            api::ensure_stream_within(
                &shardlake::aws::kinesis_client(&sdk),
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
    let pacer = args.rate.map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)));
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

fn print_summary(s: &Summary, elapsed: Duration, json: bool) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (p50, p99) = (s.latencies.quantile(0.50), s.latencies.quantile(0.99));
    let rate = s.sent as f64 / secs;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        let v = serde_json::json!({
            "lines_read": s.lines_read, "stopped": s.stopped.as_ref().map(Stop::label),
            "sent": s.sent, "unknown_outcome": s.unknown, "failed": s.failed,
            "retried": s.retried, "retries": s.retries,
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
    println!("failed      {}", s.failed);
    println!("retried     {} records ({} retries)", s.retried, s.retries);
    println!("elapsed     {secs:.2} s");
    println!("throughput  {rate:.0} records/s, {:.2} MB/s", s.bytes as f64 / 1e6 / secs);
    println!("latency     p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_null_is_a_key_and_json_null_is_not() {
        let mut rng = rand::rng();
        let f = Some(&["user_id"][..]);
        assert_eq!(partition_key(br#"{"user_id":"null"}"#, f, &mut rng).unwrap(), "null");
        assert_eq!(partition_key(br#"{"user_id":42}"#, f, &mut rng).unwrap(), "42");
        assert!(partition_key(br#"{"user_id":null}"#, f, &mut rng).unwrap_err().contains("is null"));
        assert!(partition_key(br#"{"user_id":""}"#, f, &mut rng).unwrap_err().contains("is empty"));
    }

    #[test]
    fn exit_codes_say_whether_anything_failed_and_whether_input_was_read_to_the_end() {
        let sigterm = || Some(Stop::Signal { name: "SIGTERM", number: 15 });
        let s = |stopped, failed, unknown| Summary { stopped, failed, unknown, ..Summary::default() };
        assert_eq!(exit_code(&s(None, 0, 0)), 0);
        assert_eq!(exit_code(&s(None, 1, 0)), 1);
        assert_eq!(exit_code(&s(None, 0, 1)), 1);
        assert_eq!(exit_code(&s(sigterm(), 0, 0)), 143);
        assert_eq!(exit_code(&s(Some(Stop::Signal { name: "SIGINT", number: 2 }), 0, 0)), 130);
        assert_eq!(exit_code(&s(sigterm(), 0, 3)), 3);
        assert_eq!(exit_code(&s(Some(Stop::TargetUnusable("gone".into())), 5, 0)), 3);
    }

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
