//! Proves a Bulk API 2.0 ingest job that never completes holds no job for ever: past the deadline the wait ends as a transient error, the stuck job is aborted and the retry writes the records; a stop ends the wait after its grace and aborts the job too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_e2e::env::{Env, test_settings};
use learnsync_sim::{Faults, GenerateParams};
use learnsync_store::model::{Area, RunState};

/// A platform with more users than one sObject Collection holds (a chunk that size goes in bulk).
fn clean(seed: u64) -> GenerateParams {
    GenerateParams {
        seed,
        scale: Some(0.1),
        users: Some(400),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

/// Settings that send every write through a Bulk ingest job.
fn bulk_settings() -> learnsync_worker::Settings {
    let mut settings = test_settings("w1");
    settings.bulk_threshold = 1;
    settings
}

/// Waits until the worker polls the state of an ingest job.
async fn polling_an_ingest_job(env: &Env) {
    for _ in 0..300 {
        let polls: u64 = env
            .salesforce
            .counters()
            .iter()
            .filter(|(endpoint, _)| {
                endpoint.starts_with("GET") && endpoint.contains("/jobs/ingest/")
            })
            .map(|(_, calls)| *calls)
            .sum();
        if polls > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no ingest job polled: {:?}", env.salesforce.counters());
}

/// Ingest jobs created, and the calls that changed an ingest job's state (a close each, an abort).
fn ingest_calls(env: &Env) -> (u64, u64) {
    let counters = env.salesforce.counters();
    let calls = |method: &str, suffix: &str| -> u64 {
        counters
            .iter()
            .filter(|(endpoint, _)| endpoint.starts_with(method) && endpoint.ends_with(suffix))
            .map(|(_, calls)| *calls)
            .sum()
    };
    (
        calls("POST", "/jobs/ingest"),
        calls("PATCH", "/jobs/ingest/{id}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_bulk_ingest_job_ends_as_a_transient_error_and_the_retry_writes_its_records() {
    let env = Env::new(clean(61)).await;
    env.salesforce.set_faults(Faults {
        stall_ingest_jobs: 1,
        ..Faults::default()
    });
    let mut settings = bulk_settings();
    settings.bulk_timeout = Duration::from_secs(2);
    let worker = env.spawn_worker(settings);
    let run = env.start(Area::Users, (None, None)).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let retried = env.run_log(run.id).await.into_iter().any(|event| {
        event.message.ends_with("job will retry")
            && event
                .fields
                .get("cause")
                .and_then(|cause| cause.as_str())
                .is_some_and(|cause| cause.contains("still in progress after 2 s"))
    });
    assert!(retried, "the stuck bulk job is a transient error");
    let (created, changed) = ingest_calls(&env);
    assert_eq!(
        changed,
        created + 1,
        "every job closed, the stuck one aborted"
    );
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_good_keys("users")
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_wait_for_a_stuck_bulk_ingest_job() {
    let env = Env::new(clean(62)).await;
    env.salesforce.set_faults(Faults {
        stall_ingest_jobs: 1000,
        ..Faults::default()
    });
    let mut settings = bulk_settings();
    settings.bulk_timeout = Duration::from_secs(600);
    settings.bulk_stop_grace = Duration::from_secs(1);
    let worker = env.spawn_worker(settings);
    let run = env.start(Area::Users, (None, None)).await;
    polling_an_ingest_job(&env).await;
    env.stop(Area::Users).await;
    let run = env.wait_final(run.id, Duration::from_secs(20)).await;
    assert_eq!(run.state, RunState::Stopped, "{run:#?}");
    assert_eq!(
        ingest_calls(&env),
        (1, 2),
        "the stuck job closed, then aborted"
    );
    worker.stop().await;
}
