// Proves the Docebo limiter as a leaky bucket with a small burst: a burst of calls passes, the next
// gets 429 with Retry-After, the bucket refills at the hourly rate, calls paced at that rate never
// get 429, and the limiter counts what it let through and refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{client, docebo_get, docebo_token};
use learnsync_sim::{DoceboConfig, DoceboSim};
use serde_json::{Value, json};

#[tokio::test]
async fn a_bucket_with_a_burst_refuses_with_retry_after_and_refills_at_the_hourly_rate() {
    // 3,600 calls an hour: one drop leaks a second; three calls at once at most.
    let sim = DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: Some(3600),
        rate_limit_burst: Some(3),
        ..DoceboConfig::default()
    })
    .await
    .unwrap();
    let http = client();
    let token = docebo_token(&http, &sim).await;
    for _ in 0..3 {
        let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
        assert_eq!(status, 200);
    }
    let response = http
        .get(format!("{}/manage/v1/user", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 200, "a drop leaked: one more call passes");
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 429);

    let limit = sim.rate_limit();
    assert_eq!((limit.per_hour, limit.burst), (Some(3600), Some(3)));
    assert_eq!((limit.allowed, limit.refused), (4, 2));
    let stats: Value = http
        .get(format!("{}/__sim/rate_limit", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats,
        json!({"per_hour": 3600, "burst": 3, "allowed": 4, "refused": 2})
    );
}

#[tokio::test]
async fn calls_paced_at_the_rate_never_draw_a_429_and_the_control_api_sets_the_bucket() {
    let sim = DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: None,
        ..DoceboConfig::default()
    })
    .await
    .unwrap();
    let http = client();
    let token = docebo_token(&http, &sim).await;
    // 36,000 an hour is one call per 100 ms; a burst of 2.
    let response = http
        .post(format!("{}/__sim/rate_limit", sim.base_url()))
        .json(&json!({"per_hour": 36000, "burst": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for _ in 0..12 {
        let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    // Unpaced, the burst is spent at once.
    let mut refused = 0;
    for _ in 0..5 {
        if docebo_get(&http, &sim, &token, "/manage/v1/user").await.0 == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused}");
    let limit = sim.rate_limit();
    assert_eq!(limit.refused, refused);
    assert_eq!(limit.allowed, 12 + 5 - refused);

    // A zero burst is refused; no burst means an hour's allowance at once (the former behaviour).
    let response = http
        .post(format!("{}/__sim/rate_limit", sim.base_url()))
        .json(&json!({"per_hour": 100, "burst": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    sim.set_rate_limit_bucket(Some(5), None);
    for _ in 0..5 {
        assert_eq!(
            docebo_get(&http, &sim, &token, "/manage/v1/user").await.0,
            200
        );
    }
    assert_eq!(
        docebo_get(&http, &sim, &token, "/manage/v1/user").await.0,
        429
    );
    assert_eq!((sim.rate_limit().allowed, sim.rate_limit().refused), (5, 1));
}
