//! Proves the `learnsync-worker` binary runs jobs from its environment alone and, on SIGTERM, finishes its current write, hands its job back (queued, lease cleared, attempt kept) and exits cleanly; that a worker frozen (SIGSTOP) with a Salesforce write in flight is taken over only once that write has ended, and writes nothing once thawed (SIGCONT): Salesforce ends with what Docebo holds; and that it refuses a malformed `LEARNSYNC_UPSTREAM_ALLOW` at start-up.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Env, EnvOptions, test_settings};
use learnsync_sim::{EntityKind, Faults, GenerateParams};
use learnsync_store::model::{Area, JobState, RunState};
use tokio::io::AsyncBufReadExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_job_back_and_exits() {
    let key = [7u8; 32];
    let env = Env::with(
        GenerateParams {
            seed: 61,
            bad_records: Some(false),
            ..GenerateParams::default()
        },
        EnvOptions {
            cipher_key: Some(key),
            ..EnvOptions::default()
        },
    )
    .await;
    env.docebo.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync-worker"))
        .env_clear()
        .env("DATABASE_URL", env.store.database_url())
        .env("LEARNSYNC_SECRET_KEY", hex::encode(key))
        .env("LEARNSYNC_WORKER_ID", "binary")
        .env(
            "LEARNSYNC_UPSTREAM_ALLOW",
            learnsync_e2e::SIM_UPSTREAM_ALLOW,
        )
        .env("LEARNSYNC_WORKER_POLL_INTERVAL", "200ms")
        .env("LEARNSYNC_WORKER_PAGE_SIZE", "10")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run = env.start(Area::Users, (None, None)).await;
    env.wait_until(run.id, Duration::from_secs(20), "progress", |run| {
        run.jobs[0].counts.written > 0
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let handed = env.run(run.id).await;
    let job = &handed.jobs[0];
    assert_eq!(job.state, JobState::Queued, "{handed:#?}");
    assert_eq!(job.attempt, 1);
    assert!(job.counts.written > 0 && job.counts.written < env.docebo_keys("users").len() as i64);
    // Every confirmed write is counted: nothing half-written.
    assert_eq!(
        env.salesforce.record_count("Docebo_User__c") as i64,
        job.counts.written
    );

    env.docebo.clear_faults();
    let worker = env.spawn_worker(test_settings("in-process"));
    let run = env.wait_final(run.id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(
        env.salesforce_keys("Docebo_User__c", "Docebo_User_Id__c"),
        env.docebo_keys("users")
    );
    worker.stop().await;
}

/// A `learnsync-worker` process with short leases (`lease`, a heartbeat every 300 ms) and a write
/// grace of `grace` (its request timeout), one job at a time, its warnings (its log lines, on standard output) gathered.
struct WorkerProcess {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl WorkerProcess {
    fn spawn(env: &Env, key: [u8; 32], id: &str, lease: &str, grace: &str) -> WorkerProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync-worker"))
            .env_clear()
            .env("DATABASE_URL", env.store.database_url())
            .env("LEARNSYNC_SECRET_KEY", hex::encode(key))
            .env("LEARNSYNC_WORKER_ID", id)
            .env("LEARNSYNC_WORKER_CONCURRENCY", "1")
            .env("LEARNSYNC_WORKER_LEASE", lease)
            .env("LEARNSYNC_WORKER_HEARTBEAT", "300ms")
            .env("LEARNSYNC_WORKER_HTTP_TIMEOUT", grace)
            // One write in flight: the write the simulator holds is the job's first chunk, and
            // nothing commits after it (with several, a later chunk could be the one held while
            // the first commits with the values read before the freeze, which a takeover then
            // rightly does not read again).
            .env("LEARNSYNC_WORKER_WRITES_IN_FLIGHT", "1")
            .env("LEARNSYNC_UPSTREAM_ALLOW", "http,127.0.0.1")
            .env("LEARNSYNC_WORKER_POLL_INTERVAL", "200ms")
            .env("LEARNSYNC_WORKER_PAGE_SIZE", "10")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let gathered = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = gathered.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        WorkerProcess { child, log }
    }

    async fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let sent = tokio::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    fn said(&self, text: &str) -> bool {
        self.log.lock().unwrap().contains(text)
    }

    async fn stop(mut self) {
        self.signal("-TERM").await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// Write calls the Salesforce simulator received (every data call but GETs and Bulk query jobs;
/// token requests are no writes).
fn salesforce_writes(env: &Env) -> u64 {
    env.salesforce
        .counters()
        .iter()
        .filter(|(call, _)| {
            call.contains("/services/data/")
                && !call.starts_with("GET ")
                && !call.contains("/jobs/query")
        })
        .map(|(_, count)| count)
        .sum()
}

async fn poll(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_taken_over_after_its_write_in_flight_and_writes_nothing_once_thawed() {
    let key = [9u8; 32];
    let env = Env::with(
        GenerateParams {
            seed: 67,
            users: Some(30),
            bad_records: Some(false),
            ..GenerateParams::default()
        },
        EnvOptions {
            cipher_key: Some(key),
            ..EnvOptions::default()
        },
    )
    .await;
    // A 3 s lease; after it runs out the job waits 10 s more (the request timeout) before another
    // worker may take it over.
    let (lease, grace) = (Duration::from_secs(3), Duration::from_secs(10));
    env.salesforce.hold_writes(1);
    let frozen = WorkerProcess::spawn(&env, key, "frozen", "3s", "10s");
    let run = env.start(Area::Users, (None, None)).await;
    // Its first write is in flight: received by Salesforce, not yet done. Freeze the worker.
    poll("the first write", Duration::from_secs(60), || {
        env.salesforce.held_writes() == 1
    })
    .await;
    frozen.signal("-STOP").await;
    let frozen_at = tokio::time::Instant::now();

    // Docebo changes while the worker is frozen: what it is writing is out of date.
    for user in env.docebo.items(EntityKind::Users) {
        let id = common::docebo_key(EntityKind::Users, &user);
        env.docebo
            .update(
                EntityKind::Users,
                &id,
                serde_json::json!({"first_name": format!("Thawed{id}")}),
            )
            .unwrap();
    }
    let other = WorkerProcess::spawn(&env, key, "other", "3s", "10s");

    // The frozen worker's lease has run out (its last heartbeat was sent before the freeze), but
    // its write may still be in flight: nobody has taken the job over. The write ends now, within
    // the grace, with the old values.
    tokio::time::sleep_until(frozen_at + lease + Duration::from_secs(1)).await;
    let waiting = env.run(run.id).await;
    // (The last heartbeat was sent at most a beat before the freeze: no takeover is allowed
    // before `frozen_at + lease + grace` less that beat.)
    assert!(
        frozen_at.elapsed() < lease + grace - Duration::from_secs(1),
        "the test itself was too slow to tell"
    );
    assert_eq!(
        waiting.jobs[0].attempt, 1,
        "taken over within the write grace: {waiting:#?}"
    );
    assert_eq!(env.salesforce.release_writes(), 1);

    // Then the other worker takes the job over and writes what Docebo holds now.
    let done = env.wait_final(run.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert_eq!(done.jobs[0].attempt, 2, "{done:#?}");
    let writes_before_thaw = salesforce_writes(&env);

    // Thawed, the first worker finds it lost the lease and writes nothing more.
    frozen.signal("-CONT").await;
    let thawed = tokio::time::Instant::now();
    while !frozen.said("lease lost") {
        assert!(
            thawed.elapsed() < Duration::from_secs(60),
            "the thawed worker did not give the job up: {}",
            frozen.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        salesforce_writes(&env),
        writes_before_thaw,
        "the thawed worker wrote to salesforce: {}",
        frozen.log.lock().unwrap()
    );
    let docebo: std::collections::BTreeMap<String, String> = env
        .docebo
        .items(EntityKind::Users)
        .iter()
        .map(|user| {
            (
                common::docebo_key(EntityKind::Users, user),
                user["first_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let salesforce: std::collections::BTreeMap<String, String> = env
        .salesforce
        .records("Docebo_User__c")
        .unwrap()
        .iter()
        .map(|record| {
            (
                record["Docebo_User_Id__c"].as_str().unwrap().to_string(),
                record["First_Name__c"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        salesforce,
        docebo,
        "frozen: {}\nother: {}",
        frozen.log.lock().unwrap(),
        other.log.lock().unwrap()
    );
    assert!(docebo.values().all(|name| name.starts_with("Thawed")));
    frozen.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn a_malformed_upstream_setting_stops_the_binary_at_start_up() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_learnsync-worker"))
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .env("LEARNSYNC_SECRET_KEY", hex::encode([7u8; 32]))
        .env("LEARNSYNC_UPSTREAM_ALLOW", "http,10.0.0.0/33")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "LEARNSYNC_UPSTREAM_ALLOW: \"10.0.0.0/33\" is not an allowed entry: the prefix \
             length must be 0 to 32"
        ),
        "{stderr}"
    );
}
