//! Proves what an operator with grpcurl relies on: health and reflection (v1 and v1alpha) list and
//! describe every method; StreamLogs reads from the start, a position, a level or the first error,
//! follows events written after it opened, ends when the followed run ends, and ends cleanly when
//! the server shuts down; GetStatus points at the first error.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt as _;
use learnsync_client::pb;
use learnsync_e2e::{TestServer, create_sample, details, manual};
use learnsync_store::model::{JobState, LogLevel, NewLogEvent};
use tonic::Code;
use uuid::Uuid;

async fn append(server: &TestServer, connection: &str, events: &[NewLogEvent]) -> Vec<i64> {
    let conn = server.store.conn().await.unwrap();
    learnsync_store::logs::append(&conn, Uuid::parse_str(connection).unwrap(), events)
        .await
        .unwrap()
}

async fn collect(stream: tonic::Streaming<pb::LogEvent>) -> Vec<pb::LogEvent> {
    stream.map(|event| event.unwrap()).collect().await
}

#[tokio::test]
async fn health_and_both_reflection_versions_describe_the_api() {
    let server = TestServer::start().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "learnsync.v1.SyncService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1;
    use tonic_reflection::pb::v1alpha;
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = futures::stream::iter(vec![
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "learnsync.v1.SyncService".into(),
                ),
            ),
        },
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let listed = answers.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"learnsync.v1.SyncService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    let file = answers.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        file.message_response
    else {
        panic!("expected descriptors");
    };
    let descriptor = <prost_types::FileDescriptorProto as prost::Message>::decode(
        files.file_descriptor_proto[0].as_slice(),
    )
    .unwrap();
    let methods: Vec<String> = descriptor.service[0]
        .method
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    for method in [
        "CreateConnection",
        "Configure",
        "Start",
        "Stop",
        "Resynchronize",
        "GetStatus",
        "StreamLogs",
    ] {
        assert!(
            methods.contains(&method.to_string()),
            "{method} missing from {methods:?}"
        );
    }

    let mut old = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let requests = futures::stream::iter(vec![v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    }]);
    let mut answers = old
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let listed = answers.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed.message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "learnsync.v1.SyncService")
    );
}

