//! Proves the `learnsync-worker` binary runs jobs from its environment alone and, on SIGTERM, finishes its current write, hands its job back (queued, lease cleared, attempt kept) and exits cleanly; and that it refuses a malformed `LEARNSYNC_UPSTREAM_ALLOW` at start-up.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::Duration;

use common::{Env, EnvOptions, test_settings};
use learnsync_sim::{Faults, GenerateParams};
use learnsync_store::model::{Area, JobState, RunState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_job_back_and_exits() {
    let key = [7u8; 32];
    let env = Env::with(
        GenerateParams {
            seed: 61,
            bad_records: Some(false),
            ..GenerateParams::default()
        },
        EnvOptions {
            cipher_key: Some(key),
            ..EnvOptions::default()
        },
    )
    .await;
    env.docebo.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync-worker"))
        .env_clear()
        .env("DATABASE_URL", env.store.database_url())
        .env("LEARNSYNC_SECRET_KEY", hex::encode(key))
        .env("LEARNSYNC_WORKER_ID", "binary")
        .env(
            "LEARNSYNC_UPSTREAM_ALLOW",
            learnsync_e2e::SIM_UPSTREAM_ALLOW,
        )
        .env("LEARNSYNC_WORKER_POLL_INTERVAL", "200ms")
        .env("LEARNSYNC_WORKER_PAGE_SIZE", "10")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run = env.start(Area::Users, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(20), "progress", |run| {
        run.jobs[0].counts.written > 0
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let handed = env.run(run.id).await;
    let job = &handed.jobs[0];
    assert_eq!(job.state, JobState::Queued, "{handed:#?}");
    assert_eq!(job.attempt, 1);
    assert!(job.counts.written > 0 && job.counts.written < env.docebo_keys("users").len() as i64);
    // Every confirmed write is counted: nothing half-written.
    assert_eq!(
        env.salesforce.record_count("Docebo_User__c") as i64,
        job.counts.written
    );

    env.docebo.clear_faults();
    let worker = env.spawn_worker(test_settings("in-process"));
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_keys("users")
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_malformed_upstream_setting_stops_the_binary_at_start_up() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync-worker"))
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .env("LEARNSYNC_SECRET_KEY", hex::encode([7u8; 32]))
        .env("LEARNSYNC_UPSTREAM_ALLOW", "http,10.0.0.0/33")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "LEARNSYNC_UPSTREAM_ALLOW: \"10.0.0.0/33\" is not an allowed entry: the prefix \
             length must be 0 to 32"
        ),
        "{stderr}"
    );
}
