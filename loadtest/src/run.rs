//! `shardlake-loadtest run`: sets up the stream, the fault proxies and the
//! workers, drives the producers, applies the chaos schedule, watches the
//! lake once a second, waits for it to drain, verifies exactly-once and
//! writes the report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use shardlake::error_output::DEFAULT_ERROR_PREFIX;
use shardlake::store::{ObjectStore, S3Options};
use shardlake_producer::{Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;

use crate::drive::{Counters, drive, producer_counter};
use crate::events::EventMaker;
use crate::lake::{Watcher, verify};
use crate::report::{ChaosEvent, Consumers, Injected, Percentiles, Point, Produced, Report};
use crate::scenario::Scenario;
use crate::workers::{Sample, Workers};
use faultproxy::{FaultProxy, Flavor};

/// How often the harness samples, watches and prints.
const TICK: Duration = Duration::from_secs(1);

/// A new run id: `lt` + the start time in seconds, base 36.
pub fn new_run_id() -> String {
    let mut n = chrono::Utc::now().timestamp() as u64;
    let mut s = String::new();
    while n > 0 {
        s.insert(0, char::from_digit((n % 36) as u32, 36).expect("digit"));
        n /= 36;
    }
    format!("lt{s}")
}

/// The chaos schedule: what to do next and when.
struct Chaos {
    rng: rand_chacha::ChaCha8Rng,
    next_kill: Option<Instant>,
    next_stop: Option<Instant>,
    /// The frozen worker and when to wake it.
    frozen: Option<(usize, Instant)>,
    reshard: Option<Instant>,
    events: Vec<ChaosEvent>,
}

impl Chaos {
    fn new(s: &Scenario, start: Instant) -> Self {
        Chaos {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(s.seed),
            next_kill: s.kill_every.map(|d| start + d),
            next_stop: s.stop_every.map(|d| start + d),
            frozen: None,
            reshard: s.reshard_at.map(|d| start + d),
            events: Vec::new(),
        }
    }

    fn log(&mut self, start: Instant, kind: &str, detail: String) {
        eprintln!("chaos: {kind} {detail}");
        self.events.push(ChaosEvent { t: start.elapsed().as_secs_f64(), kind: kind.into(), detail });
    }

    /// Applies what is due. Chaos stops with producing (`producing` false),
    /// so the drain measures recovery, except waking a frozen worker.
    async fn tick(
        &mut self,
        s: &Scenario,
        start: Instant,
        workers: &mut Workers,
        kinesis: &aws_sdk_kinesis::Client,
        producing: bool,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        if let Some((i, wake)) = self.frozen
            && now >= wake
        {
            workers.freeze(i, false);
            self.frozen = None;
            self.log(start, "cont", format!("w{i} (SIGCONT)"));
        }
        if !producing || workers.len() == 0 {
            return Ok(());
        }
        if let (Some(at), Some(every)) = (self.next_kill, s.kill_every)
            && now >= at
        {
            let i = self.rng.random_range(0..workers.len());
            workers.kill_and_restart(i)?;
            self.log(start, "kill", format!("w{i} (SIGKILL, restarted)"));
            self.next_kill = Some(now + every);
        }
        if let (Some(at), Some(every)) = (self.next_stop, s.stop_every)
            && now >= at
            && self.frozen.is_none()
        {
            let i = self.rng.random_range(0..workers.len());
            workers.freeze(i, true);
            self.frozen = Some((i, now + s.stop_for));
            self.log(start, "stop", format!("w{i} (SIGSTOP for {:?})", s.stop_for));
            self.next_stop = Some(now + every);
        }
        if let Some(at) = self.reshard
            && now >= at
        {
            self.reshard = None;
            let target = (s.shards * 2) as i32;
            let result = kinesis
                .update_shard_count()
                .stream_name(&s.stream)
                .target_shard_count(target)
                .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
                .send()
                .await;
            match result {
                Ok(_) => self.log(start, "reshard", format!("{} → {target} shards", s.shards)),
                Err(e) => self.log(start, "reshard-failed", shardlake::error::error_chain(&e)),
            }
        }
        Ok(())
    }
}

/// Runs the scenario; returns the report (also written to `out`).
pub async fn run(s: Scenario) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    let sdk = shardlake::aws::sdk_config().await;
    let direct_kinesis = shardlake::aws::kinesis_client(&sdk);
    if s.create_stream {
        shardlake_producer::stream::ensure_stream(&direct_kinesis, &s.stream, s.shards, Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)?;
    }

    // Fault proxies in front of the emulators, and the workers' endpoints.
    let mut worker_env = Vec::new();
    let endpoint = |var: &str| {
        std::env::var(var)
            .with_context(|| format!("fault injection needs {var} (the emulator to put a proxy in front of)"))
    };
    // Random faults the way each service fails under load, seeded.
    let faulty = |var: &'static str, flavor: Flavor, rate: f64| async move {
        if rate <= 0.0 {
            return anyhow::Ok(None);
        }
        let proxy = FaultProxy::start(&endpoint(var)?, flavor).await?;
        proxy.set_random_faults(rate, s.seed);
        Ok(Some(proxy))
    };
    let s3_proxy = faulty("AWS_ENDPOINT_URL_S3", Flavor::S3, s.s3_fault_rate).await?;
    let kinesis_proxy = faulty("AWS_ENDPOINT_URL_KINESIS", Flavor::Kinesis, s.kinesis_throttle_rate).await?;
    if let Some(p) = &s3_proxy {
        worker_env.push(("AWS_ENDPOINT_URL_S3".to_string(), p.endpoint.clone()));
    }
    if let Some(p) = &kinesis_proxy {
        worker_env.push(("AWS_ENDPOINT_URL_KINESIS".to_string(), p.endpoint.clone()));
    }

    let lake = ObjectStore::open(&s.destination, &S3Options::default()).await?;
    if let ObjectStore::S3(_) = &lake {
        ensure_bucket(&sdk, &s.destination).await?;
    }
    let mut workers = Workers::start(&s, worker_env)?;
    let producer_kinesis = shardlake::aws::kinesis_client_at(&sdk, kinesis_proxy.as_ref().map(|p| p.endpoint.as_str()));
    let producer = Producer::builder(ProducerConfig::kinesis(&s.stream))
        .kinesis_client(producer_kinesis)
        .build()
        .await
        .context("starting the producer")?;
    let maker = Arc::new(EventMaker::new(&s.run_id, s.seed, s.record_bytes));
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let started_at = chrono::Utc::now();
    let start = Instant::now();
    let mut driving = tokio::spawn({
        let (producer, maker, counters, stop) = (producer.clone(), maker.clone(), counters.clone(), stop.clone());
        let (rate, tasks, duration) = (s.rate, s.producers, s.duration);
        async move { drive(&producer, maker, rate, tasks, duration, counters, stop).await }
    });

    let mut watcher = Watcher::new(lake.clone(), DEFAULT_ERROR_PREFIX);
    let mut chaos = Chaos::new(&s, start);
    let mut timeline: Vec<Point> = Vec::new();
    let mut last = (0u64, 0u64, 0usize, start);
    let mut driven = None;
    let mut produced_at = None;
    let mut drained_at = None;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(start) + TICK, TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            d = &mut driving, if driven.is_none() => {
                driven = Some(d.context("the producing task failed")?);
                produced_at = Some(Instant::now());
                producer.shutdown().await;
                eprintln!("producing done; waiting for the lake to hold every acknowledged event");
            }
            _ = ticker.tick() => {}
        }
        chaos.tick(&s, start, &mut workers, &direct_kinesis, driven.is_none()).await?;
        if let Err(e) = watcher.poll(&maker).await {
            eprintln!("reading the lake: {e:#}");
        }
        let fleet = workers.sample().await;
        let (sent, acked) = (counters.sent.load(Ordering::Relaxed), counters.acked.load(Ordering::Relaxed));
        let dt = last.3.elapsed().as_secs_f64().max(1e-3);
        let interval = watcher.take_interval();
        let point = Point {
            t: start.elapsed().as_secs_f64(),
            sent_per_s: (sent - last.0) as f64 / dt,
            acked_per_s: (acked - last.1) as f64 / dt,
            lake_per_s: (watcher.distinct() - last.2) as f64 / dt,
            e2e_p50_ms: Percentiles::of(&interval, 1.0).p50,
            e2e_p99_ms: Percentiles::of(&interval, 1.0).p99,
            fleet,
        };
        progress(&point, sent, acked, counters.failed.load(Ordering::Relaxed), &watcher, &fleet);
        last = (sent, acked, watcher.distinct(), Instant::now());
        timeline.push(point);
        if let (Some(d), Some(at)) = (&driven, produced_at) {
            // Every acked event seen (extra unacked ones may also be there).
            if watcher.distinct() >= d.acked.len() && missing(&watcher, d) == 0 {
                drained_at = Some(at.elapsed().as_secs_f64());
                break;
            }
            if at.elapsed() > s.drain_timeout {
                eprintln!("drain timeout: the lake does not hold every acknowledged event after {:?}", s.drain_timeout);
                break;
            }
        }
    }
    stop.cancel();
    let driven = driven.expect("set before the loop ends");
    workers.stop_all(Duration::from_secs(70));
    let seconds = start.elapsed().as_secs_f64();
    let verdict = verify(&lake, DEFAULT_ERROR_PREFIX, &maker, &driven.acked).await?;
    let max = |f: &dyn Fn(&Sample) -> f64| timeline.iter().map(|p| f(&p.fleet)).fold(0.0, f64::max);
    let report = Report {
        produced: Produced {
            target_rate: s.rate,
            achieved_rate: driven.acked.len() as f64 / s.duration.as_secs_f64().max(1e-3),
            sent: counters.sent.load(Ordering::Relaxed),
            acked: driven.acked.len() as u64,
            failed: driven.failed.len() as u64,
            throttled: producer_counter(&producer, "shardlake_producer_throttled_total"),
            retried: producer_counter(&producer, "shardlake_producer_records_retried_total"),
            produce_latency_ms: Percentiles::of(&driven.latency_us, 1000.0),
            failure_examples: driven
                .failed
                .iter()
                .take(5)
                .map(|(seq, why)| format!("{}: {why}", maker.id(*seq)))
                .collect(),
        },
        end_to_end_latency_ms: Percentiles::of(&watcher.latency_ms, 1.0),
        drain_seconds: drained_at,
        verdict,
        consumers: Consumers {
            workers: workers.len(),
            attached: s.attach_metrics.len(),
            restarts: workers.restarts,
            cpu_seconds: timeline.last().map_or(0.0, |p| p.fleet.cpu_seconds),
            max_rss_mib: max(&|f| f.rss_mib),
            max_lag_ms: max(&|f| f.lag_ms),
        },
        injected: Injected {
            s3_errors: s3_proxy.as_ref().map_or(0, |p| p.counts.errors.load(Ordering::Relaxed)),
            s3_dropped: s3_proxy.as_ref().map_or(0, |p| p.counts.dropped.load(Ordering::Relaxed)),
            s3_passed: s3_proxy.as_ref().map_or(0, |p| p.counts.passed.load(Ordering::Relaxed)),
            kinesis_throttles: kinesis_proxy.as_ref().map_or(0, |p| p.counts.errors.load(Ordering::Relaxed)),
            kinesis_passed: kinesis_proxy.as_ref().map_or(0, |p| p.counts.passed.load(Ordering::Relaxed)),
        },
        chaos: chaos.events,
        timeline,
        started: started_at.to_rfc3339(),
        seconds,
        scenario: s,
    };
    let out = &report.scenario.out;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.html"), report.html())?;
    Ok(report)
}

