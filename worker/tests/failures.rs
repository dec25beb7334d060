//! Proves how jobs fail and wait: a job that cannot succeed fails with its cause in the log and in the run, transient failures spend a bounded retry budget, a job waiting for the Docebo call budget says so and still stops promptly, a stopping run's dead jobs end stopped without re-running, malformed items and records the org cannot hold are logged, a worker waits for the schema it needs, and the Bulk API and JWT/password grants work end to end.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::{Duration, Instant};

use common::{Env, EnvOptions, sync_area, test_settings};
use learnsync_sim::{FailShare, Faults, GenerateParams, SalesforceConfig};
use learnsync_store::connections::{self, ConnectionUpdate};
use learnsync_store::model::{Area, JobState, LogLevel, RunState};

fn clean(seed: u64, scale: f64) -> GenerateParams {
    GenerateParams {
        seed,
        scale: Some(scale),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_the_job_with_the_cause() {
    let env = Env::with(
        clean(41, 0.2),
        EnvOptions {
            salesforce_secret: Some("not-the-secret".into()),
            ..EnvOptions::default()
        },
    )
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Failed, "{run:#?}");
    let job = &run.jobs[0];
    assert_eq!(job.state, JobState::Failed);
    let cause = job.error_message.clone().unwrap();
    assert!(
        cause.contains("salesforce authentication failed"),
        "{cause}"
    );
    assert!(run.error_message.unwrap().contains(&cause));
    let log = env.run_log(run.id).await;
    let first_error = log
        .iter()
        .find(|event| Some(event.sequence) == run.first_error_sequence)
        .unwrap();
    assert_eq!(first_error.error_code.as_deref(), Some("JOB_FAILED"));
    assert_eq!(first_error.fields["error"], cause.as_str());
    // Never a secret in the log.
    assert!(
        log.iter()
            .all(|event| !format!("{event:?}").contains("not-the-secret"))
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_spend_a_bounded_retry_budget() {
    let env = Env::new(clean(42, 0.2)).await;
    let mut settings = test_settings("w1");
    settings.max_retries_without_progress = 2;
    settings.retry_base = Duration::from_millis(20);
    let worker = env.spawn_worker(settings);
    env.docebo.set_faults(Faults {
        fail_share: Some(FailShare {
            status: 500,
            share: 1.0,
        }),
        ..Faults::default()
    });
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Failed, "{run:#?}");
    assert_eq!(run.jobs[0].attempt, 3);
    assert!(
        run.jobs[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("gave up after 2 retries")
    );
    let retries = env
        .run_log(run.id)
        .await
        .into_iter()
        .filter(|event| event.level == LogLevel::Warn && event.message.ends_with("will retry"))
        .count();
    assert_eq!(retries, 2);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_the_call_budget_says_so_and_stops_promptly() {
    let env = Env::new(clean(43, 1.0)).await;
    let conn = env.store.conn().await.unwrap();
    connections::update(
        &conn,
        env.connection_id,
        &ConnectionUpdate {
            docebo_calls_per_hour: Some(1),
            ..ConnectionUpdate::default()
        },
    )
    .await
    .unwrap();
    let mut settings = test_settings("w1");
    settings.page_size = 10;
    let worker = env.spawn_worker(settings);
    let run = env.start(Area::Users, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(10), "a budget wait", |run| {
        run.jobs[0].status_message == "waiting for docebo call budget"
    })
    .await;
    let asked = Instant::now();
    env.stop(Area::Users).await;
    let run = env.wait_final(run.id, Duration::from_secs(5)).await;
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(run.state, RunState::Stopped);
    // One call was in the bucket: the token request spent it (Docebo counts token requests),
    // then the wait, before any page.
    let counters = env.docebo.counters();
    assert_eq!(counters.get("POST /oauth2/token").copied(), Some(1));
    assert_eq!(counters.get("GET /manage/v1/user").copied(), None);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_runs_dead_jobs_end_stopped_without_running_again() {
    let env = Env::new(clean(44, 1.0)).await;
    let mut settings = test_settings("doomed");
    settings.page_size = 10;
    let doomed = env.spawn_worker(settings.clone());
    env.docebo.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let run = env.start(Area::Users, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(10), "progress", |run| {
        run.jobs[0].counts.written > 0
    })
    .await;
    doomed.kill();
    env.stop(Area::Users).await;
    let calls_before = env.docebo.counters().get("GET /manage/v1/user").copied();
    settings.worker_id = "reaper".into();
    let reaper = env.spawn_worker(settings);
    let run = env.wait_final(run.id, Duration::from_secs(10)).await;
    assert_eq!(run.state, RunState::Stopped, "{run:#?}");
    assert_eq!(run.jobs[0].state, JobState::Stopped);
    assert_eq!(run.jobs[0].attempt, 1, "the job ran again: {run:#?}");
    assert_eq!(
        env.docebo.counters().get("GET /manage/v1/user").copied(),
        calls_before
    );
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_items_are_logged_and_the_rest_written() {
    let env = Env::new(clean(45, 0.5)).await;
    env.docebo.set_faults(Faults {
        malformed_pages: 1,
        ..Faults::default()
    });
    let worker = env.spawn_worker(test_settings("w1"));
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    assert_eq!(run.jobs[0].counts.failed, 1);
    let errors: Vec<_> = env
        .run_log(run.id)
        .await
        .into_iter()
        .filter(|event| event.level == LogLevel::Error)
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error_code.as_deref(), Some("INVALID_KEY"));
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_keys("users")
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_jobs_go_through_the_bulk_api() {
    let env = Env::new(GenerateParams {
        seed: 46,
        ..GenerateParams::default()
    })
    .await;
    let mut settings = test_settings("w1");
    settings.bulk_threshold = 300;
    let worker = env.spawn_worker(settings);
    let users = sync_area(&env, Area::Users).await;
    let courses = sync_area(&env, Area::Courses).await;
    let enrollments = sync_area(&env, Area::Enrollments).await;
    for run in [&users, &courses, &enrollments] {
        assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    }
    let counters = env.salesforce.counters();
    let bulk_jobs: u64 = counters
        .iter()
        .filter(|(endpoint, _)| endpoint.starts_with("POST") && endpoint.ends_with("/jobs/ingest"))
        .map(|(_, calls)| *calls)
        .sum();
    assert!(bulk_jobs >= 1, "{counters:?}");
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_good_keys("users")
    );
    assert_eq!(
        env.salesforce_keys("Docebo_Course_Enrollment__c", "Enrollment_Key__c"),
        env.docebo_good_keys("course_enrollments")
    );
    let mut bad = env.docebo_bad_keys("course_enrollments");
    bad.extend(env.docebo_bad_keys("learning_plan_enrollments"));
    bad.extend(env.docebo_bad_keys("session_enrollments"));
    assert_eq!(env.error_keys(enrollments.id).await, bad);
    assert_eq!(enrollments.counts().failed, bad.len() as i64);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_and_password_grants_authenticate() {
    let env = Env::with(
        clean(47, 0.2),
        EnvOptions {
            salesforce: SalesforceConfig {
                jwt_public_key_pem: Some(include_str!("fixtures/test_rsa_public.pem").to_string()),
                ..SalesforceConfig::default()
            },
            jwt_private_key: Some(include_str!("fixtures/test_rsa_private.pem").to_string()),
            docebo_password_grant: true,
            ..EnvOptions::default()
        },
    )
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_keys("users")
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_org_is_checked_against_the_mapping_before_writing() {
    let mut schema = learnsync_sim::salesforce::Schema::default_org();
    for object in &mut schema.objects {
        if object.name == "Docebo_Course__c" {
            for field in &mut object.fields {
                if field.name == "Code__c" {
                    field.length = Some(10);
                }
            }
        }
        if object.name == "Docebo_Learning_Plan__c" {
            object.fields.retain(|field| field.name != "Published__c");
        }
    }
    let env = Env::with(
        clean(48, 0.5),
        EnvOptions {
            salesforce: SalesforceConfig {
                schema,
                ..SalesforceConfig::default()
            },
            ..EnvOptions::default()
        },
    )
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    let run = sync_area(&env, Area::Courses).await;
    assert_eq!(run.state, RunState::Failed, "{run:#?}");
    let plans = run
        .jobs
        .iter()
        .find(|job| job.kind == learnsync_store::model::JobKind::LearningPlans)
        .unwrap();
    assert_eq!(plans.state, JobState::Failed);
    assert!(
        plans
            .error_message
            .as_deref()
            .unwrap()
            .contains("Published__c"),
        "{plans:#?}"
    );
    // Codes longer than the org's field fail before they are sent, each logged.
    let too_long: std::collections::BTreeSet<String> = env
        .docebo
        .items(learnsync_sim::EntityKind::Courses)
        .iter()
        .filter(|course| course["code"].as_str().unwrap().chars().count() > 10)
        .map(|course| common::docebo_key(learnsync_sim::EntityKind::Courses, course))
        .collect();
    assert!(!too_long.is_empty());
    let log = env.run_log(run.id).await;
    for key in &too_long {
        assert!(
            log.iter()
                .any(|event| event.record_key.as_deref() == Some(key.as_str())
                    && event.error_code.as_deref() == Some("STRING_TOO_LONG")),
            "course {key} not logged"
        );
    }
    let held = env.salesforce_keys("Docebo_Course__c", "Docebo_Course_Id__c");
    assert!(held.is_disjoint(&too_long));
    assert_eq!(
        held.len() + too_long.len(),
        env.docebo_keys("courses").len()
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_the_schema_it_needs() {
    let env = Env::new(clean(49, 0.2)).await;
    let conn = env.store.conn().await.unwrap();
    // As if the server had not run the newest migration yet.
    conn.batch_execute("ALTER TABLE ledger DROP COLUMN scope")
        .await
        .unwrap();
    let worker = env.spawn_worker(test_settings("w1"));
    let run = env.start(Area::Users, (None, None)).await;
    // Nothing to poll for: the worker must stay idle, so give it a few of its poll intervals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.run(run.id).await.state, RunState::Queued);
    conn.batch_execute("ALTER TABLE ledger ADD COLUMN scope text")
        .await
        .unwrap();
    let run = env.wait_final(run.id, Duration::from_secs(20)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    worker.stop().await;
}
