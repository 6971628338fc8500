//! Schema inference on fuzzed JSON Lines. Invariants: the inferred schema
//! validates, its TOML parses back to the same schema, the Athena DDL
//! renders, and the sample lines pushed through a pipeline with that schema
//! each end as a row or an error line; every line inference took as a sample
//! loads as a row ("whatever the samples hold, the schema it gives loads").

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlake::partition::{DEFAULT_TEMPLATE, PartitionTemplate, TimeSource};
use shardlake::schema::{DdlOptions, Schema, SchemaInferrer, UnknownFieldPolicy, create_table_ddl};
use shardlake_fuzz::{T0, check_outputs, run_pipeline, spec};

/// Lines fed to inference and the pipeline at most.
const MAX_LINES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').take(MAX_LINES).collect();
    let mut inferrer = SchemaInferrer::new();
    let mut samples = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let before = inferrer.records();
        inferrer.observe_line(line);
        if inferrer.records() > before {
            samples.push(i as u64 + 1);
        }
    }
    let Some(schema) = inferrer.finish() else {
        return;
    };
    if let Err(e) = schema.validate() {
        panic!("inferred schema does not validate: {e}\n{schema:?}");
    }
    let toml = schema.to_toml();
    match Schema::parse(&toml, false) {
        Ok(back) => assert_eq!(back, schema, "TOML round trip changed the schema:\n{toml}"),
        Err(e) => panic!("inferred schema's TOML does not load: {e}\n{toml}"),
    }
    for template in [DEFAULT_TEMPLATE, "region=!{field:region}/dt=!{timestamp:yyyy-MM-dd}/"] {
        for unknown_fields in [UnknownFieldPolicy::Keep, UnknownFieldPolicy::Drop] {
            let opts = DdlOptions {
                table: "db.events".into(),
                location: "s3://bucket/lake/".into(),
                template: PartitionTemplate::parse(template).unwrap(),
                unknown_fields,
                first_year: 2020,
            };
            if let Err(e) = create_table_ddl(&schema, &opts) {
                panic!("no DDL for the inferred schema: {e}\n{toml}");
            }
        }
    }

    let spec = spec(schema, "dt=!{timestamp:yyyy-MM-dd}/", TimeSource::Arrival, UnknownFieldPolicy::Keep);
    let (stats, outputs) = run_pipeline(spec, &lines, Some(T0));
    let fates = check_outputs(&lines, &stats, &outputs, 1);
    for line in samples {
        if let Some((kind, message)) = fates.errors.get(&line) {
            panic!(
                "sample line {line} does not load with the schema inferred from it: {} {message}\n{toml}",
                kind.as_str()
            );
        }
    }
});
