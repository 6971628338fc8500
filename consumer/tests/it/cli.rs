//! The `shardlake-consumer` command line as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn consumer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardlake-consumer")).args(args).output().unwrap()
}

/// `shardlake-consumer convert --input INPUT --destination DEST ARGS...`
fn convert(input: &str, destination: &str, args: &[&str]) -> Output {
    let mut all = vec!["convert", "--input", input, "--destination", destination];
    all.extend_from_slice(args);
    consumer(&all)
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure, got: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Writes reference events (the library behind `shardlake-loadtest gen`) and their schema.
fn events(dir: &Path, n: u64) -> (String, String) {
    let input = dir.join("ev.jsonl");
    let schema = dir.join("schema.toml");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let opts = shardlake::events::GenOptions { count: n, seed: 9, ..Default::default() };
    shardlake::events::generate(&opts, &mut f).unwrap();
    drop(f);
    std::fs::write(&schema, shardlake::events::EVENTS_SCHEMA_TOML).unwrap();
    (input.to_string_lossy().into(), schema.to_string_lossy().into())
}

#[test]
fn convert_prints_a_summary_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (input, schema) = events(dir.path(), 3000);
    let lake = dir.path().join("lake");
    let out = stdout(&convert(&input, lake.to_str().unwrap(), &["--schema", &schema, "--time-field", "ts", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"], 3000);
    assert_eq!(v["rows"], 3000);
    assert_eq!(v["data_files"], 48);
    assert_eq!(v["partitions"].as_object().unwrap().len(), 48);
    let url = format!("file://{}", lake.display());
    let text = stdout(&convert(&input, &url, &["--schema", &schema, "--time-field", "ts"]));
    assert!(text.contains("rows              3000  in 48 data files, 48 partitions"), "{text}");
}

#[test]
fn convert_explains_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (input, schema) = events(dir.path(), 10);
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let err = stderr(&convert(&input, lake, &["--schema", &schema]));
    assert!(err.contains("pass --time-field"), "{err}");
    let err = stderr(&convert("/nope.jsonl", lake, &["--infer-schema"]));
    assert!(err.contains("input file /nope.jsonl does not exist"), "{err}");
    let bad_schema = dir.path().join("bad.toml");
    std::fs::write(&bad_schema, "[[columns]]\nname = \"a\"\ntype = \"strnig\"\n").unwrap();
    let err = stderr(&convert(&input, lake, &["--schema", bad_schema.to_str().unwrap(), "--time-field", "ts"]));
    assert!(err.contains("column 1 (`a`)") && err.contains("unknown type `strnig`"), "{err}");
    let err =
        stderr(&convert(&input, lake, &["--infer-schema", "--time-field", "ts", "--partition", "!{timestamp:YYYY}/"]));
    assert!(err.contains("unsupported timestamp pattern"), "{err}");
}

#[test]
fn schema_infer_and_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = events(dir.path(), 500);
    let toml = stdout(&consumer(&["schema", "infer", &input]));
    let schema = shardlake::schema::Schema::parse(&toml, false).unwrap();
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(&names[..5], ["event_id", "event_type", "user_id", "session_id", "ts"]);
    let path = dir.path().join("inferred.toml");
    std::fs::write(&path, &toml).unwrap();
    let ddl = stdout(&consumer(&[
        "schema",
        "ddl",
        "--schema",
        path.to_str().unwrap(),
        "--table",
        "analytics.events",
        "--location",
        "s3://my-lake/events/",
    ]));
    assert!(ddl.contains("CREATE EXTERNAL TABLE IF NOT EXISTS `analytics`.`events`"), "{ddl}");
    assert!(ddl.contains("`ts` timestamp") && ddl.contains("PARTITIONED BY (`year` string"), "{ddl}");
}

#[test]
fn config_check_explains_settings_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, "[[columns]]\nname = \"id\"\ntype = \"string\"\n").unwrap();
    let config = dir.path().join("consumer.toml");
    std::fs::write(&config, "stream = \"events\"\ndestination = \"s3://bucket/lake/\"\nschema = \"schema.toml\"\n")
        .unwrap();
    let out = stdout(&consumer(&["config", "check", "--config", config.to_str().unwrap()]));
    assert!(out.contains(": ok"), "{out}");
    assert!(out.contains("128 MiB / 1000000 records / 300s per shard"), "{out}");
    assert!(out.contains("http://127.0.0.1:9898/metrics"), "{out}");

    std::fs::write(&config, "stream = \"events\"\ndestination = \"./lake\"\n[buffer]\nmax_age = \"100ms\"\n").unwrap();
    let out = consumer(&["config", "check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("buffer.max_age") && err.contains("\"1s\""), "{err}");

    std::fs::write(&config, "stream = \"events\"\ndestination = \"./lake\"\n[buffer]\nmax_size = 5\n").unwrap();
    let out = consumer(&["config", "check", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `max_size`") && err.contains("max_mb"), "{err}");

    // Settings that can only make keys over the stores' limits are refused up front.
    let long_stream = format!("stream = \"{}\"\ndestination = \"./lake\"\nschema = \"schema.toml\"\n", "s".repeat(128));
    std::fs::write(&config, long_stream).unwrap();
    let err = stderr(&consumer(&["config", "check", "--config", config.to_str().unwrap()]));
    assert!(err.contains("over the 255-byte limit of file names") && err.contains("shorter stream"), "{err}");
}

/// `convert ... | head -1`: a reader that goes away early ends the output
/// quietly (as SIGPIPE would), never with a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (input, schema) = events(dir.path(), 200);
    let lake = dir.path().join("lake");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["convert", "--input", &input, "--destination", lake.to_str().unwrap(), "--schema", &schema])
        .args(["--time-field", "ts", "--print-partitions"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(std::fs::read_dir(&lake).unwrap().count() > 0, "the lake was written before the summary");
}

/// Issue 26, row 3: relative paths resolve against the config file's
/// folder, whatever the working directory (`config check` prints them
/// resolved); checkpoints left where a relative store resolved before (the
/// working directory) are never silently ignored: `run` refuses with the fix.
#[test]
fn relative_paths_follow_the_config_file_and_moved_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("schema.toml"), shardlake::events::EVENTS_SCHEMA_TOML).unwrap();
    std::fs::write(
        conf.join("consumer.toml"),
        "stream = \"events\"\ndestination = \"../lake\"\ncheckpoint_store = \"file://./cp\"\nschema = \"schema.toml\"\n",
    )
    .unwrap();
    let run_in = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
            .args(args)
            .current_dir(dir.path())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };
    let root = std::path::absolute(dir.path()).unwrap();
    let out = stdout(&run_in(&["config", "check", "--config", "conf/consumer.toml"]));
    assert!(out.contains(&format!("destination       {}", root.join("lake").display())), "{out}");
    assert!(out.contains(&format!("checkpoint_store  file://{}", root.join("conf/cp").display())), "{out}");

    // Checkpoints of an earlier release, under the working directory.
    let old = dir.path().join("cp/shardlake/events");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("shardId-000000000000.json"), r#"{"checkpoint":"42"}"#).unwrap();
    let err = stderr(&run_in(&["run", "--config", "conf/consumer.toml"]));
    assert!(err.contains("checkpoints found in") && err.contains("move them there"), "{err}");
}

/// Every consumer config in `examples/` passes `config check` as shipped, and
/// the schema they share matches the generator's events.
#[test]
fn every_example_passes_config_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = vec![];
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".toml") || name == "schema.toml" || name.starts_with("producer") {
            continue;
        }
        let out = consumer(&["config", "check", "--config", path.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("errors ") && text.contains("_errors/"), "{name}: {text}");
        checked.push(name);
    }
    assert!(checked.len() >= 7, "examples checked: {checked:?}");
    let schema = std::fs::read_to_string(examples.join("schema.toml")).unwrap();
    let columns = |toml: &str| toml.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    let generated = shardlake::events::EVENTS_SCHEMA_TOML;
    assert_eq!(columns(&schema).trim(), columns(generated).trim(), "examples/schema.toml is stale");
}
