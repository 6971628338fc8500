//! The bounded CI scenarios: `shardlake-loadtest run` as an SRE runs it,
//! against the local emulators, with chaos. Each asserts the harness's own
//! verdict (exit code and report.json) and reads the lake again with an
//! independent reader (pyarrow).

use std::path::Path;
use std::process::Command;

use shardlake::testing::stack;

fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the integration tests need the local AWS stack; run them with scripts/test")
    })
}

/// The consumer binary the harness spawns (built by the workspace test run).
fn consumer_bin() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_shardlake-loadtest")).with_file_name("shardlake-consumer");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO")).args(["build", "-q", "-p", "shardlake-consumer"]).status().unwrap();
        assert!(ok.success(), "building shardlake-consumer");
    }
    bin
}

/// Runs the harness with `args` and the Kinesis endpoint `kinesis`; returns
/// the report.
fn run(out: &Path, kinesis: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_shardlake-loadtest"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--consumer-bin")
        .arg(consumer_bin())
        .env("AWS_ENDPOINT_URL_KINESIS", kinesis)
        .output()
        .unwrap();
    // The live progress goes to stderr: shown only when something fails.
    let log = format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
    let report =
        std::fs::read(out.join("report.json")).unwrap_or_else(|_| panic!("no report.json ({}):\n{log}", output.status));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert!(output.status.success(), "the harness found a problem: {:#}\n{log}", report["verdict"]);
    report
}

/// Rows and distinct event ids under `url` (s3://… through the S3 emulator,
/// or a folder), read by pyarrow.
fn pyarrow_count(url: &str, run_id: &str) -> (u64, u64) {
    let script = r#"
import sys, os, pyarrow.dataset as ds, pyarrow.fs as fs, pyarrow.compute as pc
url, run_id = sys.argv[1], sys.argv[2]
if url.startswith("s3://"):
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    s3 = fs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                         access_key="test", secret_key="test")
    files = [f.path for f in s3.get_file_info(fs.FileSelector(url[5:], recursive=True))
             if f.path.endswith(".parquet") and "/errors/" not in f.path]
    table = ds.dataset(files, filesystem=s3, format="parquet").to_table(columns=["event_id"])
else:
    table = ds.dataset(url, format="parquet", partitioning="hive").to_table(columns=["event_id"])
ids = table.column("event_id")
mine = pc.starts_with(ids, run_id + "-")
ids = ids.filter(mine)
print(len(ids), len(pc.unique(ids)))
"#;
    let py = stack_env("SHARDLAKE_PYTHON");
    let out = Command::new(py).arg("-c").arg(script).args([url, run_id]).output().unwrap();
    assert!(out.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), chrono_like_now())
}

fn chrono_like_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// Two workers on four shards of the fast emulator, an S3 lake on the S3
/// emulator behind a proxy failing 20% of requests, and a worker SIGKILLed
/// (and restarted) every 6 s: every acknowledged event lands exactly once.
#[test]
fn kills_and_s3_faults_lose_and_duplicate_nothing() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bucket = unique("loadtest").to_lowercase();
    let destination = format!("s3://{bucket}/lake");
    let table = unique("loadtest-leases");
    let report = run(
        dir.path(),
        &stack_env("SHARDLAKE_KINESALITE_ENDPOINT"),
        &[
            "--rate",
            "2000",
            "--duration",
            "20s",
            "--shards",
            "4",
            "--workers",
            "2",
            "--lease-duration",
            "3s",
            "--max-age",
            "2s",
            "--kill-every",
            "6s",
            "--s3-fault-rate",
            "0.2",
            "--destination",
            &destination,
            "--checkpoint-store",
            &format!("dynamodb://{table}"),
            "--drain-timeout",
            "90s",
        ],
    );
    let v = &report["verdict"];
    let acked = v["acked"].as_u64().unwrap();
    assert!(acked >= 30_000, "{v}");
    assert_eq!((v["lost"].as_u64(), v["duplicated"].as_u64(), v["misrouted"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(v["found"].as_u64(), Some(acked));
    let kills = report["chaos"].as_array().unwrap().iter().filter(|c| c["kind"] == "kill").count();
    assert!(kills >= 3, "{:#}", report["chaos"]);
    let injected = &report["injected"];
    let faults = injected["s3_errors"].as_u64().unwrap() + injected["s3_dropped"].as_u64().unwrap();
    assert!(faults > 0, "{injected}");
    let e2e = &report["end_to_end_latency_ms"];
    assert!(e2e["count"].as_u64().unwrap() >= acked, "{e2e}");
    assert!(e2e["p50"].as_f64().unwrap() > 0.0);
    // An independent reader agrees.
    let run_id = report["scenario"]["run_id"].as_str().unwrap();
    assert_eq!(pyarrow_count(&destination, run_id), (acked, acked));
    // The HTML report has its charts, and renders in a real browser.
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("PASS") && html.matches("<svg").count() == 4, "{html}");
    check_screenshot(&dir.path().join("report.html"), &dir.path().join("report.png"));
}

/// Renders `html` with headless Chromium into `png` and checks the picture:
/// the page's size, ink on it (charts and text, not a blank or error page),
/// and the green of the PASS verdict.
fn check_screenshot(html: &Path, png_path: &Path) {
    let chromium = std::env::var("SHARDLAKE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let out = Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400"])
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap_or_else(|e| panic!("{chromium}: {e}: the report test needs Chromium (scripts/test installs it)"));
    assert!(out.status.success() && png_path.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 1400));
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let ink = pixels.iter().filter(|p| p[..3].iter().any(|c| *c < 200)).count();
    let green = pixels.iter().filter(|p| p[1] > 100 && p[0] < 80 && p[2] < 100).count();
    let share = ink as f64 / pixels.len() as f64;
    assert!((0.01..0.5).contains(&share), "ink on {:.1}% of the page", share * 100.0);
    assert!(green > 500, "the green PASS heading is missing ({green} green pixels)");
}

