//! Proves that Salesforce stays what Docebo says, end to end on the simulators: records an admin
//! deleted or edited in Salesforce are put back by a Resynchronize (read in bulk, counted as
//! repaired, and GetStatus's count follows what Salesforce holds); a check run reports what a
//! synchronization would create, update, repair and unenroll, and writes nothing; unenrollments
//! above the connection's guard are held until a Resynchronize confirms them.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Env, sync_area, test_settings};
use learnsync_sim::{EntityKind, GenerateParams};
use learnsync_store::model::{Area, JobKind, Run, RunState, UnenrollmentGuard};
use learnsync_store::runs::ResyncOptions;
use serde_json::{Value, json};

const ENROLLMENTS: &str = "Docebo_Course_Enrollment__c";
const KEY: &str = "Enrollment_Key__c";

/// Every course enrollment Salesforce holds, by key (each record's fields, without its id).
fn held(env: &Env) -> BTreeMap<String, Value> {
    env.salesforce
        .records(ENROLLMENTS)
        .unwrap()
        .into_iter()
        .map(|mut record| {
            let key = record[KEY].as_str().unwrap().to_string();
            if let Some(map) = record.as_object_mut() {
                map.remove("LastModifiedDate");
                map.remove("SystemModstamp");
            }
            (key, record)
        })
        .collect()
}

