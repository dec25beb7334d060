//! Proves realtime replication end to end (real Postgres, servers, workers, simulators over HTTP):
//! a Docebo change reaches Salesforce through the schedule and, within seconds, through a webhook;
//! a webhook deletion unenrolls at once; a deletion no webhook announced is found by the full
//! comparison; several servers create one run per tick, skip ticks while a run is active, and catch
//! up once after downtime; a replayed webhook changes nothing; a wrong secret is refused and
//! recorded nowhere.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_client::pb;
use learnsync_e2e::{TestServer, TestSystem, create_sample, eventually, manual};
use learnsync_sim::{EntityKind, GenerateParams};
use learnsync_store::model::{Area, JobState};
use serde_json::{Value, json};
use uuid::Uuid;

fn small_platform() -> GenerateParams {
    GenerateParams {
        seed: 11,
        users: Some(30),
        courses: Some(8),
        learning_plans: Some(3),
        sessions_per_course: Some(2),
        course_enrollments: Some(120),
        learning_plan_enrollments: Some(20),
        session_enrollments: Some(30),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

fn realtime(area: pb::Area, interval_seconds: i64, full_seconds: i64) -> pb::AreaConfig {
    pb::AreaConfig {
        area: area as i32,
        enabled: true,
        mode: pb::Mode::Realtime as i32,
        interval: Some(prost_types::Duration {
            seconds: interval_seconds,
            nanos: 0,
        }),
        full_comparison_interval: Some(prost_types::Duration {
            seconds: full_seconds,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Users and courses synchronized once, then enrollments configured as given and synchronized once.
async fn enrollments_synchronized(system: &TestSystem, enrollments: pb::AreaConfig) {
    for area in [pb::Area::Users, pb::Area::Courses] {
        let run = system.first_sync(manual(area)).await.unwrap();
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    }
    let run = system.first_sync(enrollments).await.unwrap();
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
}

fn record<'a>(records: &'a [Value], field: &str, key: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r.get(field).and_then(Value::as_str) == Some(key))
}

async fn runs_by(system: &TestSystem, trigger: pb::Trigger) -> Vec<pb::Run> {
    let mut client = system.client().await.unwrap();
    client
        .list_runs(pb::ListRunsRequest {
            connection_id: system.connection_id.clone(),
            area: 0,
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .runs
        .into_iter()
        .filter(|run| run.trigger == trigger as i32)
        .collect()
}

#[tokio::test]
async fn a_change_reaches_salesforce_through_the_schedule() {
    let system = TestSystem::start(&small_platform(), 1, |_| {})
        .await
        .unwrap();
    let run = system
        .first_sync(realtime(pb::Area::Users, 1, 3600))
        .await
        .unwrap();
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    let users = system.salesforce.records("Docebo_User__c").unwrap();
    let user_id = users[0]["Docebo_User_Id__c"].as_str().unwrap().to_string();
    system
        .docebo
        .update(
            EntityKind::Users,
            &user_id,
            json!({"first_name": "Scheduled"}),
        )
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the change to reach salesforce",
        || async {
            let users = system.salesforce.records("Docebo_User__c")?;
            Ok(record(&users, "Docebo_User_Id__c", &user_id)
                .filter(|u| u["First_Name__c"] == "Scheduled")
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
    let scheduled = runs_by(&system, pb::Trigger::Schedule).await;
    assert!(!scheduled.is_empty());
    assert!(
        scheduled.iter().all(|run| !run.full),
        "scheduled runs are incremental"
    );
    let mut client = system.client().await.unwrap();
    let status = client
        .get_status(&system.connection_id, &[pb::Area::Users])
        .await
        .unwrap();
    assert!(status.areas[0].next_run_time.is_some());
    assert!(status.areas[0].next_full_comparison_time.is_some());
    system.stop().await.unwrap();
}

#[tokio::test]
async fn servers_side_by_side_start_one_run_per_tick_and_catch_up_once() {
    let first = TestServer::start().await.unwrap();
    let second = TestServer::start_on(&first.database_url, first.cipher.clone())
        .await
        .unwrap();
    let mut client = first.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    let connection = Uuid::parse_str(&id).unwrap();
    client
        .configure(&id, realtime(pb::Area::Users, 1, 3600))
        .await
        .unwrap();
    let run = client.start(&id, pb::Area::Users, None).await.unwrap();
    let conn = first.store.conn().await.unwrap();
    let run_id = Uuid::parse_str(&run.id).unwrap();
    learnsync_store::testing::finish_jobs_as_worker(&conn, run_id, JobState::Succeeded)
        .await
        .unwrap();

    let scheduled = |client: &learnsync_client::Client| {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let runs = client
                .list_runs(pb::ListRunsRequest {
                    connection_id: id,
                    area: 0,
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .runs;
            runs.into_iter()
                .filter(|r| r.trigger == pb::Trigger::Schedule as i32)
                .collect::<Vec<_>>()
        }
    };
    // No worker: the first scheduled run stays queued, and the ticks after it are skipped.
    let watcher = &client;
    let one = eventually(Duration::from_secs(10), "a scheduled run", || async move {
        let runs = scheduled(watcher).await;
        Ok((!runs.is_empty()).then_some(runs))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(scheduled(&client).await.len(), 1, "{one:?}");
    let skipped = learnsync_store::logs::read(
        &conn,
        &learnsync_store::logs::LogFilter {
            connection_id: connection,
            run_id: None,
            job_id: None,
            min_level: None,
        },
        1,
        1000,
    )
    .await
    .unwrap()
    .into_iter()
    .filter(|e| e.message == "scheduled users run skipped: a run is still active")
    .count();
    assert!(skipped >= 1, "ticks that find a run active are skipped");

    // Down for an hour: one run when the servers are back, not a run per missed tick.
    let database_url = first.database_url.clone();
    let cipher = first.cipher.clone();
    second.stop().await.unwrap();
    first.stop().await.unwrap();
    let queued = Uuid::parse_str(&one[0].id).unwrap();
    learnsync_store::testing::finish_jobs_as_worker(&conn, queued, JobState::Succeeded)
        .await
        .unwrap();
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    learnsync_store::testing::set_next_run_time(&conn, connection, Area::Users, an_hour_ago)
        .await
        .unwrap();
    let back = TestServer::start_on(&database_url, cipher).await.unwrap();
    let mut client = back.operator().await.unwrap();
    let watcher = &client;
    eventually(Duration::from_secs(10), "the catch-up run", || async move {
        Ok((scheduled(watcher).await.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        scheduled(&client).await.len(),
        2,
        "one catch-up run, not one per missed tick"
    );
    let status = client.get_status(&id, &[pb::Area::Users]).await.unwrap();
    let next = status.areas[0].next_run_time.unwrap();
    assert!(
        next.seconds > chrono::Utc::now().timestamp() - 5,
        "the schedule moved on from now"
    );
    back.stop().await.unwrap();
}

/// Registers the connection's webhook URL in the Docebo simulator.
async fn register_webhook(system: &TestSystem) -> String {
    let mut client = system.client().await.unwrap();
    let endpoint = client
        .get_webhook_endpoint(&system.connection_id)
        .await
        .unwrap();
    let url = format!("{}{}", system.server.webhook_base, endpoint.path);
    system.docebo.register_webhook(&url);
    url
}

fn synced_enrollment(system: &TestSystem) -> String {
    let enrollments = system
        .salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap();
    enrollments
        .iter()
        .find(|e| e["Status__c"] != "Completed")
        .and_then(|e| e["Enrollment_Key__c"].as_str())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_webhook_change_reaches_salesforce_within_seconds_and_a_deletion_unenrolls() {
    let system = TestSystem::start(&small_platform(), 1, |_| {})
        .await
        .unwrap();
    // A long interval: only the webhook can bring the change in time.
    enrollments_synchronized(&system, realtime(pb::Area::Enrollments, 3600, 86_400)).await;
    register_webhook(&system).await;
    let key = synced_enrollment(&system);
    system
        .docebo
        .update(
            EntityKind::CourseEnrollments,
            &key,
            json!({"enrollment_status": "completed"}),
        )
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the webhook change in salesforce",
        || async {
            let records = system.salesforce.records("Docebo_Course_Enrollment__c")?;
            Ok(record(&records, "Enrollment_Key__c", &key)
                .filter(|r| r["Status__c"] == "Completed")
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
    let webhook_runs = runs_by(&system, pb::Trigger::Webhook).await;
    assert!(!webhook_runs.is_empty());
    assert!(
        webhook_runs[0]
            .jobs
            .iter()
            .all(|j| j.kind == pb::JobKind::CourseEnrollments as i32),
        "a webhook run carries only the jobs its events named: {:?}",
        webhook_runs[0].jobs
    );

    let other = synced_enrollment(&system);
    system
        .docebo
        .delete(EntityKind::CourseEnrollments, &other)
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the deletion to unenroll",
        || async {
            let records = system.salesforce.records("Docebo_Course_Enrollment__c")?;
            Ok(record(&records, "Enrollment_Key__c", &other)
                .filter(|r| r["Status__c"] == "Unenrolled" && !r["Unenrolled_At__c"].is_null())
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
    system.stop().await.unwrap();
}

#[tokio::test]
async fn a_deletion_no_webhook_announced_is_found_by_the_full_comparison() {
    let system = TestSystem::start(&small_platform(), 1, |_| {})
        .await
        .unwrap();
    enrollments_synchronized(&system, realtime(pb::Area::Enrollments, 1, 2)).await;
    let key = synced_enrollment(&system);
    system
        .docebo
        .delete(EntityKind::CourseEnrollments, &key)
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the full comparison to unenroll",
        || async {
            let records = system.salesforce.records("Docebo_Course_Enrollment__c")?;
            Ok(record(&records, "Enrollment_Key__c", &key)
                .filter(|r| r["Status__c"] == "Unenrolled")
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
    let full = runs_by(&system, pb::Trigger::Schedule).await;
    assert!(
        full.iter().any(|run| run.full),
        "a scheduled full comparison ran"
    );
    system.stop().await.unwrap();
}

#[tokio::test]
async fn a_replayed_webhook_changes_nothing_and_a_wrong_secret_is_refused() {
    let system = TestSystem::start(&small_platform(), 1, |_| {})
        .await
        .unwrap();
    enrollments_synchronized(&system, realtime(pb::Area::Enrollments, 3600, 86_400)).await;
    let url = register_webhook(&system).await;
    let connection = Uuid::parse_str(&system.connection_id).unwrap();
    let key = synced_enrollment(&system);
    let (user, course) = key.split_once('-').unwrap();
    let body = json!({
        "message_id": "replayed-1", "webhook_id": 1, "original_domain": "acme.docebosaas.com",
        "event": "course.enrollment.updated", "fired_by_batch_action": false,
        "payload": {"fired_at": "2024-03-20 09:01:02", "user_id": user, "course_id": course, "status": "in_progress"}
    });
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let answer = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 200);
    }
    let conn = system.server.store.conn().await.unwrap();
    let (recorded, _) = learnsync_store::realtime::message_counts(&conn, connection)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "one message, however often docebo retries it");
    eventually(
        Duration::from_secs(20),
        "the webhook run to finish",
        || async {
            let runs = runs_by(&system, pb::Trigger::Webhook).await;
            Ok(runs
                .iter()
                .all(|r| r.end_time.is_some())
                .then_some(runs.len())
                .filter(|n| *n > 0))
        },
    )
    .await
    .unwrap();
    assert_eq!(runs_by(&system, pb::Trigger::Webhook).await.len(), 1);

    let wrong = url
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{}", "0".repeat(40)))
        .unwrap();
    let foreign = url.replace(&system.connection_id, &Uuid::new_v4().to_string());
    for target in [wrong, foreign] {
        let mut other = body.clone();
        other["message_id"] = json!("forged-1");
        let answer = http.post(&target).json(&other).send().await.unwrap();
        assert_eq!(answer.status(), 404);
    }
    let (recorded, _) = learnsync_store::realtime::message_counts(&conn, connection)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "refused webhooks are recorded nowhere");

    // Rotating the secret retires the old URL.
    let mut client = system.client().await.unwrap();
    client
        .rotate_webhook_secret(&system.connection_id)
        .await
        .unwrap();
    let mut again = body.clone();
    again["message_id"] = json!("after-rotation");
    let answer = http.post(&url).json(&again).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    system.stop().await.unwrap();
}
