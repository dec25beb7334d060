//! Proves the run lifecycle as users see it: a timeframe limits what is written, Stop ends every job within seconds, Resynchronize starts from scratch, the courses area's category filter limits courses and their sessions, and unenrollments are tracked only from the first completed enrollment sync on (marked, or deleted by policy).
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeZone, Utc};
use common::{Env, EnvOptions, sync_area, test_settings};
use learnsync_sim::{EntityKind, Faults, GenerateParams};
use learnsync_store::model::{Area, JobState, RunState, UnenrollmentPolicy};

fn docebo_time(text: &str) -> chrono::DateTime<Utc> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeframe_writes_only_that_timeframe() {
    let env = Env::new(GenerateParams {
        seed: 21,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    let start = Utc.with_ymd_and_hms(2023, 9, 1, 0, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let expected: BTreeSet<String> = env
        .docebo
        .items(EntityKind::Users)
        .iter()
        .filter(|user| {
            let updated = docebo_time(user["last_update"].as_str().unwrap());
            updated >= start && updated < end
        })
        .map(|user| common::docebo_key(EntityKind::Users, user))
        .collect();
    assert!(!expected.is_empty() && expected.len() < env.docebo_keys("users").len());
    let run = env.start(Area::Users, (Some(start), Some(end))).await;
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        expected
    );
    assert_eq!(run.counts().read, expected.len() as i64);
    assert_eq!(run.counts().written, expected.len() as i64);
    // A run limited to a timeframe did not read every change: no watermark.
    let conn = env.store.conn().await.unwrap();
    let config = learnsync_store::areas::get(&conn, env.connection_id, Area::Users)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config.watermark, None);
    assert!(config.first_success_time.is_some());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_every_job_promptly_and_resynchronize_starts_from_scratch() {
    let env = Env::new(GenerateParams {
        seed: 22,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let mut settings = test_settings("w1");
    settings.page_size = 10;
    let worker = env.spawn_worker(settings);
    for area in [Area::Users, Area::Courses] {
        assert_eq!(sync_area(&env, area).await.state, RunState::Succeeded);
    }
    // Slow Docebo down so the four enrollment jobs are mid-way when Stop comes.
    env.docebo.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let run = env.start(Area::Enrollments, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(30), "writes", |run| {
        run.jobs.iter().filter(|job| job.counts.written > 0).count() >= 2
    })
    .await;
    let asked = Instant::now();
    env.stop(Area::Enrollments).await;
    let stopped = env.wait_final(run.id, Duration::from_secs(10)).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        asked.elapsed()
    );
    assert_eq!(stopped.state, RunState::Stopped, "{stopped:#?}");
    assert!(
        stopped
            .jobs
            .iter()
            .all(|job| job.state == JobState::Stopped),
        "{stopped:#?}"
    );
    // Nothing half-written: Salesforce holds exactly the writes the jobs confirmed.
    let course_job = stopped
        .jobs
        .iter()
        .find(|job| job.kind == learnsync_store::model::JobKind::CourseEnrollments)
        .unwrap();
    assert_eq!(
        env.salesforce.record_count("Docebo_Course_Enrollment__c") as i64,
        course_job.counts.written
    );
    assert!(course_job.counts.written < env.docebo_keys("course_enrollments").len() as i64);
    // Counts that can be: no job says it wrote more than it read.
    for job in &stopped.jobs {
        let counts = job.counts;
        assert!(
            counts.written + counts.unchanged + counts.failed <= counts.read,
            "{job:#?}"
        );
    }

    // Resynchronize: a new run from scratch, reading everything again.
    env.docebo.clear_faults();
    let again = env.resynchronize(Area::Enrollments, false).await;
    assert_ne!(again.id, run.id);
    let again = env.wait_final(again.id, Duration::from_secs(60)).await;
    assert_eq!(again.state, RunState::Succeeded, "{again:#?}");
    assert!(again.jobs.iter().all(|job| job.attempt == 1));
    let total = env.docebo_keys("course_enrollments").len()
        + env.docebo_keys("learning_plan_enrollments").len()
        + env.docebo_keys("session_enrollments").len();
    assert_eq!(again.counts().read, total as i64);
    assert_eq!(
        env.salesforce_keys("Docebo_Course_Enrollment__c", "Enrollment_Key__c"),
        env.docebo_keys("course_enrollments")
    );
    worker.stop().await;
}

/// Reads `(Status__c, Unenrolled_At__c)` of a course enrollment in Salesforce.
fn enrollment_status(env: &Env, key: &str) -> Option<(String, bool)> {
    env.salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap()
        .into_iter()
        .find(|record| record["Enrollment_Key__c"] == key)
        .map(|record| {
            (
                record["Status__c"].as_str().unwrap_or_default().to_string(),
                !record["Unenrolled_At__c"].is_null(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenrollments_are_tracked_from_the_first_completed_sync_on() {
    let env = Env::new(GenerateParams {
        seed: 23,
        scale: Some(0.5),
        courses: Some(20),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    for area in [Area::Users, Area::Courses] {
        assert_eq!(sync_area(&env, area).await.state, RunState::Succeeded);
    }
    let keys: Vec<String> = env.docebo_keys("course_enrollments").into_iter().collect();
    let (before_first, after_first, outside_timeframe) = (&keys[0], &keys[1], &keys[2]);

    // Deleted before the first enrollment sync: as if it never existed.
    env.docebo
        .delete(EntityKind::CourseEnrollments, before_first)
        .unwrap();
    let first = sync_area(&env, Area::Enrollments).await;
    assert_eq!(first.state, RunState::Succeeded, "{first:#?}");
    assert_eq!(enrollment_status(&env, before_first), None);
    let unenrolled = env
        .salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap()
        .iter()
        .filter(|record| record["Status__c"] == "Unenrolled")
        .count();
    assert_eq!(unenrolled, 0);

    // Deleted after it: a full resynchronization marks it unenrolled.
    env.docebo
        .delete(EntityKind::CourseEnrollments, after_first)
        .unwrap();
    // Two jobs (webinar, ILT) write session enrollments: each compares only its own records.
    let session_key = env
        .docebo_keys("session_enrollments")
        .into_iter()
        .nth(3)
        .unwrap();
    env.docebo
        .delete(EntityKind::SessionEnrollments, &session_key)
        .unwrap();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        enrollment_status(&env, after_first),
        Some(("Unenrolled".into(), true))
    );
    assert_eq!(enrollment_status(&env, before_first), None);
    let unenrolled_sessions: Vec<String> = env
        .salesforce
        .records("Docebo_Session_Enrollment__c")
        .unwrap()
        .into_iter()
        .filter(|record| record["Status__c"] == "Unenrolled")
        .map(|record| record["Enrollment_Key__c"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unenrolled_sessions, vec![session_key.clone()]);
    assert_eq!(run.counts().written, 0, "{run:#?}");
    let held = env.salesforce.record_count("Docebo_Course_Enrollment__c");
    assert_eq!(held, keys.len() - 1);

    // A run limited to a timeframe does not unenroll what lies outside it.
    env.docebo
        .delete(EntityKind::CourseEnrollments, outside_timeframe)
        .unwrap();
    let mut conn = env.store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let limited = learnsync_store::runs::resynchronize(
        &tx,
        env.connection_id,
        Area::Enrollments,
        (
            Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()),
            None,
        ),
        learnsync_store::runs::ResyncOptions::default(),
        None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let limited = env.wait_final(limited.id, Duration::from_secs(30)).await;
    assert_eq!(limited.state, RunState::Succeeded, "{limited:#?}");
    assert_ne!(
        enrollment_status(&env, outside_timeframe).unwrap().0,
        "Unenrolled"
    );

    // The next full run catches it; the earlier unenrollment is not written again.
    env.salesforce.clear_counters();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        enrollment_status(&env, outside_timeframe),
        Some(("Unenrolled".into(), true))
    );
    assert_eq!(
        enrollment_status(&env, after_first),
        Some(("Unenrolled".into(), true))
    );
    assert_eq!(run.counts().written, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_policy_deletes_unenrolled_records() {
    let env = Env::with(
        GenerateParams {
            seed: 24,
            scale: Some(0.3),
            bad_records: Some(false),
            ..GenerateParams::default()
        },
        EnvOptions {
            policy: UnenrollmentPolicy::Delete,
            ..EnvOptions::default()
        },
    )
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        assert_eq!(sync_area(&env, area).await.state, RunState::Succeeded);
    }
    let key = env
        .docebo_keys("learning_plan_enrollments")
        .into_iter()
        .next()
        .unwrap();
    env.docebo
        .delete(EntityKind::LearningPlanEnrollments, &key)
        .unwrap();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_Learning_Plan_Enrollment__c", "Enrollment_Key__c"),
        env.docebo_keys("learning_plan_enrollments")
    );
    let conn = env.store.conn().await.unwrap();
    let imported = learnsync_store::runs::records_imported(&conn, env.connection_id)
        .await
        .unwrap();
    let held = env.salesforce.record_count("Docebo_Course_Enrollment__c")
        + env
            .salesforce
            .record_count("Docebo_Learning_Plan_Enrollment__c")
        + env.salesforce.record_count("Docebo_Session_Enrollment__c");
    assert_eq!(imported[&Area::Enrollments], held as i64);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_course_category_filter_limits_courses_and_their_sessions() {
    let env = Env::new(GenerateParams {
        seed: 25,
        scale: Some(0.2),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    for (course, category) in [(7001, 7), (7002, 8)] {
        env.docebo
            .create(
                EntityKind::Courses,
                serde_json::json!({"id_course": course, "code": format!("CAT-{course}"),
                    "name": format!("Course {course}"), "course_type": "classroom",
                    "category": {"id": category, "name": format!("Category {category}")}}),
            )
            .unwrap();
        env.docebo
            .create(
                EntityKind::Sessions,
                serde_json::json!({"id": course + 100, "course_id": course,
                    "name": format!("Session of {course}"), "start_date": "2024-05-01 09:00:00",
                    "end_date": "2024-05-01 12:00:00"}),
            )
            .unwrap();
    }
    let conn = env.store.conn().await.unwrap();
    learnsync_store::areas::configure(
        &conn,
        env.connection_id,
        Area::Courses,
        &learnsync_store::areas::AreaSettings {
            enabled: true,
            mode: learnsync_store::model::Mode::Manual,
            interval_seconds: 900,
            course_category_ids: vec![7],
            full_interval_seconds: 86_400,
        },
    )
    .await
    .unwrap();
    let worker = env.spawn_worker(test_settings("w1"));
    let run = sync_area(&env, Area::Courses).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_Course__c", "Docebo_Course_Id__c"),
        BTreeSet::from(["7001".to_string()])
    );
    assert_eq!(
        env.salesforce_keys("Docebo_Session__c", "Docebo_Session_Id__c"),
        BTreeSet::from(["7101".to_string()])
    );
    // Learning plans are not courses: the filter leaves them alone.
    assert_eq!(
        env.salesforce_keys("Docebo_Learning_Plan__c", "Docebo_Learning_Plan_Id__c"),
        env.docebo_keys("learning_plans")
    );
    worker.stop().await;
}