/// One worker on kinesis-local (the emulator that reshards), SIGSTOPped past
/// its lease while a second takes over, Kinesis throttling injected for
/// producers and consumers, and the stream doubled mid-run.
#[test]
fn freeze_throttling_and_a_reshard_lose_and_duplicate_nothing() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let table = unique("loadtest-leases");
    let report = run(
        dir.path(),
        &stack_env("AWS_ENDPOINT_URL_KINESIS"),
        &[
            "--rate",
            "300",
            "--duration",
            "16s",
            "--shards",
            "2",
            "--workers",
            "2",
            "--lease-duration",
            "3s",
            "--max-age",
            "2s",
            "--stop-every",
            "5s",
            "--stop-for",
            "5s",
            "--kinesis-throttle-rate",
            "0.05",
            "--reshard-at",
            "6s",
            "--checkpoint-store",
            &format!("dynamodb://{table}"),
            "--drain-timeout",
            "90s",
        ],
    );
    let v = &report["verdict"];
    let acked = v["acked"].as_u64().unwrap();
    assert!(acked >= 4_000, "{v}");
    assert_eq!((v["lost"].as_u64(), v["duplicated"].as_u64()), (Some(0), Some(0)), "{v}");
    let kinds: Vec<&str> = report["chaos"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"stop") && kinds.contains(&"cont") && kinds.contains(&"reshard"), "{kinds:?}");
    assert!(report["injected"]["kinesis_throttles"].as_u64().unwrap() > 0);
    let run_id = report["scenario"]["run_id"].as_str().unwrap();
    let lake = dir.path().join("lake");
    assert_eq!(pyarrow_count(lake.to_str().unwrap(), run_id), (acked, acked));
}

/// Attach mode (`--workers 0`): the harness drives a consumer it did not
/// start, watches its `/metrics` and verifies its lake.
#[test]
fn attaches_to_a_running_consumer() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("attach");
    let bins = Path::new(env!("CARGO_BIN_EXE_shardlake-loadtest")).parent().unwrap().to_path_buf();
    let producer = bins.join("shardlake-producer");
    if !producer.exists() {
        let ok = Command::new(env!("CARGO")).args(["build", "-q", "-p", "shardlake-producer"]).status().unwrap();
        assert!(ok.success());
    }
    let kinesis = stack_env("SHARDLAKE_KINESALITE_ENDPOINT");
    let created = Command::new(&producer)
        .args(["--stream", &stream, "--create-stream", "--shards", "2", "--input", "/dev/null"])
        .env("AWS_ENDPOINT_URL_KINESIS", &kinesis)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let schema = Command::new(env!("CARGO_BIN_EXE_shardlake-loadtest")).arg("schema").output().unwrap();
    std::fs::write(dir.path().join("schema.toml"), schema.stdout).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lake = dir.path().join("lake");
    std::fs::write(
        dir.path().join("consumer.toml"),
        format!(
            "stream = \"{stream}\"\ndestination = \"{}\"\ncheckpoint_store = \"file://{}\"\nschema = \"schema.toml\"\n\
             time_field = \"ts\"\n[buffer]\nmax_age = \"1s\"\n[polling]\nidle_interval = \"200ms\"\nmax_idle_interval = \"1s\"\n\
             [metrics]\naddress = \"127.0.0.1:{port}\"\n",
            lake.display(),
            dir.path().join("checkpoints").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("consumer.log")).unwrap();
    let mut consumer = Command::new(consumer_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("consumer.toml"))
        .env("AWS_ENDPOINT_URL_KINESIS", &kinesis)
        .stderr(log)
        .spawn()
        .unwrap();
    let out = dir.path().join("out");
    let report = run(
        &out,
        &kinesis,
        &[
            "--workers",
            "0",
            "--attach-metrics",
            &format!("http://127.0.0.1:{port}/metrics"),
            "--stream",
            &stream,
            "--create-stream",
            "false",
            "--destination",
            lake.to_str().unwrap(),
            "--rate",
            "500",
            "--duration",
            "6s",
        ],
    );
    let _ = Command::new("kill").args(["-TERM", &consumer.id().to_string()]).status();
    consumer.wait().unwrap();
    let v = &report["verdict"];
    assert!(v["acked"].as_u64().unwrap() >= 2_500, "{v}");
    assert_eq!((v["lost"].as_u64(), v["duplicated"].as_u64()), (Some(0), Some(0)), "{v}");
    assert_eq!((report["consumers"]["workers"].as_u64(), report["consumers"]["attached"].as_u64()), (Some(0), Some(1)));
    let watched = report["timeline"].as_array().unwrap().iter().filter(|p| p["fleet"]["up"] == 1).count();
    assert!(watched > 3, "the consumer's /metrics were not read");
    let committed = report["timeline"].as_array().unwrap().last().unwrap()["fleet"]["committed"].as_f64().unwrap();
    assert!(committed >= v["acked"].as_f64().unwrap(), "{committed}");
}
