//! A run's trace in a tracing backend: the server and the workers export their spans over OTLP to
//! a real OTLP/gRPC collector, during a real sync on the simulators. The call that started the
//! run, its jobs and their upstream calls are one trace, the run's; nothing exported holds a
//! credential.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use learnsync_client::pb;
use learnsync_e2e::otlp::{Collector, ReceivedSpan};
use learnsync_e2e::{TestSystem, eventually, manual, tokens};
use learnsync_sim::GenerateParams;

/// The trace id and parent span id a caller sends in its `traceparent`.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn start(
    system: &TestSystem,
    area: pb::Area,
    traceparent: Option<&str>,
) -> anyhow::Result<pb::Run> {
    let mut client = system.client().await?;
    client
        .configure(&system.connection_id, manual(area))
        .await?;
    let mut request = tonic::Request::new(pb::StartRequest {
        connection_id: system.connection_id.clone(),
        area: area as i32,
        timeframe: None,
        request_id: uuid::Uuid::new_v4().to_string(),
    });
    if let Some(header) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", header.parse()?);
    }
    Ok(client.raw().start(request).await?.into_inner())
}

/// The spans of a run's trace once every job's span has arrived: the call that started it, the
/// jobs, and every other span of the trace.
async fn trace_of(
    collector: &Collector,
    telemetry: &learnsync_telemetry::Guard,
    run: &pb::Run,
) -> anyhow::Result<Vec<ReceivedSpan>> {
    eventually(
        Duration::from_secs(20),
        &format!("the spans of run {}", run.id),
        || async {
            tokio::task::block_in_place(|| telemetry.flush());
            let trace: Vec<ReceivedSpan> = collector
                .spans()
                .into_iter()
                .filter(|span| span.trace_id == run.trace_id)
                .collect();
            let jobs = trace
                .iter()
                .filter(|span| span.name == "job" && span.attribute("run") == Some(&run.id))
                .count();
            Ok((jobs >= run.jobs.len() && !run.jobs.is_empty()).then_some(trace))
        },
    )
    .await
}

fn call_span<'t>(trace: &'t [ReceivedSpan], run: &pb::Run) -> &'t ReceivedSpan {
    let calls: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|span| span.name == "learnsync.v1.SyncService/Start")
        .collect();
    assert_eq!(calls.len(), 1, "one Start span in the trace: {trace:#?}");
    let call = calls[0];
    assert_eq!(call.kind, 2, "a server span");
    assert_eq!(call.attribute("rpc.system"), Some("grpc"));
    assert_eq!(
        call.attribute("rpc.method"),
        Some("/learnsync.v1.SyncService/Start")
    );
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(call.attribute("run_id"), Some(run.id.as_str()));
    call
}