/// Acknowledged events the watcher has not seen yet.
fn missing(watcher: &Watcher, driven: &crate::drive::Driven) -> usize {
    driven.acked.iter().filter(|seq| !watcher.has_seen(**seq)).count()
}

fn progress(p: &Point, sent: u64, acked: u64, failed: u64, watcher: &Watcher, fleet: &Sample) {
    eprintln!(
        "t={:>5.0}s sent {sent} ({:.0}/s) acked {acked} failed {failed} | lake {} ({:.0}/s) e2e p99 {:.1}s | lag {:.1}s workers up {} cpu {:.1}s rss {:.0}MiB",
        p.t,
        p.sent_per_s,
        watcher.distinct(),
        p.lake_per_s,
        p.e2e_p99_ms / 1e3,
        fleet.lag_ms / 1e3,
        fleet.up,
        fleet.cpu_seconds,
        fleet.rss_mib,
    );
}

/// Creates the destination bucket when it is missing (emulators start empty).
async fn ensure_bucket(sdk: &aws_config::SdkConfig, destination: &str) -> anyhow::Result<()> {
    let bucket = destination.strip_prefix("s3://").and_then(|r| r.split('/').next()).context("s3://bucket/prefix")?;
    let client = shardlake::aws::s3_client(sdk);
    if client.head_bucket().bucket(bucket).send().await.is_err() {
        client.create_bucket().bucket(bucket).send().await.with_context(|| format!("creating bucket {bucket}"))?;
    }
    Ok(())
}
