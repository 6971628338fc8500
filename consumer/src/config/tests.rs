//! Tests of `consumer.toml`: parsing, every check, and the reference docs.

use shardlake::partition::TimeSource;

use super::*;

fn resolve(text: &str) -> anyhow::Result<Settings> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.toml"), "[[columns]]\nname = \"id\"\ntype = \"string\"\n").unwrap();
    ConsumerConfig::parse(text, "consumer.toml")?.resolve(dir.path())
}

const MINIMAL: &str = "stream = \"events\"\ndestination = \"./lake\"\nschema = \"schema.toml\"\n";

#[test]
fn minimal_file_gets_firehose_like_defaults() {
    let s = resolve(MINIMAL).unwrap();
    let c = &s.config;
    assert_eq!(c.application, "shardlake");
    assert_eq!(c.initial_position, InitialPosition::TrimHorizon);
    assert_eq!(c.buffer.max_mb, 128);
    assert_eq!(c.buffer.max_age, Duration::from_secs(300));
    assert_eq!(c.polling.max_records_per_call, 10_000);
    assert_eq!(c.metrics.address.to_string(), "127.0.0.1:9898");
    assert_eq!(s.table.error_prefix, "_errors/");
    assert_eq!(s.table.time_source, TimeSource::Arrival);
    assert_eq!(s.table.writer.memory_budget, 128 << 20);
    assert_eq!(c.fleet.lease_duration, Duration::from_secs(10));
    assert_eq!(c.fleet.renew_every(), Duration::from_secs(10) / 3);
    assert!(!c.fleet.create_table);
    assert_eq!(s.s3.timeouts, shardlake::aws::Timeouts::default());
    assert_eq!(c.timeouts.call, Duration::from_secs(10));
    assert_eq!(c.health.failing_after, Duration::from_secs(60));
    let id = c.fleet.worker_id.as_deref().unwrap();
    assert!(id.contains(&format!("-{}-", std::process::id())), "{id}");
}

#[test]
fn relative_paths_resolve_against_the_config_files_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.toml"), "[[columns]]\nname = \"id\"\ntype = \"string\"\n").unwrap();
    let text = format!("{MINIMAL}checkpoint_store = \"file://./sub/../cp\"\n");
    let s = ConsumerConfig::parse(&text, "consumer.toml").unwrap().resolve(dir.path()).unwrap();
    let base = std::path::absolute(dir.path()).unwrap();
    assert_eq!(s.config.destination, base.join("lake").display().to_string());
    assert_eq!(s.config.checkpoint_store, format!("file://{}", base.join("cp").display()));
    let text = MINIMAL.replace("./lake", "s3://b/lake/");
    let s = ConsumerConfig::parse(&text, "consumer.toml").unwrap().resolve(dir.path()).unwrap();
    assert_eq!(s.config.destination, "s3://b/lake/");
    assert!(s.config.checkpoint_store.starts_with(&format!("file://{}", base.display())), "the default too");
}

#[test]
fn clamps_polling_to_the_kinesis_limits() {
    let s = resolve(&format!(
        "{MINIMAL}[polling]\nmax_records_per_call = 50000\ninterval = \"10ms\"\nidle_interval = \"5ms\"\n"
    ))
    .unwrap();
    assert_eq!(s.config.polling.max_records_per_call, 10_000);
    assert_eq!(s.config.polling.interval, Duration::from_millis(200));
    assert_eq!(s.config.polling.idle_interval, Duration::from_millis(200));
}

