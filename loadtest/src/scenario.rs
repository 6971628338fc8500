//! A load-test scenario: what to drive, what to run, what chaos to inject.
//! It comes from a TOML file (`--scenario`) and flags; a flag wins over the
//! file, the file over the default. Both sources share one struct of
//! optional fields, so a setting is named and documented once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Every setting, optional: the TOML file's keys and the command's flags.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ScenarioArgs {
    /// Target produce rate, records per second [default: 2000].
    #[arg(long)]
    pub rate: Option<u32>,
    /// How long to produce, e.g. `60s`, `10m` [default: 30s].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub duration: Option<Duration>,
    /// Producer tasks sharing the rate, each with its own producer [default: 2].
    #[arg(long)]
    pub producers: Option<usize>,
    /// Pad each event to about this many bytes (the reference event is
    /// about 600 bytes) [default: no padding].
    #[arg(long)]
    pub record_bytes: Option<usize>,
    /// Seed of the event generator and of the chaos choices [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kinesis stream [default: `loadtest-<run id>`].
    #[arg(long)]
    pub stream: Option<String>,
    /// Shards of the stream when it is created [default: 4].
    #[arg(long)]
    pub shards: Option<u32>,
    /// Create the stream when it does not exist [default: true].
    #[arg(long)]
    pub create_stream: Option<bool>,
    /// Consumer worker processes to run; 0 attaches to a fleet already
    /// running (then give `--attach-metrics` and `--destination`) [default: 2].
    #[arg(long)]
    pub workers: Option<usize>,
    /// `/metrics` URLs of an attached fleet's workers.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub attach_metrics: Option<Vec<String>>,
    /// The `shardlake-consumer` binary [default: beside this one].
    #[arg(long)]
    pub consumer_bin: Option<PathBuf>,
    /// The lake the consumers write: `s3://bucket/prefix` or a folder
    /// [default: `<out>/lake`].
    #[arg(long)]
    pub destination: Option<String>,
    /// Checkpoint store of the spawned workers [default: `file://<out>/checkpoints`
    /// for one worker, `dynamodb://shardlake-loadtest-<run id>` for several].
    #[arg(long)]
    pub checkpoint_store: Option<String>,
    /// The consumers' `[buffer] max_age`: the floor of end-to-end latency [default: 5s].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub max_age: Option<Duration>,
    /// The consumers' `[fleet] lease_duration` [default: 10s].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub lease_duration: Option<Duration>,
    /// SIGKILL a random worker every this long, and restart it [default: never].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub kill_every: Option<Duration>,
    /// SIGSTOP a random worker every this long, SIGCONT it after `stop_for` [default: never].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub stop_every: Option<Duration>,
    /// How long a stopped worker stays frozen [default: the lease duration + 2s].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub stop_for: Option<Duration>,
    /// Fraction of the consumers' S3 requests that fail (half answered
    /// `503 SlowDown`, half dropped connections) through a fault proxy [default: 0].
    #[arg(long)]
    pub s3_fault_rate: Option<f64>,
    /// Fraction of the Kinesis requests (producers' and consumers') answered
    /// `ProvisionedThroughputExceededException` through a fault proxy [default: 0].
    #[arg(long)]
    pub kinesis_throttle_rate: Option<f64>,
    /// Double the shard count (UpdateShardCount) this long into the run
    /// (kinesis-local only; kinesalite cannot) [default: never].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub reshard_at: Option<Duration>,
    /// After producing, how long to wait for the lake to hold every record [default: 120s].
    #[arg(long, value_parser = duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub drain_timeout: Option<Duration>,
    /// Where the report, logs, configs (and the default lake) go
    /// [default: `loadtest-out/<run id>`].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `Option<Duration>` as a humantime string in TOML (`"30s"`).
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Some).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
    }
}

impl ScenarioArgs {
    /// Reads a scenario file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Each setting of `self` (the flags) that is set, else `file`'s.
    pub fn over(self, file: ScenarioArgs) -> ScenarioArgs {
        macro_rules! pick {
            ($($f:ident),*) => { ScenarioArgs { $($f: self.$f.or(file.$f)),* } };
        }
        pick!(
            rate,
            duration,
            producers,
            record_bytes,
            seed,
            stream,
            shards,
            create_stream,
            workers,
            attach_metrics,
            consumer_bin,
            destination,
            checkpoint_store,
            max_age,
            lease_duration,
            kill_every,
            stop_every,
            stop_for,
            s3_fault_rate,
            kinesis_throttle_rate,
            reshard_at,
            drain_timeout,
            out
        )
    }
}

