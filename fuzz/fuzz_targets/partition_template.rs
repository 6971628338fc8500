//! Partition templates: the first line of the input is a template, the rest a
//! record. When the template parses, it is rendered for several times (and
//! none). Invariants: as many `/` levels as the template has, a level is empty
//! only where the template's own text leaves it empty, no level is `.` or
//! `..` or holds a backslash or control character, and the value of each
//! `name=!{field:...}` level unescapes to the record's field value.
//! Separately, escaping then unescaping any value gives it back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlake::partition::{
    HIVE_DEFAULT_PARTITION, PartitionTemplate, escape_partition_value, lookup, unescape_partition_value,
};

const TIMES: [Option<i64>; 8] = [
    None,
    Some(0),
    Some(-1),
    Some(1_710_486_721_123),
    Some(253_402_300_799_999), // 9999-12-31T23:59:59.999Z
    Some(-62_135_596_800_000), // 0001-01-01
    Some(i64::MAX),
    Some(i64::MIN),
];

/// The template's levels, split at `/` outside `!{...}` expressions.
fn template_levels(template: &str) -> Vec<String> {
    let mut levels = vec![String::new()];
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("!{")
            && let Some(end) = after.find('}')
        {
            levels.last_mut().unwrap().push_str(&rest[..end + 3]);
            rest = &after[end + 1..];
            continue;
        }
        let c = rest.chars().next().unwrap();
        if c == '/' {
            levels.push(String::new());
        } else {
            levels.last_mut().unwrap().push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    // The rendered path always ends in `/`: a trailing `/` closes the last level.
    if levels.last().is_some_and(String::is_empty) {
        levels.pop();
    }
    levels
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (template, record) = text.split_once('\n').unwrap_or((&text, "{}"));

    // Escaping round-trips for any value; unescaping never panics.
    for value in [template, record] {
        let mut escaped = String::new();
        escape_partition_value(value, &mut escaped);
        assert!(!escaped.contains('/') && escaped != "." && escaped != "..", "escaped {value:?} as {escaped:?}");
        if !value.is_empty() {
            assert_eq!(unescape_partition_value(&escaped), value, "escaped as {escaped:?}");
        }
    }
    let _ = unescape_partition_value(template);

    let Ok(parsed) = PartitionTemplate::parse(template) else {
        return;
    };
    let levels = template_levels(template);
    let mut out = String::new();
    for time in TIMES {
        parsed.render(time, record, &mut out);
        if template.is_empty() {
            assert_eq!(out, "", "empty template");
            continue;
        }
        assert!(out.ends_with('/'), "{out:?} does not end in /");
        let rendered: Vec<&str> = out[..out.len() - 1].split('/').collect();
        assert_eq!(rendered.len(), levels.len(), "levels of {out:?} for template levels {levels:?}");
        for (seg, level) in rendered.iter().zip(&levels) {
            assert!(seg.is_empty() == level.is_empty(), "level {seg:?} of {out:?} from {level:?}");
            assert!(*seg != "." && *seg != "..", "level {seg:?} of {out:?} (time {time:?})");
            assert!(!seg.contains('\\'), "level {seg:?} of {out:?}");
            assert!(!seg.chars().any(char::is_control), "level {seg:?} of {out:?}");
            // `name=!{field:path}`: the value is the field's, escaped.
            if let Some((name, expr)) = level.split_once('=')
                && let Some(path) = expr.strip_prefix("!{field:").and_then(|e| e.strip_suffix('}'))
                && !path.contains('}')
                && !name.contains("!{")
            {
                let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
                let value = seg.strip_prefix(&format!("{name}=")).unwrap_or_else(|| panic!("{seg:?} lost {name}="));
                match lookup(record, &path) {
                    Some(v) if !v.is_empty() => {
                        assert_eq!(unescape_partition_value(value), v, "value of {path:?} in {seg:?}")
                    }
                    _ => assert_eq!(value, HIVE_DEFAULT_PARTITION, "missing {path:?} in {seg:?}"),
                }
            }
        }
    }
});
