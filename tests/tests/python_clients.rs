// Proves Python can use learnsync's gRPC API both ways: a client generated from proto/ by grpcio-tools runs a full sync scenario, and a reflection-only client (no generated code, no .proto) calls it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use learnsync_client::pb;
use learnsync_e2e::{TestServer, TestSystem, create_sample, tokens};
use learnsync_sim::{Faults, GenerateParams};
use serde_json::Value;

const HOW_TO: &str = "LEARNSYNC_PYTHON is not set: run `bash scripts/test.sh`, which installs grpcio, grpcio-tools, grpcio-reflection and protobuf into .learnsync/venv and sets LEARNSYNC_PYTHON";

/// The Python interpreter holding the gRPC packages. Never skipped: unset is a failure.
fn python() -> PathBuf {
    let value = std::env::var("LEARNSYNC_PYTHON").unwrap_or_else(|_| panic!("{HOW_TO}"));
    let path = PathBuf::from(&value);
    if path.is_absolute() || path.exists() {
        return path;
    }
    // Relative: from the workspace root (cargo runs tests in the crate directory).
    repo_root().join(path)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs a check script (the token in its environment, never in argv), requires exit 0, and
/// returns its `RESULT` JSON.
async fn run_check(python: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script(name))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("LEARNSYNC_TOKEN", tokens::OPERATOR)
        .current_dir(repo_root())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} timed out"))
        .unwrap_or_else(|error| panic!("{name} could not start with {python:?}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    eprintln!(
        "{name} passed in {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    let result = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{name} printed no RESULT line:\n{stdout}"));
    serde_json::from_str(result).unwrap()
}

fn text<'a>(result: &'a Value, key: &str) -> &'a str {
    result[key]
        .as_str()
        .unwrap_or_else(|| panic!("RESULT has no {key}: {result}"))
}

fn platform() -> GenerateParams {
    GenerateParams {
        seed: 23,
        users: Some(25),
        courses: Some(6),
        learning_plans: Some(2),
        sessions_per_course: Some(1),
        course_enrollments: Some(20),
        learning_plan_enrollments: Some(4),
        session_enrollments: Some(4),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_proto_runs_a_full_scenario() {
    let python = python();
    let system = TestSystem::start(&platform(), 1, |_| {}).await.unwrap();
    // Every Docebo call takes a moment, so the courses run the script stops is still active
    // when Stop arrives.
    system.docebo.set_faults(Faults {
        latency_ms: 250,
        ..Faults::default()
    });
    let proto_dir = repo_root().join("proto");
    let docebo = system.docebo.config();
    let salesforce = system.salesforce.config();
    let result = run_check(
        &python,
        "generated_client_check.py",
        &[
            "--endpoint",
            &system.server.endpoint,
            "--proto-dir",
            proto_dir.to_str().unwrap(),
            "--docebo-url",
            system.docebo.base_url(),
            "--docebo-client-id",
            &docebo.client_id,
            "--salesforce-url",
            system.salesforce.base_url(),
            "--salesforce-client-id",
            &salesforce.client_id,
        ],
        &[
            ("DOCEBO_CLIENT_SECRET", &docebo.client_secret),
            ("SALESFORCE_CLIENT_SECRET", &salesforce.client_secret),
        ],
    )
    .await;

    // What the script did, seen from Rust.
    let mut client = system.client().await.unwrap();
    let connection_id = text(&result, "connection_id");
    let connection = client.get_connection(connection_id).await.unwrap();
    assert_eq!(connection.display_name, text(&result, "display_name"));
    assert_ne!(connection_id, system.connection_id);

    let users = client
        .get_run(connection_id, text(&result, "users_run_id"))
        .await
        .unwrap();
    assert_eq!(users.state, pb::RunState::Succeeded as i32, "{users:?}");
    assert_eq!(users.trigger, pb::Trigger::Start as i32);
    let courses = client
        .get_run(connection_id, text(&result, "courses_run_id"))
        .await
        .unwrap();
    assert_eq!(courses.state, pb::RunState::Stopped as i32, "{courses:?}");
    assert!(courses.stop_time.is_some());

    // The users the run wrote are in the Salesforce simulator, as many as the status said.
    let written = system.salesforce.record_count("Docebo_User__c");
    assert!(written > 0);
    assert_eq!(
        result["users_records_imported"].as_u64(),
        Some(written as u64),
        "{result}"
    );
    let status = client.get_status(connection_id, &[]).await.unwrap();
    assert_eq!(status.areas[0].records_imported, written as i64);

    // The log the script followed is the whole log of the run.
    let events = client
        .stream_logs(pb::StreamLogsRequest {
            connection_id: connection_id.to_string(),
            run_id: users.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let events = collect(events).await;
    assert_eq!(
        result["users_log_events"].as_u64(),
        Some(events.len() as u64),
        "{result}"
    );
    assert_eq!(
        result["users_last_sequence"].as_i64(),
        events.last().map(|e| e.sequence)
    );
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_with_only_reflection_calls_the_service() {
    let python = python();
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let existing = create_sample(&mut client, "made in rust").await.unwrap();
    let result = run_check(
        &python,
        "reflection_client_check.py",
        &[
            "--endpoint",
            &server.endpoint,
            "--connection-id",
            &existing,
            "--display-name",
            "made in rust",
        ],
        &[],
    )
    .await;

    let services: Vec<&str> = result["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(services.contains(&"learnsync.v1.SyncService"), "{result}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{result}");

    // The connection the script built from JSON exists, with what it asked for.
    let created = client
        .get_connection(text(&result, "created_connection_id"))
        .await
        .unwrap();
    assert_eq!(created.display_name, text(&result, "created_display_name"));
    assert_eq!(created.tenant, "acme");
    assert_eq!(
        created.unenrollment_policy,
        pb::UnenrollmentPolicy::Delete as i32
    );
    let info = created.credentials_info.unwrap();
    assert_eq!(info.docebo_grant, "password");
    assert_eq!(info.salesforce_grant, "client_credentials");
    let status = client
        .get_status(&created.id, &[pb::Area::Courses])
        .await
        .unwrap();
    let courses = &status.areas[0];
    assert!(courses.configured);
    assert_eq!(
        courses.config.as_ref().unwrap().course_category_ids,
        vec![3, 7]
    );
    server.stop().await.unwrap();
}

async fn collect(
    mut stream: impl futures::Stream<Item = Result<pb::LogEvent, tonic::Status>> + Unpin,
) -> Vec<pb::LogEvent> {
    use futures::StreamExt as _;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    events
}
