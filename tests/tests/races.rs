//! Proves the races between callers, workers and tenants end well (real Postgres, a real server
//! over gRPC and HTTP): one connection's webhook backlog delays no other connection's message and
//! stays within its quota; two concurrent credential updates both stick; Stop racing a job's end
//! or a first claim never fails; a starting server purges webhook messages handled more than 7
//! days ago.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_client::pb;
use learnsync_e2e::{TestServer, create_sample, eventually, manual, sample_connection, tokens};
use learnsync_store::model::{Area, Mode, Trigger};
use learnsync_store::runs::RunRequest;
use learnsync_store::worker::{self as store_worker, Lease, Outcome};
use learnsync_store::{areas, connections, realtime, runs};
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

/// Makes a connection's enrollments area one that webhooks act on: in realtime mode, after a
/// first synchronization. The first synchronizations are arranged in SQL (no workers here).
async fn webhooks_tracked(server: &TestServer, connection_id: Uuid) {
    let conn = server.store.conn().await.unwrap();
    let settings = |mode: Mode| areas::AreaSettings {
        enabled: true,
        mode,
        interval_seconds: 86_400,
        course_category_ids: Vec::new(),
        full_interval_seconds: 86_400,
    };
    for area in [Area::Users, Area::Courses] {
        areas::configure(&conn, connection_id, area, &settings(Mode::Manual))
            .await
            .unwrap();
    }
    let first_success =
        "UPDATE area_configs SET first_success_time = now() WHERE connection_id = $1";
    conn.execute(first_success, &[&connection_id])
        .await
        .unwrap();
    let enrollments = settings(Mode::Realtime);
    areas::configure(&conn, connection_id, Area::Enrollments, &enrollments)
        .await
        .unwrap();
    conn.execute(first_success, &[&connection_id])
        .await
        .unwrap();
}