/// A resolved scenario: every default applied, every value checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scenario {
    /// This run's id: in event ids, the default stream, out folder and table.
    pub run_id: String,
    pub rate: u32,
    #[serde(with = "secs")]
    pub duration: Duration,
    pub producers: usize,
    pub record_bytes: Option<usize>,
    pub seed: u64,
    pub stream: String,
    pub shards: u32,
    pub create_stream: bool,
    pub workers: usize,
    pub attach_metrics: Vec<String>,
    pub consumer_bin: PathBuf,
    pub destination: String,
    pub checkpoint_store: String,
    #[serde(with = "secs")]
    pub max_age: Duration,
    #[serde(with = "secs")]
    pub lease_duration: Duration,
    #[serde(with = "opt_secs")]
    pub kill_every: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub stop_every: Option<Duration>,
    #[serde(with = "secs")]
    pub stop_for: Duration,
    pub s3_fault_rate: f64,
    pub kinesis_throttle_rate: f64,
    #[serde(with = "opt_secs")]
    pub reshard_at: Option<Duration>,
    #[serde(with = "secs")]
    pub drain_timeout: Duration,
    pub out: PathBuf,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_secs {
    pub fn serialize<S: serde::Serializer>(d: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

impl Scenario {
    /// Applies the defaults to `args` and checks the result.
    pub fn resolve(args: ScenarioArgs, run_id: String) -> anyhow::Result<Self> {
        let out = args.out.unwrap_or_else(|| PathBuf::from("loadtest-out").join(&run_id));
        let workers = args.workers.unwrap_or(2);
        let lease_duration = args.lease_duration.unwrap_or(Duration::from_secs(10));
        let consumer_bin = match args.consumer_bin {
            Some(p) => p,
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name(format!("shardlake-consumer{}", std::env::consts::EXE_SUFFIX)),
        };
        let scenario = Scenario {
            rate: args.rate.unwrap_or(2000),
            duration: args.duration.unwrap_or(Duration::from_secs(30)),
            producers: args.producers.unwrap_or(2),
            record_bytes: args.record_bytes,
            seed: args.seed.unwrap_or(42),
            stream: args.stream.unwrap_or_else(|| format!("loadtest-{run_id}")),
            shards: args.shards.unwrap_or(4),
            create_stream: args.create_stream.unwrap_or(true),
            workers,
            attach_metrics: args.attach_metrics.unwrap_or_default(),
            consumer_bin,
            destination: args.destination.unwrap_or_else(|| out.join("lake").display().to_string()),
            checkpoint_store: args.checkpoint_store.unwrap_or_else(|| match workers {
                0 | 1 => format!("file://{}", out.join("checkpoints").display()),
                _ => format!("dynamodb://shardlake-loadtest-{run_id}"),
            }),
            max_age: args.max_age.unwrap_or(Duration::from_secs(5)),
            lease_duration,
            kill_every: args.kill_every,
            stop_every: args.stop_every,
            stop_for: args.stop_for.unwrap_or(lease_duration + Duration::from_secs(2)),
            s3_fault_rate: args.s3_fault_rate.unwrap_or(0.0),
            kinesis_throttle_rate: args.kinesis_throttle_rate.unwrap_or(0.0),
            reshard_at: args.reshard_at,
            drain_timeout: args.drain_timeout.unwrap_or(Duration::from_secs(120)),
            out,
            run_id,
        };
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.rate == 0 {
            bail!("rate: must be at least 1 record/s");
        }
        if self.producers == 0 {
            bail!("producers: must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("duration: must be longer than 0s");
        }
        if !(1..=500).contains(&self.shards) {
            bail!("shards: {} is outside 1..=500", self.shards);
        }
        for (key, rate) in
            [("s3_fault_rate", self.s3_fault_rate), ("kinesis_throttle_rate", self.kinesis_throttle_rate)]
        {
            if !(0.0..=0.9).contains(&rate) {
                bail!("{key}: {rate} is outside 0..=0.9 (a fraction of requests)");
            }
        }
        if self.workers == 0 {
            if self.attach_metrics.is_empty() {
                bail!("workers = 0 attaches to a running fleet: give its /metrics URLs with --attach-metrics");
            }
            if self.kill_every.is_some() || self.stop_every.is_some() || self.s3_fault_rate > 0.0 {
                bail!("kill_every, stop_every and s3_fault_rate need spawned workers (workers >= 1)");
            }
        } else if !self.consumer_bin.exists() {
            bail!(
                "consumer_bin: {} does not exist; build it (`cargo build -p shardlake-consumer`) or pass --consumer-bin",
                self.consumer_bin.display()
            );
        }
        if self.workers > 1 && !self.checkpoint_store.starts_with("dynamodb://") {
            bail!("checkpoint_store: {} workers share leases in DynamoDB; give dynamodb://TABLE", self.workers);
        }
        if self.s3_fault_rate > 0.0 && !self.destination.starts_with("s3://") {
            bail!("s3_fault_rate needs an s3:// destination (the faults are injected into S3 requests)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: ScenarioArgs = toml::from_str(
            r#"
            rate = 500
            duration = "2m"
            kill_every = "20s"
            workers = 1
            consumer_bin = "/bin/sh"
            "#,
        )
        .unwrap();
        let flags = ScenarioArgs { rate: Some(900), ..Default::default() };
        let s = Scenario::resolve(flags.over(file), "r1".into()).unwrap();
        assert_eq!(s.rate, 900);
        assert_eq!(s.duration, Duration::from_secs(120));
        assert_eq!(s.kill_every, Some(Duration::from_secs(20)));
        assert_eq!(s.stream, "loadtest-r1");
        assert_eq!(s.checkpoint_store, "file://loadtest-out/r1/checkpoints");
        assert_eq!(s.stop_for, Duration::from_secs(12));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let bad = |toml_text: &str| {
            let args: ScenarioArgs = toml::from_str(toml_text).unwrap();
            let args = ScenarioArgs { consumer_bin: Some("/bin/sh".into()), ..args };
            Scenario::resolve(args, "r".into()).unwrap_err().to_string()
        };
        assert!(bad("rate = 0").contains("rate"));
        assert!(bad("s3_fault_rate = 0.95").contains("s3_fault_rate"));
        assert!(bad("s3_fault_rate = 0.1").contains("s3:// destination"));
        assert!(bad("workers = 3\ncheckpoint_store = \"file:///tmp/x\"").contains("dynamodb://"));
        assert!(bad("workers = 0").contains("--attach-metrics"));
        let unknown = toml::from_str::<ScenarioArgs>("rat = 5").unwrap_err().to_string();
        assert!(unknown.contains("rat"), "{unknown}");
        let duration = toml::from_str::<ScenarioArgs>("duration = \"5 parsecs\"").unwrap_err().to_string();
        assert!(duration.contains("parsecs"), "{duration}");
    }
}
