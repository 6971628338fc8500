//! The ops assets in `ops/`: the Grafana dashboard and the Prometheus alert
//! rules. promtool checks the rules and runs their unit tests; every
//! dashboard query is parsed by promtool too (as a recording rule). That each
//! referenced metric really exists is checked by the consumer's and the
//! producer's own metric tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}: the ops tests need promtool (scripts/test installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let dir = ops().join("prometheus");
    let checked = promtool(&["check", "rules", "shardlake-alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "shardlake-alerts_test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_dashboard_query_parses_and_every_panel_is_placed() {
    let text = std::fs::read_to_string(ops().join("grafana/shardlake.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["uid"], "shardlake");
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id {}", p["id"]);
        let grid = &p["gridPos"];
        let x_w = grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap();
        assert!(x_w <= 24 && grid["h"].as_u64().unwrap() > 0, "{} overflows the grid", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{} has no queries", p["title"]));
        assert!(!targets.is_empty(), "{} has no queries", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 20, "{}", exprs.len());
    // promtool parses PromQL in rule files: one recording rule per query,
    // with Grafana's interval variable replaced by a fixed window.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let checked = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(checked.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{checked}");
}

#[test]
fn a_broken_query_is_caught() {
    // The check above can fail: promtool rejects invalid PromQL.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yml"),
        "groups:\n  - name: g\n    rules:\n      - record: r\n        expr: \"sum(rate(x[5m])\"\n",
    )
    .unwrap();
    let out = Command::new("promtool").args(["check", "rules", "bad.yml"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
}
