//! Prometheus helpers shared by the consumer and the producer: checking that
//! the metric names a dashboard or an alert rule uses are ones a binary
//! really exports.

use std::collections::BTreeSet;

/// Metric names starting with `prefix` that `text` (a dashboard, a rule
/// file) refers to but the text exposition `exposition` does not contain.
/// Histogram series (`_bucket`, `_sum`, `_count`) count as their histogram.
pub fn missing_metrics(exposition: &str, text: &str, prefix: &str) -> BTreeSet<String> {
    let exported: BTreeSet<&str> =
        exposition.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let mut missing = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        rest = &rest[at + name.len()..];
        if !exported.contains(name.as_str()) {
            missing.insert(name);
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_from_the_exposition_are_reported() {
        let exposition = "# HELP a_total x\na_total{k=\"v\"} 1\nh_seconds_bucket{le=\"1\"} 2\nh_seconds_count 2\n";
        let dashboard = r#"rate(a_total[5m]) + histogram_quantile(0.9, rate(h_seconds_bucket[5m])) / b_total"#;
        assert_eq!(missing_metrics(exposition, dashboard, "a_"), BTreeSet::new());
        assert_eq!(missing_metrics(exposition, dashboard, "h_"), BTreeSet::new());
        assert_eq!(missing_metrics(exposition, dashboard, "b_"), BTreeSet::from(["b_total".to_string()]));
    }
}
