// Proves real Salesforce client libraries (Python simple-salesforce, Node jsforce) work against the Salesforce simulator, Bulk API 2.0 ingest and query included: each script exits 0 and the org then holds its records.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use learnsync_sim::{SalesforceConfig, SalesforceSim};

const HOW_TO: &str = "run `bash scripts/test.sh`, which installs simple-salesforce and jsforce into .learnsync/ and sets LEARNSYNC_PYTHON and LEARNSYNC_NODE_PATH";

/// Reads a path from the environment; a relative path is taken from the workspace root when it does
/// not exist relative to the crate (cargo runs tests in the crate directory).
fn env_path(name: &str) -> PathBuf {
    let value = std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HOW_TO}"));
    let path = PathBuf::from(&value);
    if path.is_absolute() || path.exists() {
        return path;
    }
    let from_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&path);
    if from_root.exists() {
        return from_root;
    }
    path
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

async fn run(mut command: tokio::process::Command) -> std::process::Output {
    command.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("client script timed out")
        .expect("client script could not start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_salesforce_bulk2_and_collections() {
    let python = env_path("LEARNSYNC_PYTHON");
    let sim = SalesforceSim::start(SalesforceConfig::default())
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(script("simple_salesforce_check.py"))
        .arg(sim.base_url())
        .arg(&sim.config().client_id)
        .arg(&sim.config().client_secret);
    let output = run(command).await;
    assert!(
        output.status.success(),
        "simple-salesforce check failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("checks passed"));
    assert_eq!(sim.record_count("Docebo_User__c"), 10);
    assert_eq!(sim.record_count("Docebo_Course__c"), 1);
    assert_eq!(sim.record_count("Docebo_Course_Enrollment__c"), 10);
    let enrollments = sim.records("Docebo_Course_Enrollment__c").unwrap();
    assert!(
        enrollments
            .iter()
            .all(|e| e["Status__c"] == "Completed" && e["Score__c"] == 87.0)
    );
    let counters = sim.counters();
    assert!(counters.contains_key("PUT /services/data/v62.0/jobs/ingest/{id}/batches"));
    assert!(
        counters.contains_key("PATCH /services/data/v62.0/composite/sobjects/{sobject}/{field}")
    );
    // Three result sets of the Bulk API 2.0 query, each read by locator.
    assert_eq!(counters["POST /services/data/v62.0/jobs/query"], 1);
    assert_eq!(
        counters["GET /services/data/{version}/jobs/query/{id}/results"],
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsforce_bulk2_and_collections() {
    let node_path = env_path("LEARNSYNC_NODE_PATH");
    assert!(
        node_path.join("jsforce").exists(),
        "{} holds no jsforce: {HOW_TO}",
        node_path.display()
    );
    let sim = SalesforceSim::start(SalesforceConfig::default())
        .await
        .unwrap();
    let mut command = tokio::process::Command::new("node");
    command
        .env("LEARNSYNC_NODE_PATH", &node_path)
        .arg(script("jsforce_check.mjs"))
        .arg(sim.base_url())
        .arg(&sim.config().client_id)
        .arg(&sim.config().client_secret);
    let output = run(command).await;
    assert!(
        output.status.success(),
        "jsforce check failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("checks passed"));
    // 10 upserted + 1 valid of the mixed pair - 2 deleted.
    assert_eq!(sim.record_count("Docebo_User__c"), 9);
    assert_eq!(sim.record_count("Docebo_Course__c"), 20);
    let courses = sim.records("Docebo_Course__c").unwrap();
    assert!(
        courses
            .iter()
            .all(|c| c["Type__c"] == "Webinar" && c["Credits__c"] == 1.5)
    );
    // The Bulk API 2.0 query went through the simulator's query jobs.
    let counters = sim.counters();
    assert_eq!(counters["POST /services/data/v62.0/jobs/query"], 1);
    assert!(counters["GET /services/data/{version}/jobs/query/{id}/results"] >= 1);
}
