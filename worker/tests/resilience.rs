//! Proves jobs survive what production throws at them: a worker killed mid-run is replaced with no record lost or duplicated, a slow worker keeps its lease, SIGTERM hands jobs back, two workers never hold one job at once, and injected faults (429/503 bursts, expired sessions, row locks, a request-limit window) still end in a complete sync.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Env, sync_area, test_settings};
use learnsync_sim::{FailNext, FailShare, Faults, GenerateParams};
use learnsync_store::model::{Area, JobState, LogLevel, RunState};

fn clean(seed: u64, scale: f64) -> GenerateParams {
    GenerateParams {
        seed,
        scale: Some(scale),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

fn assert_mirrored(env: &Env) {
    for (kind, object) in [
        ("users", "Docebo_User__c"),
        ("courses", "Docebo_Course__c"),
        ("learning_plans", "Docebo_Learning_Plan__c"),
        ("sessions", "Docebo_Session__c"),
    ] {
        let external_id = match kind {
            "users" => "Docebo_User_Id__c",
            "courses" => "Docebo_Course_Id__c",
            "learning_plans" => "Docebo_Learning_Plan_Id__c",
            _ => "Docebo_Session_Id__c",
        };
        assert_eq!(
            env.salesforce_keys(object, external_id),
            env.docebo_keys(kind),
            "{object}"
        );
    }
}

fn assert_enrollments_mirrored(env: &Env) {
    for (kind, object) in [
        ("course_enrollments", "Docebo_Course_Enrollment__c"),
        (
            "learning_plan_enrollments",
            "Docebo_Learning_Plan_Enrollment__c",
        ),
        ("session_enrollments", "Docebo_Session_Enrollment__c"),
    ] {
        assert_eq!(
            env.salesforce_keys(object, "Enrollment_Key__c"),
            env.docebo_keys(kind),
            "{object}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_nothing_is_lost_or_duplicated() {
    let env = Env::new(clean(31, 1.0)).await;
    let mut settings = test_settings("doomed");
    settings.page_size = 10;
    let doomed = env.spawn_worker(settings.clone());
    for area in [Area::Users, Area::Courses] {
        assert_eq!(sync_area(&env, area).await.state, RunState::Succeeded);
    }
    env.docebo.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let run = env.start(Area::Enrollments, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(30), "a checkpoint", |run| {
        run.jobs.iter().any(|job| job.counts.written >= 20)
    })
    .await;
    doomed.kill();
    let progress_at_kill: i64 = env.run(run.id).await.counts().written;

    settings.worker_id = "rescuer".into();
    let rescuer = env.spawn_worker(settings);
    env.docebo.clear_faults();
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert!(
        run.jobs.iter().any(|job| job.attempt >= 2),
        "no job was taken over: {run:#?}"
    );
    assert_enrollments_mirrored(&env);
    // Taken over from the checkpoint: the confirmed writes were not redone from scratch.
    let counts = run.counts();
    assert!(progress_at_kill > 0);
    assert!(
        counts.written + counts.unchanged >= env.docebo_keys("course_enrollments").len() as i64
    );
    let log = env.run_log(run.id).await;
    assert!(
        log.iter()
            .any(|event| event.message.ends_with("job resumed"))
    );
    rescuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_keeps_its_lease() {
    let env = Env::new(clean(32, 0.2)).await;
    let mut settings = test_settings("slow");
    settings.lease = Duration::from_millis(1500);
    settings.heartbeat = Duration::from_millis(200);
    // Every Docebo call takes longer than the lease: only heartbeats keep the job.
    env.docebo.set_faults(Faults {
        latency_ms: 2500,
        ..Faults::default()
    });
    let worker = env.spawn_worker(settings.clone());
    settings.worker_id = "other".into();
    let other = env.spawn_worker(settings);
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        run.jobs[0].attempt, 1,
        "the slow job was taken over: {run:#?}"
    );
    worker.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_jobs_back_and_another_worker_finishes_them() {
    let env = Env::new(clean(33, 1.0)).await;
    let mut settings = test_settings("leaving");
    settings.page_size = 10;
    let leaving = env.spawn_worker(settings.clone());
    env.docebo.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let run = env.start(Area::Users, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(30), "progress", |run| {
        run.jobs[0].counts.written > 0
    })
    .await;
    leaving.stop().await;
    let handed = env.run(run.id).await;
    assert_eq!(handed.jobs[0].state, JobState::Queued, "{handed:#?}");
    assert_eq!(handed.jobs[0].attempt, 1);
    assert!(handed.jobs[0].counts.written < env.docebo_keys("users").len() as i64);
    env.docebo.clear_faults();
    settings.worker_id = "staying".into();
    let staying = env.spawn_worker(settings);
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(run.jobs[0].attempt, 2);
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_keys("users")
    );
    // Handed back, not retried: no retry budget spent.
    assert!(
        !env.run_log(run.id)
            .await
            .iter()
            .any(|event| event.message.ends_with("will retry"))
    );
    staying.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_hold_the_same_job() {
    let env = Env::new(clean(34, 1.0)).await;
    let mut workers = Vec::new();
    for name in ["a", "b", "c"] {
        let mut settings = test_settings(name);
        settings.concurrency = 2;
        settings.page_size = 20;
        workers.push(env.spawn_worker(settings));
    }
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
        // One claim per job, and one start in the log: no job ran twice.
        assert!(run.jobs.iter().all(|job| job.attempt == 1), "{run:#?}");
        let starts: Vec<_> = env
            .run_log(run.id)
            .await
            .into_iter()
            .filter(|event| {
                event.message.ends_with("job started") || event.message.ends_with("job resumed")
            })
            .filter_map(|event| event.job_id)
            .collect();
        let unique: BTreeSet<_> = starts.iter().collect();
        assert_eq!(starts.len(), run.jobs.len());
        assert_eq!(unique.len(), run.jobs.len());
    }
    assert_mirrored(&env);
    assert_enrollments_mirrored(&env);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_return_the_same_job() {
    let env = Env::new(clean(35, 0.1)).await;
    let mut runs = Vec::new();
    for area in [Area::Users, Area::Courses] {
        runs.push(env.start(area, (None, None)).await);
    }
    let mut claims = Vec::new();
    for index in 0..8 {
        let store = env.store.clone();
        claims.push(tokio::spawn(async move {
            let mut conn = store.conn().await.unwrap();
            let tx = conn.transaction().await.unwrap();
            let jobs = learnsync_store::worker::claim(
                &tx,
                &format!("claimer-{index}"),
                learnsync_store::worker::Lease {
                    length: Duration::from_secs(30),
                    write_grace: Duration::from_secs(60),
                },
                1,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            jobs
        }));
    }
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(claim.await.unwrap().into_iter().map(|job| job.id));
    }
    let unique: BTreeSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a job was claimed twice");
    // Users (1) and courses (2 of 3: sessions waits for courses) are claimable.
    assert_eq!(claimed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_under_injected_faults_completes() {
    let env = Env::new(clean(36, 0.6)).await;
    let mut settings = test_settings("w1");
    settings.page_size = 25;
    let worker = env.spawn_worker(settings);
    env.docebo.set_faults(Faults {
        fail_next: Some(FailNext {
            status: 429,
            count: 3,
        }),
        expire_tokens_after_calls: Some(4),
        ..Faults::default()
    });
    env.salesforce.set_faults(Faults {
        lock_row_share: 0.2,
        expire_tokens_after_calls: Some(3),
        request_limit_exceeded_calls: 2,
        ..Faults::default()
    });
    let users = sync_area(&env, Area::Users).await;
    assert_eq!(users.state, RunState::Succeeded, "{users:#?}");
    env.docebo.set_faults(Faults {
        fail_next: Some(FailNext {
            status: 503,
            count: 4,
        }),
        ..Faults::default()
    });
    env.salesforce.set_faults(Faults {
        lock_row_share: 0.2,
        fail_next: Some(FailNext {
            status: 503,
            count: 2,
        }),
        request_limit_exceeded_secs: 1,
        ..Faults::default()
    });
    let courses = sync_area(&env, Area::Courses).await;
    assert_eq!(courses.state, RunState::Succeeded, "{courses:#?}");
    env.salesforce.set_faults(Faults {
        lock_row_share: 0.3,
        expire_tokens_after_calls: Some(5),
        ..Faults::default()
    });
    let enrollments = sync_area(&env, Area::Enrollments).await;
    assert_eq!(enrollments.state, RunState::Succeeded, "{enrollments:#?}");
    assert_mirrored(&env);
    assert_enrollments_mirrored(&env);

    let mut codes = BTreeSet::new();
    for run in [&users, &courses, &enrollments] {
        for event in env.run_log(run.id).await {
            if event.level == LogLevel::Warn
                && let Some(code) = event.error_code
            {
                codes.insert(code);
            }
        }
    }
    for expected in [
        "DOCEBO_RATE_LIMITED",
        "DOCEBO_OVERLOADED",
        "UNABLE_TO_LOCK_ROW",
        "REQUEST_LIMIT_EXCEEDED",
    ] {
        assert!(
            codes.contains(expected),
            "no {expected} warning in {codes:?}"
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_salesforce_cannot_lock_never_fail_their_record() {
    let env = Env::new(clean(37, 0.5)).await;
    let mut settings = test_settings("w1");
    settings.call_retry_base = Duration::from_millis(1);
    settings.retry_base = Duration::from_millis(300);
    let worker = env.spawn_worker(settings);
    // Every row locked: the re-sends run out, and the job retries later instead of failing rows.
    env.salesforce.set_faults(Faults {
        lock_row_share: 1.0,
        ..Faults::default()
    });
    let run = env.start(Area::Users, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(20), "a retry", |run| {
        run.jobs[0].status_message.starts_with("retrying:")
    })
    .await;
    env.salesforce.clear_faults();
    let run = env.wait_final(run.id, Duration::from_secs(20)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(run.jobs[0].counts.failed, 0);
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_keys("users")
    );
    let log = env.run_log(run.id).await;
    assert!(log.iter().any(|event| {
        event.message.ends_with("will retry")
            && event.fields["cause"]
                .as_str()
                .unwrap_or_default()
                .contains("could not lock")
    }));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_while_the_listing_reads_ahead_ends_the_attempt_and_loses_nothing() {
    let env = Env::new(clean(38, 0.5)).await;
    let mut settings = test_settings("w1");
    // Small pages written through collections: many chunks, so the reader runs ahead of slow
    // writes and waits with a full hand-over when a write fails.
    settings.page_size = 10;
    settings.bulk_threshold = 1_000_000;
    settings.retry_base = Duration::from_millis(200);
    let worker = env.spawn_worker(settings);
    assert_eq!(
        sync_area(&env, Area::Users).await.state,
        RunState::Succeeded
    );
    assert_eq!(
        sync_area(&env, Area::Courses).await.state,
        RunState::Succeeded
    );
    env.salesforce.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let run = env.start(Area::Enrollments, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(30), "first writes", |run| {
        run.counts().written > 0
    })
    .await;
    env.salesforce.set_faults(Faults {
        fail_share: Some(FailShare {
            status: 500,
            share: 1.0,
        }),
        ..Faults::default()
    });
    // The failing attempt ends (it would hang if the reader kept the writer waiting) and hands
    // the job back for a retry.
    env.wait_until(run.id, Duration::from_secs(30), "a retry", |run| {
        run.jobs
            .iter()
            .any(|job| job.attempt > 1 || job.state == JobState::Queued)
    })
    .await;
    env.salesforce.set_faults(Faults::default());
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_enrollments_mirrored(&env);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_records_budget_shared_by_four_jobs_still_mirrors_everything() {
    let env = Env::new(clean(39, 0.5)).await;
    let mut settings = test_settings("w1");
    // Room for six pages across the four enrollment jobs: listings hand over partial chunks and
    // wait for room instead of holding records.
    settings.page_size = 50;
    settings.records_in_flight = 300;
    settings.bulk_threshold = 200;
    settings.bulk_chunk = 1000;
    let worker = env.spawn_worker(settings);
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
        assert_eq!(run.counts().written, run.counts().read, "{run:#?}");
    }
    assert_mirrored(&env);
    assert_enrollments_mirrored(&env);
    worker.stop().await;
}
