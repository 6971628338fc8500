//! `shardlake-loadtest gen` as a user runs it.

use std::process::Command;

fn gen_events(args: &[&str]) -> Vec<u8> {
    let o = Command::new(env!("CARGO_BIN_EXE_shardlake-loadtest")).arg("gen").args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn gen_is_deterministic_for_a_seed() {
    let a = gen_events(&["200", "-", "--seed", "1"]);
    assert_eq!(a, gen_events(&["200", "-", "--seed", "1"]));
    assert_ne!(a, gen_events(&["200", "-", "--seed", "2"]));
    assert_eq!(a.iter().filter(|&&b| b == b'\n').count(), 200);
}

#[test]
fn gen_writes_file_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.jsonl");
    let schema = dir.path().join("s.toml");
    gen_events(&[
        "50",
        out.to_str().unwrap(),
        "--hours",
        "2",
        "--start",
        "2026-11-22T00:00:00Z",
        "--schema-out",
        schema.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 50);
    assert!(text.lines().all(|l| l.contains("\"ts\":\"2026-11-22T0")), "timestamps stay in the window");
    assert!(shardlake::schema::Schema::from_file(&schema).is_ok());
}

#[test]
fn gen_rejects_a_bad_start() {
    let o = Command::new(env!("CARGO_BIN_EXE_shardlake-loadtest"))
        .args(["gen", "1", "-", "--start", "tomorrow"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--start tomorrow: expected RFC 3339"));
}