/// An admin deletes `delete` course enrollments and edits `edit` others in Salesforce, through
/// its ordinary REST API (someone else's changes); returns the keys deleted and edited.
async fn admin_changes(env: &Env, delete: usize, edit: usize) -> (Vec<String>, Vec<String>) {
    let records = env.salesforce.records(ENROLLMENTS).unwrap();
    let http = reqwest::Client::new();
    let token = env.salesforce.issue_token();
    let base = format!("{}/services/data/v62.0", env.salesforce.base_url());
    let ids: Vec<&str> = records[..delete]
        .iter()
        .map(|record| record["Id"].as_str().unwrap())
        .collect();
    let deleted = http
        .delete(format!("{base}/composite/sobjects?ids={}", ids.join(",")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{:?}", deleted.text().await);
    for record in &records[delete..delete + edit] {
        let id = record["Id"].as_str().unwrap();
        let edited = http
            .patch(format!("{base}/sobjects/{ENROLLMENTS}/{id}"))
            .bearer_auth(&token)
            .json(&json!({"Name": "edited by an admin"}))
            .send()
            .await
            .unwrap();
        assert!(edited.status().is_success(), "{:?}", edited.text().await);
    }
    let keys = |records: &[Value]| -> Vec<String> {
        records
            .iter()
            .map(|record| record[KEY].as_str().unwrap().to_string())
            .collect()
    };
    (
        keys(&records[..delete]),
        keys(&records[delete..delete + edit]),
    )
}

fn course_job(run: &Run) -> &learnsync_store::model::Job {
    run.jobs
        .iter()
        .find(|job| job.kind == JobKind::CourseEnrollments)
        .unwrap()
}

/// A platform synchronized area by area, with a worker running.
async fn synced(seed: u64) -> (Env, common::RunningWorker) {
    let env = Env::new(GenerateParams {
        seed,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    }
    (env, worker)
}

async fn records_imported(env: &Env) -> i64 {
    let conn = env.store.conn().await.unwrap();
    let status = learnsync_store::runs::records_imported(&conn, env.connection_id)
        .await
        .unwrap();
    status.get(&Area::Enrollments).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resynchronize_puts_back_what_an_admin_deleted_or_edited() {
    let (env, worker) = synced(41).await;
    let before = held(&env);
    assert!(before.len() > 60, "{} enrollments", before.len());
    let imported = records_imported(&env).await;
    let (deleted, edited) = admin_changes(&env, 25, 25).await;
    assert_eq!(held(&env).len(), before.len() - 25);
    env.salesforce.clear_counters();

    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    // Salesforce holds again exactly what it held: the deleted records re-created, the edited
    // ones restored, nothing else touched.
    let after = held(&env);
    assert_eq!(after.len(), before.len());
    for key in deleted.iter().chain(&edited) {
        let (was, is) = (&before[key], &after[key]);
        assert_eq!(was["Name"], is["Name"], "{key}");
        assert_eq!(was["Status__c"], is["Status__c"], "{key}");
    }
    let job = course_job(&run);
    assert_eq!(job.counts.repaired, 50, "{job:#?}");
    assert_eq!(job.counts.written, 50, "{job:#?}");
    assert_eq!(job.counts.created, 25, "{job:#?}");
    assert_eq!(
        job.counts.written + job.counts.unchanged + job.counts.failed,
        job.counts.read,
        "{job:#?}"
    );
    assert_eq!(records_imported(&env).await, imported);
    // The log names the drift and the first keys.
    let log = env.run_log(run.id).await;
    let drift = log
        .iter()
        .find(|event| {
            event.error_code.as_deref() == Some("SALESFORCE_DRIFT")
                && event.fields["object"] == ENROLLMENTS
        })
        .expect("a drift warning");
    assert_eq!(drift.fields["missing"], 25);
    assert_eq!(drift.fields["changed"], 25);
    assert!(
        drift.fields["first_missing"]
            .as_str()
            .unwrap()
            .contains(deleted.iter().min().unwrap().as_str()),
        "{drift:#?}"
    );
    // Reading the object back cost a handful of calls (one query job), not one per record.
    let calls = env.salesforce.counters();
    let query_calls: u64 = calls
        .iter()
        .filter(|(endpoint, _)| endpoint.contains("jobs/query"))
        .map(|(_, count)| count)
        .sum();
    assert!(
        (3..=40).contains(&query_calls),
        "{query_calls} bulk query calls for 4 jobs: {calls:#?}"
    );

    // Nothing drifted since: the next Resynchronize repairs and writes nothing.
    let again = env.resynchronize(Area::Enrollments, false).await;
    let again = env.wait_final(again.id, Duration::from_secs(60)).await;
    assert_eq!(again.counts().repaired, 0, "{again:#?}");
    assert_eq!(again.counts().written, 0, "{again:#?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_reports_what_a_synchronization_would_do_and_writes_nothing() {
    let (env, worker) = synced(42).await;
    // An admin changes Salesforce, and Docebo changes (one enrollment gone, one changed) apart
    // from those.
    let (deleted, edited) = admin_changes(&env, 3, 2).await;
    let untouched: Vec<String> = env
        .docebo
        .items(EntityKind::CourseEnrollments)
        .iter()
        .map(|item| common::docebo_key(EntityKind::CourseEnrollments, item))
        .filter(|key| !deleted.contains(key) && !edited.contains(key))
        .collect();
    let (gone, changed) = (untouched[0].clone(), untouched[1].clone());
    env.docebo
        .delete(EntityKind::CourseEnrollments, &gone)
        .unwrap();
    env.docebo
        .update(
            EntityKind::CourseEnrollments,
            &changed,
            json!({"enrollment_score": 12.5}),
        )
        .unwrap();
    let before = held(&env);
    let status_before = {
        let conn = env.store.conn().await.unwrap();
        learnsync_store::areas::get(&conn, env.connection_id, Area::Enrollments)
            .await
            .unwrap()
            .unwrap()
    };

    let options = ResyncOptions {
        check_only: true,
        ..ResyncOptions::default()
    };
    let run = env.resynchronize_with(Area::Enrollments, options).await;
    assert!(run.check_only);
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    // Nothing written.
    assert_eq!(held(&env), before);
    let job = course_job(&run);
    assert_eq!(job.counts.repaired, 5, "{job:#?}");
    // The 5 repairs and the Docebo change would be written; the 3 deleted would be created.
    assert_eq!(job.counts.written, 6, "{job:#?}");
    assert_eq!(job.counts.created, 3, "{job:#?}");
    assert_eq!(job.counts.unenrolled, 1, "{job:#?}");
    // The log names the records with the fields that differ.
    let log = env.run_log(run.id).await;
    let would: Vec<_> = log
        .iter()
        .filter(|event| {
            event
                .message
                .starts_with("check: a synchronization would write")
        })
        .collect();
    assert_eq!(would.len() as i64, job.counts.written, "{would:#?}");
    let edited_event = would
        .iter()
        .find(|event| event.record_key.as_deref() == Some(edited[0].as_str()))
        .expect("the edited record is named");
    assert_eq!(edited_event.fields["action"], "update");
    assert_eq!(edited_event.fields["fields"], "Name");
    let unenroll_event = log
        .iter()
        .find(|event| {
            event
                .message
                .starts_with("check: a synchronization would unenroll")
        })
        .expect("the unenrollment is named");
    assert_eq!(unenroll_event.fields["first"], gone.as_str());
    // A check is not a synchronization: the area's last success and watermark stay.
    let conn = env.store.conn().await.unwrap();
    let status_after = learnsync_store::areas::get(&conn, env.connection_id, Area::Enrollments)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status_after.last_success_time,
        status_before.last_success_time
    );
    assert_eq!(status_after.watermark, status_before.watermark);

    // The synchronization then does what the check said.
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    let done = course_job(&run);
    assert_eq!(done.counts.repaired, job.counts.repaired, "{done:#?}");
    assert_eq!(done.counts.written, job.counts.written, "{done:#?}");
    assert_eq!(done.counts.created, job.counts.created, "{done:#?}");
    assert_eq!(done.counts.unenrolled, job.counts.unenrolled, "{done:#?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenrollments_above_the_guard_wait_for_a_confirmation() {
    let (env, worker) = synced(43).await;
    {
        let conn = env.store.conn().await.unwrap();
        learnsync_store::connections::update(
            &conn,
            env.connection_id,
            &learnsync_store::connections::ConnectionUpdate {
                unenrollment_guard: Some(UnenrollmentGuard {
                    max_percent: 10,
                    min_records: 5,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    // A third of the course enrollments disappear from Docebo at once.
    let enrollments = env.docebo.items(EntityKind::CourseEnrollments);
    let gone: Vec<String> = enrollments
        .iter()
        .step_by(3)
        .map(|item| common::docebo_key(EntityKind::CourseEnrollments, item))
        .collect();
    assert!(gone.len() > 5 && gone.len() * 10 > enrollments.len());
    for key in &gone {
        env.docebo
            .delete(EntityKind::CourseEnrollments, key)
            .unwrap();
    }
    let unenrolled = |env: &Env| {
        held(env)
            .values()
            .filter(|record| record["Status__c"] == "Unenrolled")
            .count()
    };

    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(course_job(&run).counts.unenrolled, 0);
    assert_eq!(unenrolled(&env), 0);
    let log = env.run_log(run.id).await;
    let held_event = log
        .iter()
        .find(|event| event.error_code.as_deref() == Some("UNENROLLMENTS_HELD"))
        .expect("a warning says the unenrollments are held");
    assert_eq!(held_event.fields["unenrollments"], gone.len() as i64);
    assert!(held_event.message.contains(&gone.len().to_string()));

    let options = ResyncOptions {
        confirm_unenrollments: true,
        ..ResyncOptions::default()
    };
    let run = env.resynchronize_with(Area::Enrollments, options).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(course_job(&run).counts.unenrolled, gone.len() as i64);
    assert_eq!(unenrolled(&env), gone.len());
    worker.stop().await;
}

async fn watermark(env: &Env, area: Area) -> Option<chrono::DateTime<chrono::Utc>> {
    let conn = env.store.conn().await.unwrap();
    learnsync_store::areas::get(&conn, env.connection_id, area)
        .await
        .unwrap()
        .unwrap()
        .watermark
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_parent_was_missing_is_tried_again_by_the_next_incremental_runs() {
    let (env, worker) = synced(44).await;
    // A learner who joined after the users area ran, enrolled at once: the enrollment's parent
    // is not in Salesforce yet.
    env.docebo
        .create(
            EntityKind::Users,
            json!({"user_id": 990001, "username": "late", "email": "late@example.com",
                "first_name": "Late", "last_name": "Comer", "status": "1"}),
        )
        .unwrap();
    let course = env.docebo.items(EntityKind::Courses)[0]["id_course"]
        .as_i64()
        .unwrap();
    env.docebo
        .create(
            EntityKind::CourseEnrollments,
            json!({"user_id": 990001, "course_id": course, "enrollment_status": "subscribed"}),
        )
        .unwrap();
    let key = format!("990001-{course}");
    // Docebo's change times have whole seconds: the next runs' watermark is a second past it,
    // so that they do not list it again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let run = common::incremental(&env, Area::Enrollments).await;
    assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    assert_eq!(course_job(&run).counts.failed, 1, "{run:#?}");
    let log = env.run_log(run.id).await;
    let failure = log
        .iter()
        .find(|event| event.record_key.as_deref() == Some(key.as_str()))
        .expect("the failure is logged");
    assert_eq!(failure.fields["retry"], "next run", "{failure:#?}");
    // The record is kept with what it would write, so the watermark moves on: the next
    // incremental runs read Docebo only from there, however long the parent takes.
    assert_eq!(
        watermark(&env, Area::Enrollments).await,
        Some(run.create_time)
    );
    // The parent still missing, the next incremental run tries it again and keeps it.
    let run = common::incremental(&env, Area::Enrollments).await;
    assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    assert_eq!(course_job(&run).counts.failed, 1, "{run:#?}");
    assert_eq!(course_job(&run).counts.read, 0, "{run:#?}");

    // Its parent arrives; the next incremental run (from the watermark, no overlap) writes it,
    // from what it kept: it read nothing of it from Docebo.
    let users = env.resynchronize(Area::Users, false).await;
    assert_eq!(
        env.wait_final(users.id, Duration::from_secs(60))
            .await
            .state,
        RunState::Succeeded
    );
    let run = common::incremental(&env, Area::Enrollments).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(course_job(&run).counts.written, 1, "{run:#?}");
    assert_eq!(course_job(&run).counts.read, 0, "{run:#?}");
    assert!(env.salesforce_keys(ENROLLMENTS, KEY).contains(&key));
    // Nothing is left to read again: the watermark moves on.
    assert_eq!(
        watermark(&env, Area::Enrollments).await,
        Some(run.create_time)
    );
    worker.stop().await;
}