#[test]
fn errors_name_the_key_and_the_fix() {
    let cases = [
        (format!("{MINIMAL}strem = 1\n"), "unknown field `strem`"),
        (format!("{MINIMAL}[buffer]\nmax_age = \"500ms\"\n"), "buffer.max_age"),
        (format!("{MINIMAL}[buffer]\nmax_age = \"soon\"\n"), "max_age"),
        (format!("{MINIMAL}initial_position = \"AT_TIMESTAMP\"\n"), "initial_timestamp: required"),
        (format!("{MINIMAL}initial_position = \"OLDEST\"\n"), "TRIM_HORIZON"),
        (format!("{MINIMAL}partition = \"x=!{{nope}}\"\n"), "partition:"),
        (format!("{MINIMAL}[buffer]\nmax_mb = 600\n"), "memory_budget_mb"),
        (MINIMAL.replace("./lake", "gs://x"), "destination:"),
        (MINIMAL.replace("./lake", "s3:/bucket"), "write s3://bucket"),
        (MINIMAL.replace("./lake", "S3://bucket/lake"), "write s3://bucket/lake"),
        (format!("{MINIMAL}checkpoint_store = \"dynamodb:/leases\"\n"), "write dynamodb://leases"),
        (format!("{MINIMAL}[fleet]\nworker_id = \"a\"\n"), "fleet: only used with checkpoint_store = \"dynamodb"),
        (format!("{MINIMAL}shutdown_timeout = \"0s\"\n"), "shutdown_timeout: 0ns leaves no time"),
        (format!("{MINIMAL}[buffer]\nmemory_budget_mb = 17592186044416\n"), "buffer.memory_budget_mb: 17592186044416"),
        (format!("{MINIMAL}partition = \"dt=${{timestamp:yyyy}}/\"\n"), "has a brace"),
        (format!("{MINIMAL}[fleet]\nlease_duration = \"500ms\"\n"), "fleet.lease_duration"),
        (format!("{MINIMAL}[fleet]\nrenew_interval = \"20s\"\n"), "fleet.renew_interval"),
        (format!("{MINIMAL}[fleet]\nleases = 3\n"), "unknown field `leases`"),
        (format!("{MINIMAL}[timeouts]\ncall = \"0s\"\n"), "timeouts.call: 0ns is below the 500ms minimum"),
        (format!("{MINIMAL}[health]\nstall_after = \"0s\"\n"), "health.stall_after"),
        (format!("{MINIMAL}[retrieval]\nmode = \"push\"\n"), "fan-out"),
        (format!("{MINIMAL}[retrieval]\nmode = \"fan-out\"\nconsumer_name = \"a b\"\n"), "retrieval.consumer_name"),
        (MINIMAL.replace("schema.toml", "missing.toml"), "schema:"),
        ("destination = \"./lake\"\nschema = \"s.toml\"\n".to_string(), "missing field `stream`"),
        (MINIMAL.replace("\"events\"", &format!("\"{}\"", "e".repeat(128))), "over the 255-byte limit of file names"),
        (MINIMAL.replace("./lake", &format!("s3://b/{}/", "p/".repeat(400))), "S3's 1024-byte key limit"),
        (format!("{MINIMAL}partition = \"{}=!{{field:a}}\"\n", "k".repeat(240)), "partition `"),
        (format!("{MINIMAL}catalog = \"glue://Lake/events\"\n"), "catalog: `glue://Lake/events`"),
        (format!("{MINIMAL}catalog = \"glue://lake/events\"\npartition = \"!{{timestamp:yyyy}}/\"\n"), "name=!{...}"),
        (format!("{MINIMAL}catalog_create = true\n"), "catalog_create: set catalog"),
        (format!("{MINIMAL}catalog_partitions = \"crawler\"\n"), "`register`"),
        (MINIMAL.replace("schema.toml", "glue://lake"), "schema: `glue://lake` has no table"),
        (format!("{MINIMAL}unknown_fields = \"grow\"\n"), "`evolve`"),
        (format!("{MINIMAL}unknown_fields = \"evolve\"\nevolve_min_records = 0\n"), "evolve_min_records: must be"),
        (format!("{MINIMAL}evolve_min_records = 5\n"), "only used with unknown_fields = \"evolve\""),
        (format!("{MINIMAL}evolve_interval = \"1m\"\n"), "evolve_interval: only used with unknown_fields"),
    ];
    for (text, want) in cases {
        let err = format!("{:#}", resolve(&text).unwrap_err());
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
}

use shardlake::config_reference::{assert_every_key_documented, every_key, reference_block, serde_names};

/// docs/configuration.md, the reference this module's keys are documented in.
const REFERENCE: &str = include_str!("../../../docs/configuration.md");

#[test]
fn the_configuration_reference_lists_every_key_with_its_default() {
    let block = reference_block(REFERENCE, "consumer.toml");
    let every = every_key(&block);
    // Every documented key is one the code accepts: the structs deny
    // unknown fields.
    toml::from_str::<ConsumerConfig>(&every)
        .unwrap_or_else(|e| panic!("docs/configuration.md documents a key the code refuses: {e}"));
    // Every key the code accepts is documented.
    let documented: toml::Table = toml::from_str(&every).unwrap();
    let sections: [(&str, &[&str]); 9] = [
        ("", serde_names::<ConsumerConfig>()),
        ("buffer", serde_names::<BufferConfig>()),
        ("writer", serde_names::<WriterConfig>()),
        ("polling", serde_names::<PollingConfig>()),
        ("retrieval", serde_names::<RetrievalConfig>()),
        ("metrics", serde_names::<MetricsConfig>()),
        ("timeouts", serde_names::<TimeoutsConfig>()),
        ("health", serde_names::<HealthConfig>()),
        ("fleet", serde_names::<FleetConfig>()),
    ];
    assert_every_key_documented("consumer.toml", &documented, &sections, &[]);
    // The defaults shown are the code's: the keys set in the block
    // (commented ones left out) parse the same as the required ones alone.
    let required: String = block.lines().filter(|l| l.contains("# required")).map(|l| format!("{l}\n")).collect();
    let with_defaults: ConsumerConfig = toml::from_str(&block).unwrap();
    let code_defaults: ConsumerConfig = toml::from_str(&required).unwrap();
    assert_eq!(
        format!("{with_defaults:#?}"),
        format!("{code_defaults:#?}"),
        "a default in docs/configuration.md differs from the code's"
    );
}

#[test]
fn the_readme_config_passes_the_checks_of_config_check() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\n").expect("README.md has a ```toml block") + "```toml\n".len();
    let end = readme[start..].find("\n```").expect("its closing fence");
    let dir = tempfile::tempdir().unwrap();
    let text = &readme[start..=start + end];
    ConsumerConfig::parse(text, "README.md").and_then(|c| c.resolve(dir.path())).unwrap();
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (repeats get `-1`, `-2`, ...).
fn anchors(text: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        let n = counts.entry(base.clone()).or_insert(0);
        seen.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    seen
}

/// The targets of the Markdown links `[text](target)` outside code blocks.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    targets
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = ["README.md", "deploy/README.md", "examples/README.md"].map(|f| root.join(f)).to_vec();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let linked = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
            } else if !fragment.is_empty() {
                let text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(files.len() > 5, "docs/ holds the pages");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
