//! Proves the worker binary's metrics endpoint (`--metrics-listen`) reports its records budget and,
//! during a sync, the records it holds in flight: the gauges deploy/README.md documents read real
//! values, not 0.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::Duration;

use common::Env;
use learnsync_sim::{Faults, GenerateParams};
use learnsync_store::model::{Area, RunState};

/// The value of an unlabelled gauge in Prometheus' text format.
fn gauge(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_gauges_read_the_worker_budget_during_a_sync() {
    let key = [9u8; 32];
    let env = Env::with(
        GenerateParams {
            seed: 71,
            users: Some(600),
            bad_records: Some(false),
            ..GenerateParams::default()
        },
        common::EnvOptions {
            cipher_key: Some(key),
            ..common::EnvOptions::default()
        },
    )
    .await;
    // Slow writes keep read records waiting for their commit long enough to be seen.
    env.salesforce.set_faults(Faults {
        latency_ms: 60,
        ..Faults::default()
    });
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync-worker"))
        .env_clear()
        .env("DATABASE_URL", env.store.database_url())
        .env("LEARNSYNC_SECRET_KEY", hex::encode(key))
        .env("LEARNSYNC_WORKER_ID", "metered")
        .env(
            "LEARNSYNC_UPSTREAM_ALLOW",
            learnsync_e2e::SIM_UPSTREAM_ALLOW,
        )
        .env("LEARNSYNC_WORKER_POLL_INTERVAL", "200ms")
        .env("LEARNSYNC_WORKER_PAGE_SIZE", "20")
        .env("LEARNSYNC_WORKER_RECORDS_IN_FLIGHT", "3000")
        .env("LEARNSYNC_WORKER_METRICS_LISTEN", address.to_string())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{address}/metrics");
    let http = reqwest::Client::new();
    let scrape = || async {
        let response = http.get(&url).send().await.ok()?;
        response.text().await.ok()
    };
    // The endpoint is up once the binary has started.
    let started = std::time::Instant::now();
    let mut text = None;
    while text.is_none() && started.elapsed() < Duration::from_secs(20) {
        text = scrape().await;
        if text.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let text = text.expect("the metrics endpoint never answered");
    assert!(
        gauge(&text, "learnsync_worker_records_budget").is_some(),
        "{text}"
    );

    let run = env.start(Area::Users, (None, None)).await;
    let (mut budget, mut in_flight) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(text) = scrape().await {
            budget = budget.max(gauge(&text, "learnsync_worker_records_budget").unwrap_or(0));
            in_flight =
                in_flight.max(gauge(&text, "learnsync_worker_records_in_flight").unwrap_or(0));
        }
        let current = env.run(run.id).await;
        if !RunState::ACTIVE.contains(&current.state) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(budget, 3000, "the budget gauge reads the worker's setting");
    assert!(
        in_flight > 0 && in_flight <= 3000,
        "records in flight seen during the sync: {in_flight}"
    );
    // After the sync, nothing is held any more.
    let text = scrape().await.unwrap();
    assert_eq!(
        gauge(&text, "learnsync_worker_records_in_flight"),
        Some(0),
        "{text}"
    );
    child.kill().await.unwrap();
}
