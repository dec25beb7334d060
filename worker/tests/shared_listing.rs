//! Proves that each Docebo list page is read once, whatever the number of jobs that need it: the course list is read once per courses run (when it spans several pages, its order proves the one pass whole while nothing changes) and serves the courses and sessions jobs, whichever of two workers holds them; each session course's sessions are listed once, by the courses run, and a full enrollments run's webinar and ILT roster jobs walk that reading instead of listing the course list and the sessions again, as long as it is the courses area's latest run's; the sync stays exact and a full comparison still unenrolls what Docebo deleted, sessions included.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Env, RunningWorker, sync_area, test_settings};
use learnsync_sim::{EntityKind, GenerateParams};
use learnsync_store::model::{Area, Run, RunState};
use learnsync_store::runs;
use learnsync_worker::Settings;

const COURSE_LIST: &str = "GET /learn/v1/courses";
const SESSIONS: &str = "GET /course/v1/courses/{course_id}/sessions";
const ROSTERS: &str = "GET /course/v1/sessions/{session_id}/enrollments";
const COURSES: usize = 40;

/// A platform of [`COURSES`] courses (two sessions for each classroom and webinar course), and
/// two workers holding one job each at a time, so that a run's jobs are on both.
async fn platform(seed: u64, page_size: u32) -> (Env, Vec<RunningWorker>) {
    let env = Env::new(GenerateParams {
        seed,
        scale: Some(0.2),
        courses: Some(COURSES),
        sessions_per_course: Some(2),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    let workers = ["w1", "w2"]
        .into_iter()
        .map(|id| {
            env.spawn_worker(Settings {
                page_size,
                concurrency: 2,
                ..test_settings(id)
            })
        })
        .collect();
    (env, workers)
}

/// The Docebo list calls by endpoint since the counters were cleared.
fn calls(env: &Env) -> BTreeMap<String, u64> {
    env.docebo
        .counters()
        .into_iter()
        .filter(|(endpoint, _)| !endpoint.contains("oauth2"))
        .collect()
}

fn count(calls: &BTreeMap<String, u64>, endpoint: &str) -> u64 {
    calls.get(endpoint).copied().unwrap_or(0)
}

/// The classroom and webinar courses: the courses whose sessions a run lists.
fn session_courses(env: &Env) -> u64 {
    session_courses_where(env, |_| true)
}

/// The classroom and webinar courses that pass `keep`.
fn session_courses_where(env: &Env, keep: impl Fn(&serde_json::Value) -> bool) -> u64 {
    env.docebo
        .items(EntityKind::Courses)
        .iter()
        .filter(|course| {
            matches!(
                course["course_type"].as_str(),
                Some("classroom" | "webinar")
            ) && keep(course)
        })
        .count() as u64
}

/// Runs an area with the counters cleared first; returns the run and its Docebo list calls.
async fn counted(env: &Env, area: Area) -> (Run, BTreeMap<String, u64>) {
    env.docebo.clear_counters();
    let run = sync_area(env, area).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    (run, calls(env))
}

/// An enrollments run's calls when its roster jobs walked the courses run's published reading:
/// no course list, no sessions, each session's roster once.
fn assert_walked_the_published_reading(env: &Env, calls: &BTreeMap<String, u64>) {
    assert_eq!(count(calls, COURSE_LIST), 0, "{calls:?}");
    assert_eq!(count(calls, SESSIONS), 0, "{calls:?}");
    assert_eq!(
        count(calls, ROSTERS),
        env.docebo.items(EntityKind::Sessions).len() as u64,
        "{calls:?}"
    );
}

/// Salesforce holds exactly what Docebo holds, object by object.
fn assert_exact(env: &Env) {
    for (object, external_id, kind) in [
        ("Docebo_Course__c", "Docebo_Course_Id__c", "courses"),
        ("Docebo_Session__c", "Docebo_Session_Id__c", "sessions"),
        (
            "Docebo_Session_Enrollment__c",
            "Enrollment_Key__c",
            "session_enrollments",
        ),
        (
            "Docebo_Course_Enrollment__c",
            "Enrollment_Key__c",
            "course_enrollments",
        ),
    ] {
        assert_eq!(
            env.salesforce_keys(object, external_id),
            env.docebo_good_keys(kind),
            "{object}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_the_course_list_and_each_course_s_sessions_once() {
    // The course list fits one page: one answer, consistent, read once per run.
    let (env, workers) = platform(81, 200).await;
    let sessions = session_courses(&env);
    assert!(sessions > 0);
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");

    // The courses and sessions jobs share the course list.
    let (_, courses) = counted(&env, Area::Courses).await;
    assert_eq!(count(&courses, COURSE_LIST), 1, "{courses:?}");
    assert_eq!(count(&courses, SESSIONS), sessions, "{courses:?}");

    // The webinar and ILT roster jobs walk the courses run's reading: they list neither the
    // courses nor the sessions; each session's roster is read once.
    let (_, enrollments) = counted(&env, Area::Enrollments).await;
    assert_walked_the_published_reading(&env, &enrollments);
    assert_exact(&env);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_list_of_several_pages_is_read_once_per_run() {
    // Pages of 5 courses: the list is read by page number, by one job for every job of the run;
    // sorted oldest change first, with nothing changed since the first page, one pass proves it.
    const PAGE: u32 = 5;
    let pages = COURSES.div_ceil(PAGE as usize) as u64;
    let (env, workers) = platform(82, PAGE).await;
    let sessions = session_courses(&env);
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let (_, courses) = counted(&env, Area::Courses).await;
    assert_eq!(count(&courses, COURSE_LIST), pages, "{courses:?}");
    assert_eq!(count(&courses, SESSIONS), sessions, "{courses:?}");
    // A check of the courses area is its latest run, and publishes nothing: the enrollments run
    // lists the courses (and verifies them) and the sessions itself.
    let check = runs::ResyncOptions {
        check_only: true,
        ..runs::ResyncOptions::default()
    };
    let run = env.resynchronize_with(Area::Courses, check).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let (_, first) = counted(&env, Area::Enrollments).await;
    assert_eq!(count(&first, COURSE_LIST), pages, "{first:?}");
    assert_eq!(count(&first, SESSIONS), sessions, "{first:?}");
    assert_exact(&env);

    // A session enrollment deleted in Docebo: the next full comparison finds the shared course
    // list proven complete, so it unenrolls that one (and nothing else), at the same cost.
    let deleted = env.docebo.items(EntityKind::SessionEnrollments)[0].clone();
    let key = common::docebo_key(EntityKind::SessionEnrollments, &deleted);
    env.docebo
        .delete(EntityKind::SessionEnrollments, &key)
        .unwrap();
    env.docebo.clear_counters();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let again = calls(&env);
    assert_eq!(count(&again, COURSE_LIST), pages, "{again:?}");
    assert_eq!(count(&again, SESSIONS), sessions, "{again:?}");
    assert_eq!(unenrolled(&env), BTreeSet::from([key]));
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_before_the_courses_run_has_its_enrollments_unenrolled() {
    // Pages of 5 courses, so that the published course list is one of several pages.
    let (env, workers) = platform(83, 5).await;
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    }
    assert_exact(&env);
    // Docebo deletes a session with its roster, and a session enrollment of another session.
    let enrollments = env.docebo.items(EntityKind::SessionEnrollments);
    let session = enrollments[0]["session_id"].clone();
    let roster: BTreeSet<String> = enrollments
        .iter()
        .filter(|item| item["session_id"] == session)
        .map(|item| common::docebo_key(EntityKind::SessionEnrollments, item))
        .collect();
    assert!(!roster.is_empty());
    for key in &roster {
        env.docebo
            .delete(EntityKind::SessionEnrollments, key)
            .unwrap();
    }
    let session_key = match &session {
        serde_json::Value::String(id) => id.clone(),
        id => id.to_string(),
    };
    env.docebo
        .delete(EntityKind::Sessions, &session_key)
        .unwrap();
    let other = enrollments
        .iter()
        .find(|item| item["session_id"] != session)
        .map(|item| common::docebo_key(EntityKind::SessionEnrollments, item))
        .unwrap();
    env.docebo
        .delete(EntityKind::SessionEnrollments, &other)
        .unwrap();
    // The courses run publishes a reading without that session; the enrollments run walks it
    // (no course list, no sessions listed) and proves the session's enrollments gone: written
    // before the reading began, their session is not in it.
    let run = env.resynchronize(Area::Courses, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    env.docebo.clear_counters();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let walked = calls(&env);
    assert_walked_the_published_reading(&env, &walked);
    let mut gone = roster;
    gone.insert(other);
    assert_eq!(unenrolled(&env), gone);
    for worker in workers {
        worker.stop().await;
    }
}

/// The classroom and webinar courses without an end date: an incremental run still lists their
/// sessions (the others ended long before the platform's clock).
fn open_session_courses(env: &Env) -> u64 {
    session_courses_where(env, |course| {
        course["end_date"]
            .as_str()
            .is_none_or(|date| date.starts_with("0000"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_merge_new_sessions_into_the_reading_the_rosters_walk() {
    let (env, workers) = platform(84, 200).await;
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    }
    // A new classroom course, with a session that has not ended and a learner enrolled in it.
    let user = env.docebo.items(EntityKind::Users)[0]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.docebo
        .create(
            EntityKind::Courses,
            serde_json::json!({"id_course": 990001, "code": "NEW-1", "name": "New classroom",
                "course_type": "classroom", "start_date": null, "end_date": null}),
        )
        .unwrap();
    env.docebo
        .create(
            EntityKind::Sessions,
            serde_json::json!({"id": 990101, "course_id": 990001, "name": "New session",
                "start_date": "2099-01-01 09:00:00", "end_date": "2099-01-01 17:00:00"}),
        )
        .unwrap();
    env.docebo
        .create(
            EntityKind::SessionEnrollments,
            serde_json::json!({"user_id": user.parse::<i64>().unwrap(), "session_id": 990101,
                "status": "subscribed", "level": "student"}),
        )
        .unwrap();

    // The incremental courses run lists the new course's sessions whole (the reading did not hold
    // them) and the changes of the other session courses that have not ended (the new one is
    // among those without an end date), and merges them.
    env.docebo.clear_counters();
    let run = common::incremental(&env, Area::Courses).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let courses = calls(&env);
    assert_eq!(
        count(&courses, SESSIONS),
        open_session_courses(&env),
        "{courses:?}"
    );
    // The incremental enrollments run walks the merged reading: no course list, no sessions; it
    // reads the one roster of a session that has not ended, the new one, and writes it.
    env.docebo.clear_counters();
    let run = common::incremental(&env, Area::Enrollments).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let enrollments = calls(&env);
    assert_eq!(count(&enrollments, COURSE_LIST), 0, "{enrollments:?}");
    assert_eq!(count(&enrollments, SESSIONS), 0, "{enrollments:?}");
    assert_eq!(count(&enrollments, ROSTERS), 1, "{enrollments:?}");
    let key = format!("{user}-990101");
    assert!(
        env.salesforce_keys("Docebo_Session_Enrollment__c", "Enrollment_Key__c")
            .contains(&key)
    );
    assert_exact(&env);
    for worker in workers {
        worker.stop().await;
    }
}

/// The session enrollments Salesforce holds as unenrolled.
fn unenrolled(env: &Env) -> BTreeSet<String> {
    env.salesforce
        .records("Docebo_Session_Enrollment__c")
        .unwrap()
        .into_iter()
        .filter(|record| record["Status__c"] == "Unenrolled")
        .map(|record| record["Enrollment_Key__c"].as_str().unwrap().to_string())
        .collect()
}
