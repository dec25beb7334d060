//! Proves Configure, Start, Stop, Resynchronize, GetStatus, GetRun and ListRuns over real gRPC and
//! Postgres: every precondition of behaviour.md refused with its reason and nothing changed, the
//! jobs of each area, idempotent retries, and concurrent Starts (on one server or two) of which
//! exactly one wins.
#![allow(clippy::unwrap_used)]

use learnsync_client::{Client, pb};
use learnsync_e2e::{TestServer, create_sample, details, manual};
use learnsync_store::model::JobState;
use tonic::Code;

/// Ends a run's jobs as a worker would, so the control plane sees a completed run.
async fn complete(server: &TestServer, run: &pb::Run, state: JobState) {
    let conn = server.store.conn().await.unwrap();
    let run_id = uuid::Uuid::parse_str(&run.id).unwrap();
    learnsync_store::testing::finish_jobs_as_worker(&conn, run_id, state)
        .await
        .unwrap();
}

async fn synchronized(server: &TestServer, client: &mut Client, id: &str, area: pb::Area) {
    client.configure(id, manual(area)).await.unwrap();
    let run = client.start(id, area, None).await.unwrap();
    complete(server, &run, JobState::Succeeded).await;
}

fn kinds(run: &pb::Run) -> Vec<pb::JobKind> {
    run.jobs
        .iter()
        .map(|j| pb::JobKind::try_from(j.kind).unwrap())
        .collect()
}

#[tokio::test]
async fn enrollments_wait_for_users_and_courses_to_complete_a_run() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();

    let error = client
        .configure(&id, manual(pb::Area::Enrollments))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        details::preconditions(&error),
        vec!["PREREQUISITE_NOT_SYNCHRONIZED"]
    );
    assert!(
        error
            .message()
            .ends_with("not yet completed a run: users, courses"),
        "{}",
        error.message()
    );

    synchronized(&server, &mut client, &id, pb::Area::Users).await;
    let error = client
        .configure(&id, manual(pb::Area::Enrollments))
        .await
        .unwrap_err();
    assert!(
        error
            .message()
            .ends_with("not yet completed a run: courses"),
        "{}",
        error.message()
    );

    // A run that ended with record errors still completes the area.
    client
        .configure(&id, manual(pb::Area::Courses))
        .await
        .unwrap();
    let run = client.start(&id, pb::Area::Courses, None).await.unwrap();
    complete(&server, &run, JobState::SucceededWithErrors).await;
    let config = client
        .configure(&id, manual(pb::Area::Enrollments))
        .await
        .unwrap();
    assert!(config.enabled);
    let run = client
        .start(&id, pb::Area::Enrollments, None)
        .await
        .unwrap();
    assert_eq!(
        kinds(&run),
        vec![
            pb::JobKind::CourseEnrollments,
            pb::JobKind::LearningPlanEnrollments,
            pb::JobKind::WebinarSessionEnrollments,
            pb::JobKind::IltSessionEnrollments
        ]
    );
    let status = client.get_status(&id, &[pb::Area::Courses]).await.unwrap();
    assert_eq!(status.areas.len(), 1);
    let courses = &status.areas[0];
    assert_eq!(
        courses.last_run.as_ref().unwrap().state,
        pb::RunState::SucceededWithErrors as i32
    );
    assert!(courses.last_success_time.is_some());
}

