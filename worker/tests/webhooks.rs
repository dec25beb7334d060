//! Proves realtime runs stay small: a webhook run reads only the named courses' or sessions' enrollments changed since the events, writes the change and unenrolls the announced deletion without moving the watermark; an incremental run reads only what changed since the watermark and moves it.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::Duration;

use common::{Env, sync_area, test_settings};
use learnsync_sim::{EntityKind, GenerateParams};
use learnsync_store::model::{Area, JobKind, Mode, RunState};
use learnsync_store::{areas, realtime};
use serde_json::json;

/// A platform synchronized area by area, a worker running, its enrollments area in realtime mode.
async fn realtime_enrollments(seed: u64) -> (Env, common::RunningWorker) {
    let env = Env::new(GenerateParams {
        seed,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        assert_eq!(sync_area(&env, area).await.state, RunState::Succeeded);
    }
    let conn = env.store.conn().await.unwrap();
    areas::configure(
        &conn,
        env.connection_id,
        Area::Enrollments,
        &areas::AreaSettings {
            enabled: true,
            mode: Mode::Realtime,
            interval_seconds: 3600,
            course_category_ids: Vec::new(),
            full_interval_seconds: 86_400,
        },
    )
    .await
    .unwrap();
    (env, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_run_writes_the_change_and_the_deletion() {
    let (env, worker) = realtime_enrollments(71).await;
    let conn = env.store.conn().await.unwrap();

    let items = env.docebo.items(EntityKind::CourseEnrollments);
    let changed = items
        .iter()
        .find(|item| item["enrollment_status"] != "completed")
        .unwrap()
        .clone();
    let changed_key = common::docebo_key(EntityKind::CourseEnrollments, &changed);
    let gone = items
        .iter()
        .find(|item| item["course_id"] != changed["course_id"])
        .unwrap()
        .clone();
    let gone_key = common::docebo_key(EntityKind::CourseEnrollments, &gone);
    env.docebo
        .update(
            EntityKind::CourseEnrollments,
            &changed_key,
            json!({"enrollment_status": "completed"}),
        )
        .unwrap();
    env.docebo
        .delete(EntityKind::CourseEnrollments, &gone_key)
        .unwrap();
    let fired_at = env.docebo.now().format("%Y-%m-%d %H:%M:%S").to_string();
    for (message_id, event, item) in [
        ("m1", "course.enrollment.completed", &changed),
        ("m2", "course.enrollment.deleted", &gone),
    ] {
        let body = json!({"message_id": message_id, "event": event, "payload": {
            "fired_at": fired_at, "user_id": item["user_id"], "course_id": item["course_id"]}});
        assert!(
            realtime::record_webhook(&conn, env.connection_id, message_id, event, &body)
                .await
                .unwrap()
        );
    }
    let watermark = |conn: learnsync_store::Conn| async move {
        areas::get(&conn, env.connection_id, Area::Enrollments)
            .await
            .unwrap()
            .unwrap()
            .watermark
    };
    let before = watermark(env.store.conn().await.unwrap()).await;
    assert!(before.is_some());
    let mut conn = env.store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let dispatched =
        learnsync_server::realtime::dispatch_pending(&tx, Duration::from_secs(60), 100)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    let run_id = dispatched[0].run.as_ref().unwrap().id;
    let run = env.wait_final(run_id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    // A run limited to what webhooks named did not read every change: the watermark stays.
    assert_eq!(watermark(env.store.conn().await.unwrap()).await, before);
    assert_eq!(run.jobs.len(), 1);
    assert_eq!(run.jobs[0].kind, JobKind::CourseEnrollments);
    // Only the named course, only what changed since the events (minus the overlap).
    assert_eq!(run.counts().read, 1, "{run:#?}");
    assert_eq!(run.counts().written, 1);

    let records = env
        .salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap();
    let find = |key: &str| {
        records
            .iter()
            .find(|record| record["Enrollment_Key__c"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(find(&changed_key)["Status__c"], "Completed");
    let unenrolled = find(&gone_key);
    assert_eq!(unenrolled["Status__c"], "Unenrolled");
    assert!(!unenrolled["Unenrolled_At__c"].is_null());
    let others = records
        .iter()
        .filter(|record| record["Status__c"] == "Unenrolled")
        .count();
    assert_eq!(others, 1);

    // Session rosters: Docebo names every session event "ilt"; the run reads only the named
    // session's roster and unenrolls the announced deletion, whatever the session's type.
    let sessions = env.docebo.items(EntityKind::Sessions);
    let course_of = |session_id: &serde_json::Value| {
        sessions
            .iter()
            .find(|session| session["id"] == *session_id)
            .unwrap()["course_id"]
            .clone()
    };
    let roster = env.docebo.items(EntityKind::SessionEnrollments);
    let changed = roster
        .iter()
        .find(|item| item["status"] != "completed")
        .unwrap()
        .clone();
    let changed_key = common::docebo_key(EntityKind::SessionEnrollments, &changed);
    let gone = roster
        .iter()
        .find(|item| item["session_id"] != changed["session_id"])
        .unwrap()
        .clone();
    let gone_key = common::docebo_key(EntityKind::SessionEnrollments, &gone);
    env.docebo
        .update(
            EntityKind::SessionEnrollments,
            &changed_key,
            json!({"status": "completed"}),
        )
        .unwrap();
    env.docebo
        .delete(EntityKind::SessionEnrollments, &gone_key)
        .unwrap();
    let fired_at = env.docebo.now().format("%Y-%m-%d %H:%M:%S").to_string();
    for (message_id, event, item) in [
        ("m3", "ilt.session.enrollment.updated", &changed),
        ("m4", "ilt.session.enrollment.deleted", &gone),
    ] {
        let body = json!({"message_id": message_id, "event": event, "payload": {
            "fired_at": fired_at, "user_id": item["user_id"], "session_id": item["session_id"],
            "course_id": course_of(&item["session_id"])}});
        realtime::record_webhook(&conn, env.connection_id, message_id, event, &body)
            .await
            .unwrap();
    }
    let tx = conn.transaction().await.unwrap();
    let dispatched =
        learnsync_server::realtime::dispatch_pending(&tx, Duration::from_secs(60), 100)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    let run = env
        .wait_final(
            dispatched[0].run.as_ref().unwrap().id,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(run.counts().read, 1, "{run:#?}");
    let records = env
        .salesforce
        .records("Docebo_Session_Enrollment__c")
        .unwrap();
    let find = |key: &str| {
        records
            .iter()
            .find(|record| record["Enrollment_Key__c"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(find(&changed_key)["Status__c"], "Completed");
    assert_eq!(find(&gone_key)["Status__c"], "Unenrolled");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_run_reads_only_what_changed_since_the_watermark() {
    let env = Env::new(GenerateParams {
        seed: 72,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    let first = sync_area(&env, Area::Users).await;
    assert_eq!(first.state, RunState::Succeeded);
    let key = env.docebo_keys("users").into_iter().nth(5).unwrap();
    env.docebo
        .update(EntityKind::Users, &key, json!({"first_name": "Renamed"}))
        .unwrap();

    // What the realtime scheduler creates: an incremental run from the watermark minus an overlap.
    let mut conn = env.store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let config = areas::lock(&tx, env.connection_id, Area::Users)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config.watermark, Some(first.create_time));
    let request = learnsync_store::runs::RunRequest::incremental(
        config.watermark,
        chrono::Duration::seconds(60),
    );
    let run = learnsync_store::runs::create(&tx, env.connection_id, Area::Users, &request)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(run.counts().read, 1, "{run:#?}");
    assert_eq!(run.counts().written, 1);
    let renamed = env
        .salesforce
        .records("Docebo_User__c")
        .unwrap()
        .into_iter()
        .find(|record| record["Docebo_User_Id__c"] == key.as_str())
        .unwrap();
    assert_eq!(renamed["First_Name__c"], "Renamed");
    let config = areas::get(&conn, env.connection_id, Area::Users)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config.watermark, Some(run.create_time));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_deletion_does_not_unenroll_an_enrollment_created_again_since() {
    let (env, worker) = realtime_enrollments(73).await;
    let conn = env.store.conn().await.unwrap();
    // The learner is unenrolled in Docebo and enrolled again a minute later; the deletion's
    // webhook arrives only after a run wrote the new enrollment.
    let item = env.docebo.items(EntityKind::CourseEnrollments)[0].clone();
    let key = common::docebo_key(EntityKind::CourseEnrollments, &item);
    env.docebo
        .delete(EntityKind::CourseEnrollments, &key)
        .unwrap();
    let deleted_at = env.docebo.now().format("%Y-%m-%d %H:%M:%S").to_string();
    env.docebo.set_clock_offset(120);
    env.docebo
        .create(
            EntityKind::CourseEnrollments,
            json!({"user_id": item["user_id"], "course_id": item["course_id"],
                "enrollment_status": "subscribed"}),
        )
        .unwrap();
    let again = env.resynchronize(Area::Enrollments, false).await;
    let again = env.wait_final(again.id, Duration::from_secs(60)).await;
    assert_eq!(again.state, RunState::Succeeded, "{again:#?}");
    let status = |env: &Env| {
        env.salesforce
            .records("Docebo_Course_Enrollment__c")
            .unwrap()
            .into_iter()
            .find(|record| record["Enrollment_Key__c"] == key.as_str())
            .unwrap()["Status__c"]
            .clone()
    };
    assert_eq!(status(&env), "Subscribed");

    let body = json!({"message_id": "late", "event": "course.enrollment.deleted", "payload": {
        "fired_at": deleted_at, "user_id": item["user_id"], "course_id": item["course_id"]}});
    assert!(
        realtime::record_webhook(
            &conn,
            env.connection_id,
            "late",
            "course.enrollment.deleted",
            &body
        )
        .await
        .unwrap()
    );
    let mut conn = env.store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let dispatched =
        learnsync_server::realtime::dispatch_pending(&tx, Duration::from_secs(60), 100)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    let run_id = dispatched[0].run.as_ref().unwrap().id;
    let run = env.wait_final(run_id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    // The deletion is older than the enrollment Salesforce holds: it stays.
    assert_eq!(run.counts().unenrolled, 0, "{run:#?}");
    assert_eq!(status(&env), "Subscribed");
    worker.stop().await;
}
