//! The `shardlake-consumer` and `shardlake-loadtest` command lines as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn consumer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardlake-consumer")).args(args).output().unwrap()
}

fn loadtest_bin() -> std::path::PathBuf {
    // Built by the workspace: target/<profile>/shardlake-loadtest next to our binary.
    Path::new(env!("CARGO_BIN_EXE_shardlake-consumer")).with_file_name("shardlake-loadtest")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure, got: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Writes reference events and their schema with `shardlake-loadtest gen`.
fn events(dir: &Path, n: u64) -> (String, String) {
    let input = dir.join("ev.jsonl");
    let schema = dir.join("schema.toml");
    let o = Command::new(loadtest_bin())
        .args(["gen", &n.to_string(), input.to_str().unwrap(), "--seed", "9", "--schema-out"])
        .arg(&schema)
        .output()
        .expect("shardlake-loadtest is built with the workspace: run `cargo test --workspace`");
    stdout(&o);
    (input.to_string_lossy().into(), schema.to_string_lossy().into())
}

#[test]
fn convert_prints_a_summary_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (input, schema) = events(dir.path(), 3000);
    let lake = dir.path().join("lake");
    let out = stdout(&consumer(&[
        "convert", "--input", &input, "--destination", lake.to_str().unwrap(), "--schema", &schema, "--time-field",
        "ts", "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"], 3000);
    assert_eq!(v["rows"], 3000);
    assert_eq!(v["data_files"], 48);
    assert_eq!(v["partitions"].as_object().unwrap().len(), 48);
    let text = stdout(&consumer(&[
        "convert", "--input", &input, "--destination", &format!("file://{}", lake.display()), "--schema", &schema,
        "--time-field", "ts",
    ]));
    assert!(text.contains("rows              3000  in 48 data files, 48 partitions"), "{text}");
}

#[test]
fn convert_explains_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (input, schema) = events(dir.path(), 10);
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let err = stderr(&consumer(&["convert", "--input", &input, "--destination", lake, "--schema", &schema]));
    assert!(err.contains("pass --time-field"), "{err}");
    let err = stderr(&consumer(&["convert", "--input", "/nope.jsonl", "--destination", lake, "--infer-schema"]));
    assert!(err.contains("input file /nope.jsonl does not exist"), "{err}");
    let bad_schema = dir.path().join("bad.toml");
    std::fs::write(&bad_schema, "[[columns]]\nname = \"a\"\ntype = \"strnig\"\n").unwrap();
    let err = stderr(&consumer(&[
        "convert", "--input", &input, "--destination", lake, "--schema", bad_schema.to_str().unwrap(), "--time-field",
        "ts",
    ]));
    assert!(err.contains("column 1 (`a`)") && err.contains("unknown type `strnig`"), "{err}");
    let err = stderr(&consumer(&[
        "convert", "--input", &input, "--destination", lake, "--infer-schema", "--time-field", "ts", "--partition",
        "!{timestamp:YYYY}/",
    ]));
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
        "schema", "ddl", "--schema", path.to_str().unwrap(), "--table", "analytics.events", "--location",
        "s3://my-lake/events/",
    ]));
    assert!(ddl.contains("CREATE EXTERNAL TABLE IF NOT EXISTS `analytics`.`events`"), "{ddl}");
    assert!(ddl.contains("`ts` timestamp") && ddl.contains("PARTITIONED BY (`year` string"), "{ddl}");
}

#[test]
fn loadtest_gen_is_deterministic() {
    let bin = loadtest_bin();
    let run = |seed: &str| {
        let o = Command::new(&bin).args(["gen", "200", "-", "--seed", seed]).output().unwrap();
        assert!(o.status.success());
        o.stdout
    };
    assert_eq!(run("1"), run("1"));
    assert_ne!(run("1"), run("2"));
    assert_eq!(run("1").iter().filter(|&&b| b == b'\n').count(), 200);
}
