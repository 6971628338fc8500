//! The consumer fleet under test: `shardlake-consumer run` processes with a
//! generated config each (or the `/metrics` of a fleet already running),
//! signals for chaos, and samples of their lag, progress, CPU and memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::scenario::Scenario;

/// One spawned worker process.
struct Worker {
    config: PathBuf,
    log: PathBuf,
    metrics: String,
    child: Option<Child>,
    /// CPU seconds of earlier incarnations (killed and restarted).
    cpu_before: f64,
    stopped: bool,
}

/// The workers of a run.
pub struct Workers {
    bin: PathBuf,
    /// Extra environment (endpoints through the fault proxies).
    env: Vec<(String, String)>,
    workers: Vec<Worker>,
    /// `/metrics` URLs of an attached fleet.
    attached: Vec<String>,
    /// Restarts after a kill.
    pub restarts: u32,
}

/// One look at the fleet.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    /// Largest MillisBehindLatest over shards and workers.
    pub lag_ms: f64,
    /// Records committed (written + errored) by the live incarnations.
    pub committed: f64,
    /// CPU seconds of all spawned incarnations so far.
    pub cpu_seconds: f64,
    /// Resident memory of the live workers, MiB.
    pub rss_mib: f64,
    /// Workers answering `/metrics`.
    pub up: usize,
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Workers {
    /// Writes one config per worker into `scenario.out` and starts them
    /// (none when attaching: then only the given `/metrics` are watched).
    pub fn start(scenario: &Scenario, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        std::fs::write(scenario.out.join("schema.toml"), crate::events::schema_toml())?;
        let mut workers = Vec::new();
        for i in 0..scenario.workers {
            let port = free_port()?;
            let config = scenario.out.join(format!("worker-{i}.toml"));
            std::fs::write(&config, worker_config(scenario, i, port))?;
            workers.push(Worker {
                config,
                log: scenario.out.join(format!("worker-{i}.log")),
                metrics: format!("http://127.0.0.1:{port}/metrics"),
                child: None,
                cpu_before: 0.0,
                stopped: false,
            });
        }
        let mut fleet = Workers {
            bin: scenario.consumer_bin.clone(),
            env,
            workers,
            attached: scenario.attach_metrics.clone(),
            restarts: 0,
        };
        for i in 0..fleet.workers.len() {
            fleet.spawn(i)?;
        }
        Ok(fleet)
    }

    /// Spawned workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let w = &mut self.workers[i];
        let log = File::options().create(true).append(true).open(&w.log)?;
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&w.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        w.child = Some(child);
        w.stopped = false;
        Ok(())
    }

    /// SIGKILLs worker `i` and starts it again.
    pub fn kill_and_restart(&mut self, i: usize) -> anyhow::Result<()> {
        let w = &mut self.workers[i];
        if let Some(mut child) = w.child.take() {
            w.cpu_before += cpu_seconds(child.id());
            if w.stopped {
                signal(child.id(), "CONT");
            }
            child.kill()?;
            child.wait()?;
        }
        self.restarts += 1;
        self.spawn(i)
    }

    /// SIGSTOP (`freeze`) or SIGCONT worker `i`.
    pub fn freeze(&mut self, i: usize, freeze: bool) {
        let w = &mut self.workers[i];
        if let Some(child) = &w.child {
            signal(child.id(), if freeze { "STOP" } else { "CONT" });
            w.stopped = freeze;
        }
    }

    /// Reads every worker's `/metrics` and `/proc` entry.
    pub async fn sample(&self) -> Sample {
        let mut s = Sample::default();
        let mut urls: Vec<&str> = self.attached.iter().map(String::as_str).collect();
        urls.extend(self.workers.iter().filter(|w| !w.stopped).map(|w| w.metrics.as_str()));
        for url in urls {
            if let Ok(text) = crate::http::get(url, Duration::from_millis(800)).await {
                s.up += 1;
                s.lag_ms = s.lag_ms.max(metric(&text, "shardlake_consumer_millis_behind_latest").max);
                s.committed += metric(&text, "shardlake_consumer_records_written_total").sum
                    + metric(&text, "shardlake_consumer_records_errored_total").sum;
            }
        }
        for w in &self.workers {
            s.cpu_seconds += w.cpu_before;
            if let Some(child) = &w.child {
                s.cpu_seconds += cpu_seconds(child.id());
                s.rss_mib += rss_mib(child.id());
            }
        }
        s
    }

    /// SIGTERMs every worker (waking frozen ones) and waits up to `timeout`
    /// for their final commits; SIGKILLs what is left.
    pub fn stop_all(&mut self, timeout: Duration) {
        for w in &mut self.workers {
            if let Some(child) = &w.child {
                if w.stopped {
                    signal(child.id(), "CONT");
                    w.stopped = false;
                }
                signal(child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + timeout;
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                w.cpu_before += cpu_seconds(child.id());
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The consumer config of worker `i`.
fn worker_config(s: &Scenario, i: usize, metrics_port: u16) -> String {
    let toml_str = |v: &str| toml::Value::String(v.to_string()).to_string();
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let destination = if s.destination.contains("://") {
        s.destination.clone()
    } else {
        abs(Path::new(&s.destination)).display().to_string()
    };
    let checkpoint_store = match s.checkpoint_store.strip_prefix("file://") {
        Some(path) => format!("file://{}", abs(Path::new(path)).display()),
        None => s.checkpoint_store.clone(),
    };
    format!(
        r#"# Generated by shardlake-loadtest for run {run}.
stream = {stream}
application = "loadtest"
destination = {destination}
checkpoint_store = {checkpoint_store}
schema = "schema.toml"
time_field = "ts"
shutdown_timeout = "60s"

[buffer]
max_age = "{max_age}ms"

[polling]
idle_interval = "200ms"
max_idle_interval = "1s"
shard_refresh = "2s"

[metrics]
address = "127.0.0.1:{metrics_port}"
{fleet}"#,
        run = s.run_id,
        stream = toml_str(&s.stream),
        destination = toml_str(&destination),
        checkpoint_store = toml_str(&checkpoint_store),
        max_age = s.max_age.as_millis(),
        // A file store serves one worker and refuses `[fleet]`.
        fleet = if checkpoint_store.starts_with("dynamodb://") {
            format!(
                "\n[fleet]\nworker_id = \"w{i}\"\nlease_duration = \"{}ms\"\ncreate_table = true\n",
                s.lease_duration.as_millis()
            )
        } else {
            String::new()
        },
    )
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

/// Sum and maximum of a metric's samples (every label set).
#[derive(Debug, Default, PartialEq)]
pub struct MetricValue {
    pub sum: f64,
    pub max: f64,
}

/// Reads `name` from Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> MetricValue {
    let mut v = MetricValue::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(x) = rest.rsplit(' ').next().and_then(|x| x.parse::<f64>().ok()) {
            v.sum += x;
            v.max = v.max.max(x);
        }
    }
    v
}

/// User + system CPU seconds of a process (Linux `/proc`; 0 elsewhere).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th; the kernel reports them in USER_HZ = 100 ticks/s.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process in MiB (Linux `/proc`; 0 elsewhere).
fn rss_mib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0.0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_and_maxed_over_labels() {
        let text = "# HELP x\nshardlake_consumer_millis_behind_latest{shard=\"a\"} 1200\n\
                    shardlake_consumer_millis_behind_latest{shard=\"b\"} 300\n\
                    shardlake_consumer_millis_behind_latest_other 9e9\n\
                    shardlake_consumer_records_written_total 42\n";
        assert_eq!(metric(text, "shardlake_consumer_millis_behind_latest"), MetricValue { sum: 1500.0, max: 1200.0 });
        assert_eq!(metric(text, "shardlake_consumer_records_written_total").sum, 42.0);
        assert_eq!(metric(text, "missing"), MetricValue::default());
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid) > 0.0);
        assert!(rss_mib(pid) > 1.0);
    }
}
