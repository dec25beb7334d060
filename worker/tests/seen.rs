//! Proves that a full comparison whose seen set was lost mid-job (a crash of Postgres empties the
//! unlogged `ledger_seen`) unenrolls nothing it saw: it notices, reads its listing again, and
//! unenrolls only what Docebo no longer lists.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Env, sync_area, test_settings};
use learnsync_sim::{EntityKind, GenerateParams};
use learnsync_store::model::{Area, JobKind, LogLevel, RunState};

/// The course enrollments Salesforce holds as unenrolled.
fn unenrolled(env: &Env) -> BTreeSet<String> {
    env.salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap()
        .into_iter()
        .filter(|record| record["Status__c"] == "Unenrolled")
        .map(|record| record["Enrollment_Key__c"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seen_set_lost_mid_unenrollment_unenrolls_only_what_docebo_no_longer_lists() {
    let env = Env::new(GenerateParams {
        seed: 91,
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(test_settings("w1"));
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    }
    // The two course enrollments first in key order leave Docebo: the comparison's first batch
    // unenrolls them, and every other record comes after them in key order.
    let mut keys: Vec<String> = env
        .docebo
        .items(EntityKind::CourseEnrollments)
        .iter()
        .map(|item| common::docebo_key(EntityKind::CourseEnrollments, item))
        .collect();
    keys.sort();
    assert!(
        keys.len() > 100,
        "the platform has records after the gone ones"
    );
    let gone: BTreeSet<String> = keys[..2].iter().cloned().collect();
    for key in &gone {
        env.docebo
            .delete(EntityKind::CourseEnrollments, key)
            .unwrap();
    }

    // The comparison's first write is that batch's: held in flight while Postgres "crashes" and
    // empties the seen sets, then let go. The next batch would take every record the listing saw
    // for unseen.
    env.salesforce.hold_writes(1);
    let run = env.resynchronize(Area::Enrollments, false).await;
    let until = Instant::now() + Duration::from_secs(60);
    while env.salesforce.held_writes() == 0 {
        assert!(
            Instant::now() < until,
            "the unenrollment batch was never sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let conn = env.store.conn().await.unwrap();
        learnsync_store::testing::lose_seen_sets(&conn)
            .await
            .unwrap();
    }
    env.salesforce.release_writes();
    let run = env.wait_final(run.id, Duration::from_secs(120)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");

    assert_eq!(unenrolled(&env), gone);
    let job = run
        .jobs
        .iter()
        .find(|job| job.kind == JobKind::CourseEnrollments)
        .unwrap();
    assert_eq!(job.counts.unenrolled, 2, "{run:#?}");
    let log = env.run_log(run.id).await;
    assert!(
        log.iter().any(|event| event.level == LogLevel::Warn
            && event.job_id == Some(job.id)
            && event.message.contains("reading the listing again")),
        "the job says it read its listing again: {log:#?}"
    );
    worker.stop().await;
}