#[tokio::test]
async fn logs_read_from_a_position_a_level_or_the_first_error() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    let run = client.start(&id, pb::Area::Users, None).await.unwrap();
    let run_id = Uuid::parse_str(&run.id).unwrap();
    let job_id = Uuid::parse_str(&run.jobs[0].id).unwrap();
    let sequences = append(
        &server,
        &id,
        &[
            NewLogEvent::new(LogLevel::Debug, "page read")
                .job(run_id, job_id)
                .field("page", 1),
            NewLogEvent::new(LogLevel::Error, "record not written")
                .job(run_id, job_id)
                .record("12301")
                .code("STRING_TOO_LONG"),
            NewLogEvent::new(LogLevel::Error, "another record not written")
                .job(run_id, job_id)
                .record("12302")
                .code("REQUIRED_FIELD_MISSING"),
        ],
    )
    .await;
    let conn = server.store.conn().await.unwrap();
    learnsync_store::testing::finish_jobs_as_worker(&conn, run_id, JobState::SucceededWithErrors)
        .await
        .unwrap();

    let all = collect(
        client
            .stream_logs(pb::StreamLogsRequest {
                connection_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap(),
    )
    .await;
    let numbers: Vec<i64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as i64).collect::<Vec<_>>(),
        "gapless, in order"
    );
    assert!(all.iter().any(|e| e.message == "users run queued"));
    assert_eq!(
        all.last().unwrap().message,
        "users run finished: succeeded_with_errors"
    );

    let errors = collect(
        client
            .stream_logs(pb::StreamLogsRequest {
                connection_id: id.clone(),
                run_id: run.id.clone(),
                min_level: pb::LogLevel::Error as i32,
                ..Default::default()
            })
            .await
            .unwrap(),
    )
    .await;
    let keys: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.record_key.as_str(), e.error_code.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("12301", "STRING_TOO_LONG"),
            ("12302", "REQUIRED_FIELD_MISSING")
        ]
    );

    let status = client.get_status(&id, &[pb::Area::Users]).await.unwrap();
    assert_eq!(status.areas[0].first_error_sequence, sequences[1]);
    let from_error = collect(
        client
            .stream_logs(pb::StreamLogsRequest {
                connection_id: id.clone(),
                run_id: run.id.clone(),
                job_id: run.jobs[0].id.clone(),
                position: Some(pb::stream_logs_request::Position::FromFirstError(true)),
                ..Default::default()
            })
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(from_error.first().unwrap().sequence, sequences[1]);
    assert_eq!(
        from_error.len(),
        2,
        "the job's events from its first error on"
    );
    let from_position = collect(
        client
            .stream_logs(pb::StreamLogsRequest {
                connection_id: id.clone(),
                position: Some(pb::stream_logs_request::Position::FromSequence(
                    sequences[2],
                )),
                ..Default::default()
            })
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(from_position.first().unwrap().sequence, sequences[2]);

    let error = client
        .stream_logs(pb::StreamLogsRequest {
            connection_id: id.clone(),
            job_id: run.jobs[0].id.clone(),
            position: Some(pb::stream_logs_request::Position::FromFirstError(true)),
            min_level: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut fields = details::fields(&error);
    fields.sort();
    fields.dedup();
    assert_eq!(fields, vec!["min_level", "run_id"]);
}

#[tokio::test]
async fn a_following_stream_delivers_new_events_and_ends_with_its_run() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    let run = client.start(&id, pb::Area::Users, None).await.unwrap();
    let run_id = Uuid::parse_str(&run.id).unwrap();
    let mut stream = client
        .stream_logs(pb::StreamLogsRequest {
            connection_id: id.clone(),
            run_id: run.id.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.message, "users run queued");

    // Written after the stream opened: delivered without the caller asking again.
    append(
        &server,
        &id,
        &[NewLogEvent::new(LogLevel::Info, "written later").run(run_id)],
    )
    .await;
    let later = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the event arrives while following")
        .unwrap()
        .unwrap();
    assert_eq!(later.message, "written later");

    client.stop(&id, pb::Area::Users).await.unwrap();
    let rest: Vec<pb::LogEvent> = tokio::time::timeout(Duration::from_secs(10), collect(stream))
        .await
        .expect("the stream ends once the run is over");
    let messages: Vec<&str> = rest.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        vec!["users run stop requested", "users run finished: stopped"]
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    let mut stream = client
        .stream_logs(pb::StreamLogsRequest {
            connection_id: id.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // The connection's log is empty: the stream waits for events.
    let waiting = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(waiting.is_err(), "nothing to deliver yet");
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends at shutdown");
    assert!(end.is_none(), "ended with OK, not an error: {end:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    let error = client.get_connection(&id).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_runs_by_state() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    client.start(&id, pb::Area::Users, None).await.unwrap();
    let refused = client.start(&id, pb::Area::Users, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let text = reqwest::get(format!("{}/metrics", server.metrics_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Counter and gauge samples only: histogram lines name methods too.
    let line = |needle: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("learnsync_grpc_requests_total{") || l.starts_with("learnsync_runs{")
            })
            .find(|l| l.contains(needle))
            .map(str::to_string)
    };
    let created = line("method=\"/learnsync.v1.SyncService/CreateConnection\"").unwrap();
    assert!(
        created.contains("code=\"0\"") && created.ends_with(" 1"),
        "{created}"
    );
    let refused = line("code=\"9\",method=\"/learnsync.v1.SyncService/Start\"").unwrap();
    assert!(refused.ends_with(" 1"), "{refused}");
    let queued = line("learnsync_runs{state=\"queued\"}").unwrap();
    assert!(queued.ends_with(" 1"), "{queued}");
    assert!(text.contains("learnsync_grpc_request_seconds_bucket"));
}
