//! Proves `learnsync mapping get|set` against a real server and the Salesforce simulator: the
//! YAML a `get` prints is what a `set` reads, `--check` saves nothing, a set saves the next
//! version, and a mapping the org cannot take is refused with its problems named.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use learnsync_e2e::{TestSystem, tokens};

/// Runs the CLI with the operator token against the system's server.
async fn cli(system: &TestSystem, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync"));
    command
        .args(args)
        .env("LEARNSYNC_ENDPOINT", &system.server.endpoint)
        .env("LEARNSYNC_TOKEN", tokens::OPERATOR)
        .env_remove("LEARNSYNC_TOKEN_FILE");
    command.output().await.unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn mapping_files_round_trip_through_the_cli() {
    let params = learnsync_sim::GenerateParams {
        users: Some(3),
        ..Default::default()
    };
    let system = TestSystem::start(&params, 0, |_| {}).await.unwrap();
    let connection = system.connection_id.clone();
    let dir = tempfile::tempdir().unwrap();

    let got = cli(
        &system,
        &["mapping", "get", &connection, "--output", "yaml"],
    )
    .await;
    assert!(got.status.success(), "{}", text(&got));
    let yaml = String::from_utf8(got.stdout).unwrap();
    assert!(yaml.contains("version: 0"), "{yaml}");
    assert!(yaml.contains("object: Docebo_User__c"), "{yaml}");

    // Users' first names cut to 20 characters: a change the org takes.
    let mut document: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    for field in document["entities"]["users"]["fields"]
        .as_array_mut()
        .unwrap()
    {
        if field["field"] == "First_Name__c" {
            field["length"] = 20.into();
            field["truncate"] = true.into();
        }
    }
    let changed = serde_norway::to_string(&document).unwrap();
    let file = dir.path().join("mapping.yaml");
    std::fs::write(&file, &changed).unwrap();
    let file = file.to_str().unwrap();

    let checked = cli(
        &system,
        &["mapping", "set", &connection, "--file", file, "--check"],
    )
    .await;
    assert!(checked.status.success(), "{}", text(&checked));
    let after_check = cli(
        &system,
        &["mapping", "get", &connection, "--output", "json"],
    )
    .await;
    let after_check: serde_json::Value = serde_json::from_slice(&after_check.stdout).unwrap();
    assert_eq!(after_check["version"], 0);

    let set = cli(&system, &["mapping", "set", &connection, "--file", file]).await;
    assert!(set.status.success(), "{}", text(&set));
    assert!(text(&set).contains("version 1"), "{}", text(&set));
    let after_set = cli(
        &system,
        &["mapping", "get", &connection, "--output", "json"],
    )
    .await;
    let after_set: serde_json::Value = serde_json::from_slice(&after_set.stdout).unwrap();
    assert_eq!(after_set["version"], 1);
    let users = after_set["entities"]["users"]["fields"].as_array().unwrap();
    let first = users
        .iter()
        .find(|field| field["field"] == "First_Name__c")
        .unwrap();
    assert_eq!(
        (first["length"].clone(), first["truncate"].clone()),
        (20.into(), true.into())
    );

    // A JSON file naming a field the org lacks: refused, the problem named, nothing saved.
    let mut bad = after_set.clone();
    bad["entities"]["users"]["fields"][0]["field"] = "Nickname__c".into();
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let refused = cli(
        &system,
        &[
            "mapping",
            "set",
            &connection,
            "--file",
            bad_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("mapping.entities.users.fields[0]")
            && text(&refused).contains("Nickname__c"),
        "{}",
        text(&refused)
    );
    let last = cli(
        &system,
        &["mapping", "get", &connection, "--output", "json"],
    )
    .await;
    let last: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    assert_eq!(last["version"], 1);
}