/// Every job span of the run carries its trace id and the run's span as its parent; every
/// upstream call of the trace is a child of one of them. Answers the upstreams called.
fn check_jobs(trace: &[ReceivedSpan], run: &pb::Run) -> HashSet<String> {
    let run_uuid: uuid::Uuid = run.id.parse().expect("a run id");
    let run_span = hex::encode(learnsync_telemetry::run_span_id(run_uuid.as_u128()));
    let jobs: Vec<&ReceivedSpan> = trace.iter().filter(|span| span.name == "job").collect();
    let job_ids: HashSet<&str> = run.jobs.iter().map(|job| job.id.as_str()).collect();
    for job in &jobs {
        assert_eq!(job.trace_id, run.trace_id);
        assert_eq!(
            job.parent_span_id, run_span,
            "a job's parent is the run's span"
        );
        assert_eq!(job.attribute("trace_id"), Some(run.trace_id.as_str()));
        assert!(job_ids.contains(job.attribute("job").unwrap_or_default()));
    }
    let job_spans: HashSet<&str> = jobs.iter().map(|job| job.span_id.as_str()).collect();
    let calls: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|span| span.name.starts_with("docebo ") || span.name.starts_with("salesforce "))
        .collect();
    for call in &calls {
        assert!(
            job_spans.contains(call.parent_span_id.as_str()),
            "an upstream call is a child of its job's span: {call:#?}"
        );
        assert_eq!(call.kind, 3, "a client span");
        let path = call.attribute("url.path").unwrap_or_default();
        assert!(path.starts_with('/') && !path.contains('?'), "{path}");
        assert!(call.attribute("http.response.status_code").is_some());
        assert!(call.attribute("http.request.method").is_some());
    }
    calls
        .iter()
        .filter_map(|call| call.attribute("upstream").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_in_the_tracing_backend() {
    let collector = Collector::start().await.unwrap();
    // The first subscriber of this test binary: the harness's own init then does nothing.
    let telemetry = learnsync_telemetry::init_with(
        learnsync_telemetry::Output::Test,
        "warn",
        "learnsync-e2e",
        Some(learnsync_telemetry::Otlp::endpoint(collector.endpoint())),
    );
    let params = GenerateParams {
        users: Some(30),
        courses: Some(6),
        learning_plans: Some(2),
        sessions_per_course: Some(1),
        course_enrollments: Some(40),
        learning_plan_enrollments: Some(5),
        session_enrollments: Some(5),
        bad_records: Some(false),
        ..GenerateParams::default()
    };
    let system = TestSystem::start(&params, 1, |_| {}).await.unwrap();

    // A caller with a traceparent: the run, the call and the jobs are in the caller's trace.
    let started = start(
        &system,
        pb::Area::Users,
        Some(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
    )
    .await
    .unwrap();
    assert_eq!(started.trace_id, CALLER_TRACE);
    let users = system
        .wait_for_run(&started.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(users.state, pb::RunState::Succeeded as i32);
    let trace = trace_of(&collector, &telemetry, &users).await.unwrap();
    let call = call_span(&trace, &users);
    assert_eq!(
        call.parent_span_id, CALLER_SPAN,
        "parented on the caller's span"
    );
    assert_eq!(
        call.attribute("connection_id"),
        Some(system.connection_id.as_str())
    );
    let upstreams = check_jobs(&trace, &users);
    assert!(upstreams.contains("docebo") && upstreams.contains("salesforce"));

    // A caller without one: the run's trace id (GetRun says it) is the one the call started.
    let started = start(&system, pb::Area::Courses, None).await.unwrap();
    let courses = system
        .wait_for_run(&started.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(courses.state, pb::RunState::Succeeded as i32);
    assert_ne!(courses.trace_id, CALLER_TRACE);
    let trace = trace_of(&collector, &telemetry, &courses).await.unwrap();
    let call = call_span(&trace, &courses);
    assert_eq!(call.parent_span_id, "", "the call started the trace");
    let upstreams = check_jobs(&trace, &courses);
    assert!(upstreams.contains("docebo") && upstreams.contains("salesforce"));

    // No span holds a credential: the connection's secrets, the bearer token, the upstreams'
    // tokens (the client's authorization header never becomes an attribute).
    let docebo = system.docebo.config();
    let salesforce = system.salesforce.config();
    let secrets = [
        docebo.client_secret.as_str(),
        docebo.password.as_str(),
        salesforce.client_secret.as_str(),
        tokens::OPERATOR,
    ];
    let spans = collector.spans();
    assert!(spans.iter().all(|span| span.service == "learnsync-e2e"));
    for span in &spans {
        for (key, value) in span.attributes.iter().chain(&span.event_attributes) {
            for secret in secrets {
                assert!(!value.contains(secret), "{key} holds a secret: {span:#?}");
            }
            let key = key.to_lowercase();
            assert!(
                !["authorization", "token", "secret", "password", "cookie"]
                    .iter()
                    .any(|word| key.contains(word)),
                "{key}: {span:#?}"
            );
            assert!(
                !value.to_lowercase().contains("bearer "),
                "{key}: {span:#?}"
            );
        }
    }
    system.stop().await.unwrap();
}