#[tokio::test]
async fn start_stop_and_resynchronize_follow_the_rules() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();

    let error = client
        .start(&id, pb::Area::Courses, None)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["AREA_NOT_CONFIGURED"]);
    let mut disabled = manual(pb::Area::Courses);
    disabled.enabled = false;
    client.configure(&id, disabled).await.unwrap();
    let error = client
        .start(&id, pb::Area::Courses, None)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["AREA_DISABLED"]);
    let error = client.stop(&id, pb::Area::Courses).await.unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["NO_ACTIVE_RUN"]);
    let error = client
        .resynchronize(&id, pb::Area::Courses, None, false)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["AREA_DISABLED"]);

    client
        .configure(&id, manual(pb::Area::Courses))
        .await
        .unwrap();
    let error = client
        .resynchronize(&id, pb::Area::Courses, None, false)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["NO_PREVIOUS_RUN"]);

    let timeframe = pb::Timeframe {
        start_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: 1_600_000_000,
            nanos: 0,
        }),
    };
    let error = client
        .start(&id, pb::Area::Courses, Some(timeframe))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(details::fields(&error), vec!["timeframe.end_time"]);

    let timeframe = pb::Timeframe {
        start_time: Some(prost_types::Timestamp {
            seconds: 1_600_000_000,
            nanos: 0,
        }),
        end_time: None,
    };
    let run = client
        .start(&id, pb::Area::Courses, Some(timeframe))
        .await
        .unwrap();
    assert_eq!(run.state, pb::RunState::Queued as i32);
    assert_eq!(run.trigger, pb::Trigger::Start as i32);
    assert_eq!(run.timeframe, Some(timeframe));
    assert_eq!(
        kinds(&run),
        vec![
            pb::JobKind::Courses,
            pb::JobKind::LearningPlans,
            pb::JobKind::Sessions
        ]
    );
    let error = client
        .start(&id, pb::Area::Courses, None)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["RUN_ACTIVE"]);
    let error = client
        .resynchronize(&id, pb::Area::Courses, None, false)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["RUN_ACTIVE"]);

    // With no worker holding a job, Stop ends the run at once.
    let stopped = client.stop(&id, pb::Area::Courses).await.unwrap();
    assert_eq!(stopped.state, pb::RunState::Stopped as i32);
    assert!(
        stopped
            .jobs
            .iter()
            .all(|j| j.state == pb::JobState::Stopped as i32)
    );
    assert!(stopped.stop_time.is_some());

    // A stopped first run is relaunched with Resynchronize (Start stays available until a run completes).
    let again = client
        .resynchronize(&id, pb::Area::Courses, None, true)
        .await
        .unwrap();
    assert_eq!(again.trigger, pb::Trigger::Resynchronize as i32);
    assert!(again.rewrite_unchanged && again.full);
    complete(&server, &again, JobState::Succeeded).await;
    let error = client
        .start(&id, pb::Area::Courses, None)
        .await
        .unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["ALREADY_SYNCHRONIZED"]);
    assert!(error.message().contains("Resynchronize"));

    let runs = client
        .list_runs(pb::ListRunsRequest {
            connection_id: id.clone(),
            area: pb::Area::Courses as i32,
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(runs.runs[0].id, again.id);
    let next = client
        .list_runs(pb::ListRunsRequest {
            connection_id: id.clone(),
            area: pb::Area::Courses as i32,
            page_size: 5,
            page_token: runs.next_page_token,
        })
        .await
        .unwrap();
    assert_eq!(
        next.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![run.id.clone()]
    );
    let fetched = client.get_run(&id, &again.id).await.unwrap();
    assert_eq!(fetched.state, pb::RunState::Succeeded as i32);
    let error = client
        .get_run(&id, &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn configure_validates_and_reports_the_schedule() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    let error = client
        .configure(
            &id,
            pb::AreaConfig {
                area: pb::Area::Unspecified as i32,
                enabled: true,
                mode: pb::Mode::Unspecified as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    let mut fields = details::fields(&error);
    fields.sort();
    assert_eq!(fields, vec!["config.area", "config.mode"]);
    let error = client
        .configure(
            &id,
            pb::AreaConfig {
                area: pb::Area::Users as i32,
                enabled: true,
                mode: pb::Mode::Realtime as i32,
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                course_category_ids: vec![3],
                update_time: None,
                full_comparison_interval: None,
            },
        )
        .await
        .unwrap_err();
    let mut fields = details::fields(&error);
    fields.sort();
    assert_eq!(
        fields,
        vec!["config.course_category_ids", "config.interval"]
    );

    let config = client
        .configure(
            &id,
            pb::AreaConfig {
                area: pb::Area::Courses as i32,
                enabled: true,
                mode: pb::Mode::Realtime as i32,
                interval: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                course_category_ids: vec![4, 7],
                update_time: None,
                full_comparison_interval: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(config.interval.unwrap().seconds, 600);
    let status = client.get_status(&id, &[]).await.unwrap();
    let areas: Vec<(i32, bool)> = status
        .areas
        .iter()
        .map(|a| (a.area, a.configured))
        .collect();
    assert_eq!(
        areas,
        vec![
            (pb::Area::Users as i32, false),
            (pb::Area::Courses as i32, true),
            (pb::Area::Enrollments as i32, false)
        ]
    );
    let courses = &status.areas[1];
    assert_eq!(
        courses.config.as_ref().unwrap().course_category_ids,
        vec![4, 7]
    );
    assert!(
        courses.next_run_time.is_some(),
        "realtime areas show when the next run is due"
    );
    assert!(status.areas[0].next_run_time.is_none());
}

#[tokio::test]
async fn retried_requests_do_the_work_once() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    let request = pb::StartRequest {
        connection_id: id.clone(),
        area: pb::Area::Users as i32,
        timeframe: None,
        request_id: "start-users-1".into(),
    };
    let first = client
        .raw()
        .start(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = client
        .raw()
        .start(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second, "a retry returns the first answer");
    let stop = pb::StopRequest {
        connection_id: id.clone(),
        area: pb::Area::Users as i32,
        request_id: "stop-users-1".into(),
    };
    let stopped = client.raw().stop(stop.clone()).await.unwrap().into_inner();
    let stopped_again = client.raw().stop(stop).await.unwrap().into_inner();
    assert_eq!(
        stopped, stopped_again,
        "a retried stop is not refused for want of a running run"
    );
    let runs = client
        .list_runs(pb::ListRunsRequest {
            connection_id: id.clone(),
            area: 0,
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        runs.runs.len(),
        1,
        "one run, however often the start was retried"
    );
}

async fn race_starts(endpoints: &[String], id: &str) -> (usize, Vec<tonic::Status>) {
    let mut tasks = Vec::new();
    for index in 0..12 {
        let endpoint = endpoints[index % endpoints.len()].clone();
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&endpoint, learnsync_e2e::tokens::OPERATOR)
                .await
                .unwrap();
            client.start(&id, pb::Area::Users, None).await
        }));
    }
    let mut wins = 0;
    let mut losses = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(status) => losses.push(status),
        }
    }
    (wins, losses)
}

#[tokio::test]
async fn concurrent_starts_on_one_or_two_servers_have_exactly_one_winner() {
    let first = TestServer::start().await.unwrap();
    let second = TestServer::start_on(&first.database_url, first.cipher.clone())
        .await
        .unwrap();
    let mut client = first.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();

    let (wins, losses) = race_starts(std::slice::from_ref(&first.endpoint), &id).await;
    assert_eq!(wins, 1);
    assert!(
        losses
            .iter()
            .all(|s| details::preconditions(s) == vec!["RUN_ACTIVE"]),
        "{losses:?}"
    );
    client.stop(&id, pb::Area::Users).await.unwrap();

    let (wins, losses) = race_starts(&[first.endpoint.clone(), second.endpoint.clone()], &id).await;
    assert_eq!(wins, 1);
    assert_eq!(losses.len(), 11);
    assert!(losses.iter().all(|s| s.code() == Code::FailedPrecondition));
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_with_an_active_run_is_not_deleted() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    client.start(&id, pb::Area::Users, None).await.unwrap();
    let error = client.delete_connection(&id).await.unwrap_err();
    assert_eq!(details::preconditions(&error), vec!["RUN_ACTIVE"]);
    assert_eq!(client.get_connection(&id).await.unwrap().id, id);
    client.stop(&id, pb::Area::Users).await.unwrap();
    client.delete_connection(&id).await.unwrap();
    assert_eq!(
        client.get_connection(&id).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_run_continues_the_callers_trace_or_starts_its_own() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "traced").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    client
        .configure(&id, manual(pb::Area::Courses))
        .await
        .unwrap();
    let start = |area: pb::Area, traceparent: Option<&str>| {
        let mut request = tonic::Request::new(pb::StartRequest {
            connection_id: id.clone(),
            area: area as i32,
            timeframe: None,
            request_id: uuid::Uuid::new_v4().to_string(),
        });
        if let Some(header) = traceparent {
            request
                .metadata_mut()
                .insert("traceparent", header.parse().unwrap());
        }
        request
    };
    // A W3C traceparent: the run carries the caller's trace id, and GetRun says so.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = client
        .raw()
        .start(start(
            pb::Area::Users,
            Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(traced.trace_id, trace_id);
    assert_eq!(
        client.get_run(&id, &traced.id).await.unwrap().trace_id,
        trace_id
    );
    // A malformed header is ignored (as W3C Trace Context asks): the run starts a trace of its own.
    let own = client
        .raw()
        .start(start(
            pb::Area::Courses,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.trace_id.len(), 32);
    assert!(
        own.trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_ne!(own.trace_id, "0".repeat(32));
    assert_ne!(own.trace_id, trace_id);
}
