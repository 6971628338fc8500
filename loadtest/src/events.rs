//! Load-test events: the reference event shape (from the seeded generator in
//! `shardlake::events`), each stamped with a unique id `{run}-{seq}`, its
//! send time (`loadtest_sent_ms`, for end-to-end latency) and `ts` = now, so
//! the lake's hour partitions follow the run. Templates are cut once; making
//! an event is string splicing, cheap enough for tens of thousands per second.

use shardlake::events::{EVENTS_SCHEMA_TOML, GenOptions, generate};
use shardlake::time::format_rfc3339_millis;

/// How many distinct generated events the load cycles through.
const TEMPLATES: u64 = 4096;

/// The consumers' schema: the reference columns plus the load-test ones.
pub fn schema_toml() -> String {
    format!(
        "{EVENTS_SCHEMA_TOML}\n[[columns]]\nname = \"loadtest_sent_ms\"\ntype = \"bigint\"\nrequired = true\n\n\
         [[columns]]\nname = \"loadtest_padding\"\ntype = \"string\"\n"
    )
}

/// One generated event cut around its `event_id` and `ts` values.
struct Template {
    /// From after the event id to the `ts` value (`,"event_type":…,"ts":"`).
    middle: String,
    /// From after the `ts` value to the end, without the closing brace.
    tail: String,
}

/// Makes the run's events.
pub struct EventMaker {
    run_id: String,
    templates: Vec<Template>,
    padding: Option<String>,
}

impl EventMaker {
    /// Events of run `run_id`, cycling through templates made with `seed`,
    /// padded to about `record_bytes` when given.
    pub fn new(run_id: &str, seed: u64, record_bytes: Option<usize>) -> Self {
        let mut out = Vec::new();
        let opts = GenOptions { count: TEMPLATES, seed, ..GenOptions::default() };
        generate(&opts, &mut out).expect("writing to memory");
        let text = String::from_utf8(out).expect("generated events are UTF-8");
        let templates: Vec<Template> = text.lines().map(cut).collect();
        let typical = templates[0].middle.len() + templates[0].tail.len() + 80;
        let padding = record_bytes.map(|n| "x".repeat(n.saturating_sub(typical)));
        EventMaker { run_id: run_id.to_string(), templates, padding }
    }

    /// The id of event `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.run_id)
    }

    /// Event `seq` sent at `sent_ms` (epoch ms): its partition key (the id)
    /// and JSON bytes.
    pub fn event(&self, seq: u64, sent_ms: i64) -> (String, Vec<u8>) {
        let t = &self.templates[(seq % TEMPLATES) as usize];
        let id = self.id(seq);
        let mut s = String::with_capacity(t.middle.len() + t.tail.len() + 120);
        s.push_str("{\"event_id\":\"");
        s.push_str(&id);
        s.push_str("\",\"loadtest_sent_ms\":");
        s.push_str(&sent_ms.to_string());
        if let Some(p) = &self.padding {
            s.push_str(",\"loadtest_padding\":\"");
            s.push_str(p);
            s.push('"');
        }
        s.push_str(&t.middle);
        s.push_str(&format_rfc3339_millis(sent_ms));
        s.push_str(&t.tail);
        s.push('}');
        (id, s.into_bytes())
    }

    /// The sequence number of an event id of this run; `None` for another run's.
    pub fn seq_of(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&self.run_id)?.strip_prefix('-')?.parse().ok()
    }
}

/// Cuts a generated line (`{"event_id":"…","event_type":…,"ts":"…",…}`).
fn cut(line: &str) -> Template {
    let after_id = line["{\"event_id\":\"".len()..].find('"').expect("event_id value") + "{\"event_id\":\"".len() + 1;
    let ts = line.find(",\"ts\":\"").expect("ts field") + ",\"ts\":\"".len();
    let ts_end = ts + line[ts..].find('"').expect("ts value end");
    Template { middle: line[after_id..ts].to_string(), tail: line[ts_end..line.len() - 1].to_string() }
}

#[cfg(test)]
mod tests {
    use shardlake::schema::Schema;

    use super::*;

    #[test]
    fn events_are_valid_json_with_the_run_id_send_time_and_now_as_ts() {
        let maker = EventMaker::new("r7", 42, None);
        let (key, bytes) = maker.event(12345, 1_795_000_000_123);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(key, "r7-12345");
        assert_eq!(v["event_id"], "r7-12345");
        assert_eq!(v["loadtest_sent_ms"], 1_795_000_000_123i64);
        assert_eq!(v["ts"], format_rfc3339_millis(1_795_000_000_123));
        assert!(v["event_type"].is_string() && v["device"].is_object());
        assert_eq!(maker.seq_of("r7-12345"), Some(12345));
        assert_eq!(maker.seq_of("r70-1"), None);
        assert_eq!(maker.seq_of("other-1"), None);
        // Every column of every template fits the schema the consumers get.
        let schema = Schema::parse(&schema_toml(), false).unwrap();
        assert!(schema.columns.iter().any(|c| c.name == "loadtest_sent_ms"));
        for seq in 0..TEMPLATES {
            let v: serde_json::Value = serde_json::from_slice(&maker.event(seq, 0).1).unwrap();
            for key in v.as_object().unwrap().keys() {
                assert!(schema.columns.iter().any(|c| &c.name == key), "{key} not in the schema");
            }
        }
    }

    #[test]
    fn padding_brings_events_near_the_asked_size() {
        let maker = EventMaker::new("r", 1, Some(4000));
        let sizes: Vec<usize> = (0..100).map(|i| maker.event(i, 0).1.len()).collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((3500..4500).contains(&mean), "{mean}");
        serde_json::from_slice::<serde_json::Value>(&maker.event(3, 0).1).unwrap();
    }
}
