//! Proves that every learnsync metric the Grafana dashboard and the Prometheus alert rules in
//! `deploy/` name is one the server and the workers export, scraped after a real sync (with one
//! Docebo throttling answer, so every labelled family has a series).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use learnsync_client::pb;
use learnsync_e2e::{TestSystem, manual};
use learnsync_sim::{FailNext, Faults, GenerateParams};

const FILES: &[&str] = &[
    "deploy/grafana/learnsync.json",
    "deploy/prometheus/learnsync-alerts.yaml",
];

/// Every `learnsync_...` identifier in a text (PromQL names, not the alerts' CamelCase names).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut index = 0;
    while let Some(found) = text[index..].find("learnsync_") {
        let start = index + found;
        let boundary = start == 0 || {
            let before = bytes[start - 1];
            !(before.is_ascii_alphanumeric() || before == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_string());
        }
        index = end;
    }
    names
}

/// The metric names of a Prometheus text exposition (histograms by their series' names too).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_name_scanner_finds_promql_names_only() {
    let names = metric_names(
        "alert: LearnsyncRunFailed\nexpr: rate(learnsync_worker_records_total[5m]) > \
         max(learnsync_runs{state=\"failed\"})",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["learnsync_runs", "learnsync_worker_records_total"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_name_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut wanted = BTreeSet::new();
    for file in FILES {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} names no learnsync metric");
        wanted.extend(names);
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(FILES[0])).unwrap()).unwrap();
    assert!(
        dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "the dashboard has its panels"
    );

    let params = GenerateParams {
        users: Some(300),
        bad_records: Some(false),
        ..GenerateParams::default()
    };
    let system = TestSystem::start(&params, 1, |_| {}).await.unwrap();
    system.docebo.set_faults(Faults {
        fail_next: Some(FailNext {
            status: 429,
            count: 1,
        }),
        ..Faults::default()
    });
    let run = system.first_sync(manual(pb::Area::Users)).await.unwrap();
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    let server = reqwest::get(format!("{}/metrics", system.server.metrics_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut available = exported(&server);
    available.extend(exported(&learnsync_worker::metrics::render()));
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !available.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/ names metrics nobody exports: {missing:?}\nexported: {available:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), system.stop())
        .await
        .unwrap()
        .unwrap();
}
