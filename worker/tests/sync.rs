//! Proves a full sync of users, courses and enrollments leaves Salesforce holding exactly what Docebo holds (counts matching, every record that cannot fit logged with its reason), users are linked to the Contact with their email, a second run with nothing changed writes nothing, and a first sync's plain ledger insert falls back to an upsert for a key listed twice.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::Duration;

use common::{Env, sync_area, test_settings};
use learnsync_sim::GenerateParams;
use learnsync_store::model::{Area, JobKind, LogLevel, RunState};

fn job(run: &learnsync_store::model::Run, kind: JobKind) -> &learnsync_store::model::Job {
    run.jobs.iter().find(|job| job.kind == kind).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_platform_is_mirrored_in_salesforce() {
    let env = Env::new(GenerateParams {
        seed: 11,
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));

    // Users.
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    let users = job(&run, JobKind::Users);
    let good = env.docebo_good_keys("users");
    let bad = env.docebo_bad_keys("users");
    assert!(!bad.is_empty());
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        good
    );
    assert_eq!(users.counts.read, (good.len() + bad.len()) as i64);
    assert_eq!(users.counts.written, good.len() as i64);
    assert_eq!(users.counts.failed, bad.len() as i64);
    assert_eq!(users.counts.expected, users.counts.read);
    assert_eq!(env.error_keys(run.id).await, bad);
    let log = env.run_log(run.id).await;
    let too_long = log
        .iter()
        .find(|event| event.level == LogLevel::Error && event.record_key.is_some())
        .unwrap();
    assert_eq!(too_long.error_code.as_deref(), Some("STRING_TOO_LONG"));
    assert!(
        too_long.message.contains("First_Name__c"),
        "{}",
        too_long.message
    );
    assert!(run.first_error_sequence.is_some());
    // A completed run moves the area's watermark to its creation (incremental runs read from there).
    let conn = env.store.conn().await.unwrap();
    let config = learnsync_store::areas::get(&conn, env.connection_id, Area::Users)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config.watermark, Some(run.create_time));
    assert!(config.first_success_time.is_some());
    drop(conn);

    // Courses, learning plans, sessions.
    let run = sync_area(&env, Area::Courses).await;
    assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_Course__c", "Docebo_Course_Id__c"),
        env.docebo_good_keys("courses")
    );
    assert_eq!(
        env.salesforce_keys("Docebo_Learning_Plan__c", "Docebo_Learning_Plan_Id__c"),
        env.docebo_good_keys("learning_plans")
    );
    assert_eq!(
        env.salesforce_keys("Docebo_Session__c", "Docebo_Session_Id__c"),
        env.docebo_good_keys("sessions")
    );
    let mut bad = env.docebo_bad_keys("courses");
    bad.extend(env.docebo_bad_keys("learning_plans"));
    bad.extend(env.docebo_bad_keys("sessions"));
    assert_eq!(env.error_keys(run.id).await, bad);
    let sessions = job(&run, JobKind::Sessions);
    assert_eq!(
        sessions.counts.written,
        env.docebo_good_keys("sessions").len() as i64
    );
    assert_eq!(
        sessions.counts.failed,
        env.docebo_bad_keys("sessions").len() as i64
    );

    // The four enrollment jobs.
    let run = sync_area(&env, Area::Enrollments).await;
    assert_eq!(run.state, RunState::SucceededWithErrors, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_Course_Enrollment__c", "Enrollment_Key__c"),
        env.docebo_good_keys("course_enrollments")
    );
    assert_eq!(
        env.salesforce_keys("Docebo_Learning_Plan_Enrollment__c", "Enrollment_Key__c"),
        env.docebo_good_keys("learning_plan_enrollments")
    );
    assert_eq!(
        env.salesforce_keys("Docebo_Session_Enrollment__c", "Enrollment_Key__c"),
        env.docebo_good_keys("session_enrollments")
    );
    let mut bad = env.docebo_bad_keys("course_enrollments");
    bad.extend(env.docebo_bad_keys("learning_plan_enrollments"));
    bad.extend(env.docebo_bad_keys("session_enrollments"));
    assert_eq!(env.error_keys(run.id).await, bad);
    let counts = run.counts();
    let docebo_total = env.docebo_keys("course_enrollments").len()
        + env.docebo_keys("learning_plan_enrollments").len()
        + env.docebo_keys("session_enrollments").len();
    assert_eq!(counts.read, docebo_total as i64);
    assert_eq!(counts.written + counts.failed, counts.read);
    assert_eq!(counts.failed, bad.len() as i64);
    let webinar = job(&run, JobKind::WebinarSessionEnrollments);
    let ilt = job(&run, JobKind::IltSessionEnrollments);
    let summary = env.docebo.summary();
    assert_eq!(
        webinar.counts.read,
        summary.session_enrollment_types["webinar"] as i64
    );
    assert_eq!(
        ilt.counts.read,
        summary.session_enrollment_types["classroom"] as i64
    );

    // GetStatus's records imported: the ledger's counters.
    let conn = env.store.conn().await.unwrap();
    let imported = learnsync_store::runs::records_imported(&conn, env.connection_id)
        .await
        .unwrap();
    assert_eq!(imported[&Area::Enrollments], counts.written);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_with_nothing_changed_writes_nothing() {
    let env = Env::new(GenerateParams {
        seed: 12,
        scale: Some(0.5),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
        assert!(run.counts().written > 0);
    }
    let before = env
        .salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap();
    env.salesforce.clear_counters();
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = env.resynchronize(area, false).await;
        let run = env.wait_final(run.id, Duration::from_secs(60)).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
        let counts = run.counts();
        assert_eq!(counts.written, 0, "{run:#?}");
        assert_eq!(counts.unchanged, counts.read);
        assert!(counts.read > 0);
    }
    let writes: u64 = env
        .salesforce
        .counters()
        .iter()
        // Bulk query jobs read what Salesforce holds (the drift check): reads, not writes.
        .filter(|(endpoint, _)| {
            !endpoint.contains("oauth2")
                && !endpoint.starts_with("GET")
                && !endpoint.contains("jobs/query")
        })
        .map(|(_, calls)| *calls)
        .sum();
    assert_eq!(writes, 0, "{:?}", env.salesforce.counters());
    assert_eq!(
        env.salesforce
            .records("Docebo_Course_Enrollment__c")
            .unwrap(),
        before
    );

    // Rewrite-unchanged writes everything again.
    let run = env.resynchronize(Area::Users, true).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.counts().written, run.counts().read);
    worker.stop().await;
}

