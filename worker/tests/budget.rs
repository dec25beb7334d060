//! Proves the Docebo call budget is one token bucket per tenant and platform, shared by every job and worker: grants never exceed what the hour allows, an empty bucket says how long to wait, a 429/503 pause holds everyone back, and a sync whose budget equals Docebo's leaky-bucket limit (rate and burst) draws no 429.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use learnsync_e2e::env::{Env, EnvOptions, sync_area, test_settings};
use learnsync_sim::{DoceboConfig, GenerateParams};
use learnsync_store::Store;
use learnsync_store::model::{Area, RunState};
use learnsync_store::worker::{Allowance, BudgetKey, pause_docebo, take_budget};

/// 36 calls an hour, all of them at once.
const HOURLY_36: Allowance = Allowance {
    calls_per_hour: 36,
    burst: 36,
};
/// Docebo's 1,000 calls an hour, 20 at once.
const DOCEBO: Allowance = Allowance {
    calls_per_hour: 1000,
    burst: 20,
};

/// The budget of the tenant `acme` on `platform`.
fn acme(platform: &str) -> BudgetKey {
    BudgetKey {
        tenant: "acme".into(),
        platform: platform.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_is_shared_and_pauses_hold_everyone() {
    let url = learnsync_store::testing::fresh_database().await.unwrap();
    let store = Store::connect(&learnsync_store::Options {
        database_url: url,
        max_connections: 8,
    })
    .unwrap();
    // Ten callers at once on a platform allowing 36 calls an hour, each asking for 5.
    let mut takers = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        takers.push(tokio::spawn(async move {
            let conn = store.conn().await.unwrap();
            take_budget(&conn, &acme("platform-a"), HOURLY_36, 5)
                .await
                .unwrap()
        }));
    }
    let mut granted = 0;
    for taker in takers {
        granted += taker.await.unwrap().granted;
    }
    assert_eq!(
        granted, 36,
        "the first hour's bucket holds exactly 36 calls"
    );

    let conn = store.conn().await.unwrap();
    let empty = take_budget(&conn, &acme("platform-a"), HOURLY_36, 5)
        .await
        .unwrap();
    assert_eq!(empty.granted, 0);
    assert!(!empty.paused);
    // 36 calls an hour: the next one in about 100 s.
    assert!(
        empty.wait > Duration::from_secs(50) && empty.wait <= Duration::from_secs(100),
        "{empty:?}"
    );

    // Another platform has a bucket of its own.
    let other = take_budget(&conn, &acme("platform-b"), DOCEBO, 5)
        .await
        .unwrap();
    assert_eq!(other.granted, 5);

    // A pause holds every caller of the platform back, whatever its bucket holds.
    pause_docebo(&conn, &acme("platform-b"), Duration::from_secs(30))
        .await
        .unwrap();
    let paused = take_budget(&conn, &acme("platform-b"), DOCEBO, 5)
        .await
        .unwrap();
    assert_eq!(paused.granted, 0);
    assert!(paused.paused);
    assert!(paused.wait > Duration::from_secs(20), "{paused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_budgeted_at_doceboes_limit_draws_no_429() {
    // Docebo lets 3,600 calls an hour through (one a second), 5 at once; the connection's budget
    // is the same, and so is the workers' burst.
    const PER_HOUR: u32 = 3600;
    const BURST: u32 = 5;
    let env = Env::with(
        GenerateParams {
            seed: 71,
            users: Some(60),
            courses: Some(2),
            learning_plans: Some(1),
            bad_records: Some(false),
            ..GenerateParams::default()
        },
        EnvOptions {
            docebo: DoceboConfig {
                rate_limit_per_hour: Some(PER_HOUR),
                rate_limit_burst: Some(BURST),
                ..DoceboConfig::default()
            },
            docebo_calls_per_hour: PER_HOUR as i32,
            ..EnvOptions::default()
        },
    )
    .await;
    let mut settings = test_settings("paced");
    settings.docebo_burst = BURST;
    // Pages of 10: a listing takes several calls.
    settings.page_size = 10;
    let worker = env.spawn_worker(settings);
    let started = Instant::now();
    for area in [Area::Users, Area::Courses] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{area:?}: {run:?}");
    }
    let elapsed = started.elapsed();
    worker.stop().await;
    let limiter = env.docebo.rate_limit();
    let tokens = env
        .docebo
        .counters()
        .get("POST /oauth2/token")
        .copied()
        .unwrap_or(0);
    assert_eq!(limiter.refused, 0, "no call drew a 429: {limiter:?}");
    assert!(
        limiter.allowed > u64::from(BURST),
        "the sync needed more than a burst, so it was paced: {limiter:?}"
    );
    assert!(tokens > 0, "token requests were made (and budgeted)");
    // Paced: the burst at once, the rest at one a second (token requests included); generous.
    let paced = Duration::from_secs(limiter.allowed + tokens - u64::from(BURST));
    assert!(
        elapsed < paced * 3 + Duration::from_secs(20),
        "{elapsed:?} against a paced {paced:?}"
    );
}