/// Starts an enrollments run no worker will take: the area stays busy.
async fn busy(server: &TestServer, connection_id: Uuid) {
    let mut conn = server.store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    areas::lock(&tx, connection_id, Area::Enrollments)
        .await
        .unwrap();
    let request = RunRequest::full(Trigger::Start, (None, None), false);
    runs::create(&tx, connection_id, Area::Enrollments, &request)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn enrollment_message(message_id: &str, user_id: i64) -> serde_json::Value {
    json!({"message_id": message_id, "event": "course.enrollment.created",
        "payload": {"user_id": user_id, "course_id": 7, "fired_at": "2024-03-20 09:01:02"}})
}

async fn webhook_url(server: &TestServer, connection_id: &str) -> String {
    let mut client = server.client(tokens::ACME).await.unwrap();
    let endpoint = client.get_webhook_endpoint(connection_id).await.unwrap();
    format!("{}{}", server.webhook_base, endpoint.path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_webhook_backlog_does_not_delay_anothers_message() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.client(tokens::ACME).await.unwrap();
    let busy_id = create_sample(&mut client, "busy").await.unwrap();
    let quiet_id = create_sample(&mut client, "quiet").await.unwrap();
    let (busy_uuid, quiet_uuid) = (busy_id.parse().unwrap(), quiet_id.parse().unwrap());
    webhooks_tracked(&server, busy_uuid).await;
    webhooks_tracked(&server, quiet_uuid).await;
    // The busy connection has a run that does not end, and a backlog larger than a dispatch
    // batch, all of it older than the quiet connection's one message.
    busy(&server, busy_uuid).await;
    {
        let conn = server.store.conn().await.unwrap();
        for n in 0..600 {
            let id = format!("busy-{n}");
            let body = enrollment_message(&id, n);
            realtime::record_webhook(&conn, busy_uuid, &id, "course.enrollment.created", &body)
                .await
                .unwrap();
        }
    }
    let answer = reqwest::Client::new()
        .post(webhook_url(&server, &quiet_id).await)
        .json(&enrollment_message("quiet-1", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    eventually(
        Duration::from_secs(20),
        "the quiet connection's message handled by a run",
        || {
            let store = server.store.clone();
            async move {
                let conn = store.conn().await?;
                let counts = realtime::message_counts(&conn, quiet_uuid).await?;
                let active = runs::active(&conn, quiet_uuid, Area::Enrollments).await?;
                let handled =
                    counts == (1, 0) && active.is_some_and(|run| run.trigger == Trigger::Webhook);
                Ok(handled.then_some(()))
            }
        },
    )
    .await
    .unwrap();
    let conn = server.store.conn().await.unwrap();
    assert_eq!(
        realtime::message_counts(&conn, busy_uuid).await.unwrap(),
        (600, 600),
        "the busy connection's messages wait for its run to end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_webhook_quota_is_told_to_retry_and_nothing_is_recorded() {
    learnsync_e2e::init_tracing();
    let database_url = learnsync_store::testing::fresh_database().await.unwrap();
    let cipher = learnsync_store::secrets::Cipher::random();
    let server = TestServer::start_with(&database_url, cipher, |options| {
        options.realtime.webhook_max_pending = 3;
    })
    .await
    .unwrap();
    let mut client = server.client(tokens::ACME).await.unwrap();
    let id = create_sample(&mut client, "flooded").await.unwrap();
    let uuid: Uuid = id.parse().unwrap();
    webhooks_tracked(&server, uuid).await;
    // Messages wait while the area's run is active: the backlog only grows.
    busy(&server, uuid).await;
    let url = webhook_url(&server, &id).await;
    let http = reqwest::Client::new();
    let post = |message_id: &str| {
        http.post(&url)
            .json(&enrollment_message(message_id, 1))
            .send()
    };
    for n in 0..3 {
        assert_eq!(post(&format!("m{n}")).await.unwrap().status(), 200);
    }
    let refused = post("m3").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after = refused.headers().get("retry-after").unwrap().to_str();
    assert!(retry_after.unwrap().parse::<u64>().unwrap() > 0);
    // A replay of a message already recorded is still acknowledged; it adds nothing.
    assert_eq!(post("m1").await.unwrap().status(), 200);
    let conn = server.store.conn().await.unwrap();
    assert_eq!(
        realtime::message_counts(&conn, uuid).await.unwrap(),
        (3, 3),
        "the refused message is recorded nowhere"
    );
    // Another connection's quota is its own.
    let other = create_sample(&mut client, "other").await.unwrap();
    let other_url = webhook_url(&server, &other).await;
    let answer = http
        .post(&other_url)
        .json(&enrollment_message("m3", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// An update of one side of a connection's credentials (the other side left as it is).
fn credentials_update(
    id: &str,
    docebo_url: Option<&str>,
    salesforce_client: Option<&str>,
) -> pb::UpdateConnectionRequest {
    let mut connection = sample_connection(
        "unchanged",
        docebo_url.unwrap_or("https://acme.docebosaas.com"),
        "https://login.salesforce.com",
    );
    connection.id = id.to_string();
    let mut paths = Vec::new();
    match (docebo_url, salesforce_client) {
        (Some(_), _) => paths.push("docebo".to_string()),
        (None, Some(client_id)) => {
            if let Some(salesforce) = connection.salesforce.as_mut() {
                salesforce.client_id = client_id.to_string();
            }
            paths.push("salesforce".to_string());
        }
        (None, None) => {}
    }
    pb::UpdateConnectionRequest {
        connection: Some(connection),
        update_mask: Some(prost_types::FieldMask { paths }),
        request_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_credential_updates_both_stick() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.client(tokens::ACME).await.unwrap();
    let id = create_sample(&mut client, "credentials").await.unwrap();
    let uuid: Uuid = id.parse().unwrap();
    let mut lost = Vec::new();
    for round in 0..30 {
        let docebo_url = format!("https://round{round}.docebosaas.com");
        let salesforce_client = format!("salesforce-client-{round}");
        let (mut a, mut b) = (client.clone(), client.clone());
        let docebo = credentials_update(&id, Some(&docebo_url), None);
        let salesforce = credentials_update(&id, None, Some(&salesforce_client));
        let (first, second) =
            tokio::join!(a.update_connection(docebo), b.update_connection(salesforce));
        first.unwrap();
        second.unwrap();
        let conn = server.store.conn().await.unwrap();
        let (sealed, _) = connections::sealed_credentials(&conn, uuid).await.unwrap();
        let stored = server.cipher.open(uuid, &sealed).unwrap();
        if stored.docebo.base_url != docebo_url || stored.salesforce.client_id != salesforce_client
        {
            lost.push(round);
        }
    }
    assert!(
        lost.is_empty(),
        "rounds where an update was reverted: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_racing_a_job_finishing_never_fails() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.client(tokens::ACME).await.unwrap();
    let id = create_sample(&mut client, "stop race").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    let lease = Lease {
        length: Duration::from_secs(60),
        write_grace: Duration::from_secs(1),
    };
    let (mut internal, mut finish_errors, mut rounds) = (Vec::new(), Vec::new(), 0);
    for round in 0..60 {
        // The first run is a Start; once one completed, Resynchronize starts the next.
        match client.start(&id, pb::Area::Users, None).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                client
                    .resynchronize(&id, pb::Area::Users, None, false)
                    .await
                    .unwrap();
            }
            Err(status) => panic!("{status:?}"),
        }
        let job = {
            let mut conn = server.store.conn().await.unwrap();
            let tx = conn.transaction().await.unwrap();
            let mut jobs = store_worker::claim(&tx, "race-worker", lease, 10)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(jobs.len(), 1);
            jobs.remove(0)
        };
        let barrier = Barrier::new(2);
        let mut stopper = client.clone();
        let stop = async {
            barrier.wait().await;
            stopper.stop(&id, pb::Area::Users).await
        };
        let finish = async {
            let mut conn = server.store.conn().await?;
            barrier.wait().await;
            // As the worker ends a job: the job's end and the reaper in one transaction.
            let tx = conn.transaction().await?;
            store_worker::finish(&tx, &job, &Outcome::Done).await?;
            store_worker::reap_stopped(&tx).await?;
            tx.commit().await?;
            Ok::<_, learnsync_store::Error>(())
        };
        let (stopped, finished) = tokio::join!(stop, finish);
        match stopped {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
            Err(status) => internal.push((round, status.code(), status.message().to_string())),
        }
        if let Err(error) = finished {
            finish_errors.push((round, error.to_string()));
        }
        // Whichever won, the run ended: the next round can start.
        let conn = server.store.conn().await.unwrap();
        if runs::active(&conn, job.connection_id, Area::Users)
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        rounds += 1;
    }
    assert!(internal.is_empty(), "stop failed: {internal:?}");
    assert!(
        finish_errors.is_empty(),
        "the job's end failed: {finish_errors:?}"
    );
    assert_eq!(rounds, 60, "a run stayed active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_server_purges_webhook_messages_handled_past_their_retention() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.client(tokens::ACME).await.unwrap();
    let id: Uuid = create_sample(&mut client, "old webhooks")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let conn = server.store.conn().await.unwrap();
    for message_id in ["old", "recent", "pending"] {
        let body = enrollment_message(message_id, 1);
        realtime::record_webhook(&conn, id, message_id, "course.enrollment.created", &body)
            .await
            .unwrap();
    }
    // Arranged in SQL: "old" was handled eight days ago, "recent" six days ago.
    for (message_id, days) in [("old", 8), ("recent", 6)] {
        conn.execute(
            "UPDATE webhook_messages SET handle_time = now() - make_interval(days => $2), \
             outcome = 'run' WHERE message_id = $1",
            &[&message_id, &days],
        )
        .await
        .unwrap();
    }
    // Housekeeping runs when a server starts, then hourly.
    let second = TestServer::start_on(&server.database_url, server.cipher.clone())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the old message purged", || {
        let store = second.store.clone();
        async move {
            let conn = store.conn().await?;
            let counts = realtime::message_counts(&conn, id).await?;
            Ok((counts.0 == 2).then_some(counts))
        }
    })
    .await
    .unwrap();
    // The dispatcher handles the pending one meanwhile (enrollments are not tracked: ignored).
    assert_eq!(
        realtime::message_counts(&conn, id).await.unwrap().0,
        2,
        "the message handled six days ago and the one handled now stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_racing_a_first_claim_never_fails() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.client(tokens::ACME).await.unwrap();
    let id = create_sample(&mut client, "claim race").await.unwrap();
    client
        .configure(&id, manual(pb::Area::Users))
        .await
        .unwrap();
    let lease = Lease {
        length: Duration::from_secs(60),
        write_grace: Duration::from_secs(1),
    };
    let mut failures = Vec::new();
    for round in 0..60 {
        // Each run ends stopped (never completed), so Start starts the next one.
        client.start(&id, pb::Area::Users, None).await.unwrap();
        let barrier = Barrier::new(2);
        let mut stopper = client.clone();
        let stop = async {
            barrier.wait().await;
            stopper.stop(&id, pb::Area::Users).await
        };
        // A worker's claim of the queued run's job: the job, then its run (queued to running).
        let claim = async {
            let mut conn = server.store.conn().await?;
            barrier.wait().await;
            let tx = conn.transaction().await?;
            let jobs = store_worker::claim(&tx, "race-worker", lease, 10).await?;
            tx.commit().await?;
            Ok::<_, learnsync_store::Error>(jobs)
        };
        let (stopped, claimed) = tokio::join!(stop, claim);
        if let Err(status) = stopped {
            failures.push(format!("round {round}: stop: {status:?}"));
        }
        match claimed {
            // The stop came second: the worker ends the job stopped, as it would on seeing it.
            Ok(jobs) => {
                for job in jobs {
                    let mut conn = server.store.conn().await.unwrap();
                    let tx = conn.transaction().await.unwrap();
                    store_worker::finish(&tx, &job, &Outcome::Stopped)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            }
            Err(error) => failures.push(format!("round {round}: claim: {error}")),
        }
        if !failures.is_empty() {
            break;
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