/// Creates a Contact in the simulated org through its REST API; returns its id.
async fn create_contact(env: &Env, email: &str) -> String {
    let token = env.salesforce.issue_token();
    let response = reqwest::Client::new()
        .post(format!(
            "{}/services/data/v62.0/sobjects/Contact",
            env.salesforce.base_url()
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({"LastName": "Contact", "Email": email}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    let body: serde_json::Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

fn contact_of(env: &Env, user_id: &str) -> serde_json::Value {
    env.salesforce
        .records("Docebo_User__c")
        .unwrap()
        .into_iter()
        .find(|record| record["Docebo_User_Id__c"] == user_id)
        .unwrap()["Contact__c"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_linked_to_the_contact_with_their_email() {
    let env = Env::new(GenerateParams {
        seed: 13,
        scale: Some(0.3),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let users = env.docebo.items(learnsync_sim::EntityKind::Users);
    let (first, second) = (&users[0], &users[1]);
    let first_id = first["user_id"].as_str().unwrap();
    let second_id = second["user_id"].as_str().unwrap();
    let contact = create_contact(&env, first["email"].as_str().unwrap()).await;
    let worker = env.spawn_worker(test_settings("w1"));
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(contact_of(&env, first_id), contact.as_str());
    assert!(contact_of(&env, second_id).is_null());

    // A contact that appears later is linked by the next run; nothing else is written.
    let later = create_contact(&env, second["email"].as_str().unwrap()).await;
    let run = env.resynchronize(Area::Users, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.counts().written, 1, "{run:#?}");
    assert_eq!(contact_of(&env, second_id), later.as_str());
    worker.stop().await;
}
