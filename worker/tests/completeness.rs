//! Proves that a record is unenrolled only when a listing known to be complete did not contain it:
//! a course edited while the course listing is read by page number (the shift that skips the next
//! page's first course) loses nothing, a 404 on a nested listing of a live parent is a transient
//! error (and of a parent really deleted, "gone"), a page without `has_more_data` is an error, and
//! a count that does not match Docebo's `total_count` unenrolls nothing and says so.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Env, sync_area, test_settings};
use learnsync_sim::{EntityKind, Faults, GenerateParams, ListFault, PageAction, PageHook};
use learnsync_store::model::{Area, LogLevel, RunState};
use learnsync_worker::Settings;
use serde_json::Value;

/// Courses per page: the course listing spans several pages.
const PAGE: usize = 5;

fn settings() -> Settings {
    Settings {
        page_size: PAGE as u32,
        ..test_settings("w1")
    }
}

/// A platform with users, courses and enrollments synchronized once (so that the next full run
/// compares), and a worker reading pages of [`PAGE`] items. The courses area's latest run is
/// then a check, which publishes no sessions reading: the roster jobs list the courses and the
/// sessions themselves, and their walk's proofs are what these tests try.
async fn synchronized(seed: u64) -> (Env, common::RunningWorker) {
    let env = Env::new(GenerateParams {
        seed,
        scale: Some(0.2),
        courses: Some(40),
        sessions_per_course: Some(2),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let worker = env.spawn_worker(settings());
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    }
    let check = learnsync_store::runs::ResyncOptions {
        check_only: true,
        ..learnsync_store::runs::ResyncOptions::default()
    };
    let run = env.resynchronize_with(Area::Courses, check).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    (env, worker)
}

/// The courses in the order the listing serves them (oldest change first).
fn courses(env: &Env) -> Vec<Value> {
    env.docebo.items(EntityKind::Courses)
}

fn id(item: &Value, field: &str) -> i64 {
    match &item[field] {
        Value::Number(number) => number.as_i64().unwrap(),
        Value::String(text) => text.parse().unwrap(),
        other => panic!("no {field} in {other}"),
    }
}

/// The session-enrollment keys of a course's sessions.
fn session_enrollments_of(env: &Env, course_id: i64) -> BTreeSet<String> {
    let sessions: BTreeSet<i64> = env
        .docebo
        .items(EntityKind::Sessions)
        .iter()
        .filter(|session| id(session, "course_id") == course_id)
        .map(|session| id(session, "id"))
        .collect();
    env.docebo
        .items(EntityKind::SessionEnrollments)
        .iter()
        .filter(|enrollment| sessions.contains(&id(enrollment, "session_id")))
        .map(|enrollment| common::docebo_key(EntityKind::SessionEnrollments, enrollment))
        .collect()
}

/// The session enrollments Salesforce holds as unenrolled.
fn unenrolled_sessions(env: &Env) -> BTreeSet<String> {
    env.salesforce
        .records("Docebo_Session_Enrollment__c")
        .unwrap()
        .into_iter()
        .filter(|record| record["Status__c"] == "Unenrolled")
        .map(|record| record["Enrollment_Key__c"].as_str().unwrap().to_string())
        .collect()
}

/// The Docebo list calls by path pattern, since the counters were cleared.
fn list_calls(env: &Env) -> BTreeMap<String, u64> {
    env.docebo
        .counters()
        .into_iter()
        .filter(|(endpoint, _)| !endpoint.contains("oauth2"))
        .collect()
}

/// Whether a log event says `text` (in its message or its fields: a retry's cause).
fn mentions(event: &learnsync_store::model::LogEvent, text: &str) -> bool {
    event.message.contains(text)
        || Value::Object(event.fields.clone())
            .to_string()
            .contains(text)
}

/// A full resynchronization of the enrollments area, run to its end.
async fn resync(env: &Env) -> learnsync_store::model::Run {
    let run = env.resynchronize(Area::Enrollments, false).await;
    env.wait_final(run.id, Duration::from_secs(60)).await
}

/// The first course of a page after the first that has session enrollments: (its page, its id).
fn course_opening_a_page(env: &Env) -> (usize, i64) {
    let courses = courses(env);
    (1..courses.len() / PAGE)
        .map(|page| (page + 1, id(&courses[page * PAGE], "id_course")))
        .find(|(_, course)| !session_enrollments_of(env, *course).is_empty())
        .expect("a course with session enrollments opens a page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_edited_after_its_page_was_read_loses_nothing() {
    let (env, worker) = synchronized(71).await;
    // A full read with nothing moving: the calls it costs.
    env.docebo.clear_counters();
    let quiet = resync(&env).await;
    assert_eq!(quiet.state, RunState::Succeeded, "{quiet:#?}");
    assert!(unenrolled_sessions(&env).is_empty());
    let quiet_calls = list_calls(&env);

    // Right after page `page - 1` of the courses is served, its first course is edited: it moves
    // to the end and every later course shifts back by one, so the course opening page `page`
    // is never served to a page-number reader.
    let (page, skipped) = course_opening_a_page(&env);
    let touched = id(&courses(&env)[0], "id_course");
    // One session enrollment of another course really deleted: the comparison runs (the
    // listing is proven complete) and unenrolls that one only.
    let deleted = env
        .docebo
        .items(EntityKind::SessionEnrollments)
        .iter()
        .map(|enrollment| common::docebo_key(EntityKind::SessionEnrollments, enrollment))
        .find(|key| !session_enrollments_of(&env, skipped).contains(key))
        .unwrap();
    env.docebo
        .delete(EntityKind::SessionEnrollments, &deleted)
        .unwrap();
    env.docebo.on_page(PageHook {
        path: "/learn/v1/courses".into(),
        page: page - 1,
        action: PageAction::Update {
            kind: EntityKind::Courses,
            key: touched.to_string(),
            patch: Value::Null,
        },
        fired: false,
        error: None,
    });
    env.docebo.clear_counters();
    let run = resync(&env).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert!(env.docebo.page_hooks().iter().all(|hook| hook.fired));
    let shifted_calls = list_calls(&env);
    eprintln!("docebo calls, full read with nothing moving: {quiet_calls:?}");
    eprintln!("docebo calls, full read with a shift: {shifted_calls:?}");
    // Nothing moving, one pass over the courses proves itself (they are sorted oldest change
    // first, all older than the first page); the edit makes the reader verify them.
    let courses_read = |calls: &BTreeMap<String, u64>| calls["GET /learn/v1/courses"];
    let pages = courses(&env).len().div_ceil(PAGE) as u64;
    assert_eq!(courses_read(&quiet_calls), pages);
    assert!(courses_read(&shifted_calls) > pages, "{shifted_calls:?}");

    // Nothing live is unenrolled, the skipped course's enrollments least of all.
    assert!(!session_enrollments_of(&env, skipped).is_empty());
    assert_eq!(unenrolled_sessions(&env), BTreeSet::from([deleted.clone()]));
    let mut held = env.salesforce_keys("Docebo_Session_Enrollment__c", "Enrollment_Key__c");
    held.remove(&deleted);
    assert_eq!(held, env.docebo_keys("session_enrollments"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_a_nested_listing_is_gone_only_when_its_parent_is() {
    let (env, worker) = synchronized(72).await;
    let (_, live) = course_opening_a_page(&env);
    // A live course's sessions answer 404 once: a transient error, the job retries, nothing is
    // unenrolled.
    env.docebo.set_faults(Faults {
        not_found_lists: vec![ListFault {
            path: Some(format!("/course/v1/courses/{live}/sessions")),
            count: 1,
        }],
        ..Faults::default()
    });
    let run = resync(&env).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(unenrolled_sessions(&env), BTreeSet::new());
    let log = env.run_log(run.id).await;
    assert!(
        log.iter().any(|event| mentions(event, "404")),
        "the transient 404 is in the log: {log:#?}"
    );

    // A course deleted right after its page was served answers 404 for its sessions: gone, and
    // its session enrollments are unenrolled (and nothing else).
    let courses = courses(&env);
    let (at, gone) = courses
        .iter()
        .enumerate()
        .map(|(at, course)| (at, id(course, "id_course")))
        .find(|(_, course)| *course != live && !session_enrollments_of(&env, *course).is_empty())
        .unwrap();
    let gone_enrollments = session_enrollments_of(&env, gone);
    env.docebo.on_page(PageHook {
        path: "/learn/v1/courses".into(),
        page: at / PAGE + 1,
        action: PageAction::Delete {
            kind: EntityKind::Courses,
            key: gone.to_string(),
        },
        fired: false,
        error: None,
    });
    env.docebo.set_faults(Faults {
        not_found_lists: vec![ListFault {
            path: Some(format!("/course/v1/courses/{gone}/sessions")),
            count: 100,
        }],
        ..Faults::default()
    });
    let run = resync(&env).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert!(env.docebo.page_hooks().iter().all(|hook| hook.fired));
    assert_eq!(unenrolled_sessions(&env), gone_enrollments);
    env.docebo.clear_faults();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_has_more_data_is_an_error_not_the_end() {
    let (env, worker) = synchronized(73).await;
    // The first course page says nothing of more pages: read as the end, every later course's
    // session enrollments would be unenrolled.
    env.docebo.set_faults(Faults {
        omit_has_more_data: vec![ListFault {
            path: Some("/learn/v1/courses".into()),
            count: 2,
        }],
        ..Faults::default()
    });
    let run = resync(&env).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(unenrolled_sessions(&env), BTreeSet::new());
    let log = env.run_log(run.id).await;
    assert!(
        log.iter().any(|event| mentions(event, "has_more_data")),
        "the unreadable page is in the log: {log:#?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_short_of_the_total_unenrolls_nothing_and_says_so() {
    let (env, worker) = synchronized(74).await;
    // One session enrollment really deleted, and one roster announcing one more enrollment than
    // it lists: the listing is not complete, so nothing is unenrolled, not even the deleted one.
    // Both in one session: each job compares only its own records.
    let enrollments = env.docebo.items(EntityKind::SessionEnrollments);
    let short_session = id(&enrollments[0], "session_id");
    let deleted = enrollments
        .iter()
        .filter(|enrollment| id(enrollment, "session_id") == short_session)
        .map(|enrollment| common::docebo_key(EntityKind::SessionEnrollments, enrollment))
        .next_back()
        .unwrap();
    env.docebo
        .delete(EntityKind::SessionEnrollments, &deleted)
        .unwrap();
    env.docebo.set_faults(Faults {
        inflate_total_count: vec![ListFault {
            path: Some(format!("/course/v1/sessions/{short_session}/enrollments")),
            count: 1,
        }],
        ..Faults::default()
    });
    let run = resync(&env).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(unenrolled_sessions(&env), BTreeSet::new());
    let log = env.run_log(run.id).await;
    let warning = log
        .iter()
        .find(|event| event.level == LogLevel::Warn && event.message.contains("nothing unenrolled"))
        .unwrap_or_else(|| panic!("the job says why it unenrolled nothing: {log:#?}"));
    let reason = warning.fields["reason"].as_str().unwrap();
    assert!(reason.contains("docebo announced"), "{reason}");

    // The next full run, complete, unenrolls it.
    let run = resync(&env).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(unenrolled_sessions(&env), BTreeSet::from([deleted]));
    worker.stop().await;
}
