//! Proves workers react to NOTIFY rather than to their polling: a new run is claimed, and a Stop reaches a running job, in well under the poll and heartbeat intervals.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::{Duration, Instant};

use common::{Env, test_settings};
use learnsync_sim::{Faults, GenerateParams};
use learnsync_store::model::{Area, RunState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_start_and_stop_on_notifications() {
    let env = Env::new(GenerateParams {
        seed: 51,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let mut settings = test_settings("w1");
    // Polls and heartbeats far apart: only NOTIFY can make the worker this quick.
    settings.poll_interval = Duration::from_secs(60);
    settings.heartbeat = Duration::from_secs(20);
    settings.lease = Duration::from_secs(60);
    settings.page_size = 10;
    let worker = env.spawn_worker(settings);

    let started = Instant::now();
    let run = env.start(Area::Users, (None, None)).await;
    let run = env.wait_final(run.id, Duration::from_secs(10)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Courses: sessions waits for courses; the courses job's end wakes the claim of sessions.
    let run = env.start(Area::Courses, (None, None)).await;
    let run = env.wait_final(run.id, Duration::from_secs(10)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");

    env.docebo.set_faults(Faults {
        latency_ms: 50,
        ..Faults::default()
    });
    let run = env.resynchronize(Area::Users, true).await;
    env.wait_until(run.id, Duration::from_secs(10), "progress", |run| {
        run.jobs[0].counts.written > 0
    })
    .await;
    let asked = Instant::now();
    env.stop(Area::Users).await;
    let run = env.wait_final(run.id, Duration::from_secs(5)).await;
    assert_eq!(run.state, RunState::Stopped, "{run:#?}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    worker.stop().await;
}
