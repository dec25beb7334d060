//! The store's own statements against a real Postgres (a fresh database per test, from
//! `store::testing`): the claim, the fence, the ledger, the Docebo call budget, a run's shared
//! listings, the shared Docebo token and the end of a run.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_store::connections::{self, NewConnection, SealedCredentials};
use learnsync_store::model::{Area, JobKind, JobState, Mode, Run, RunState, UnenrollmentPolicy};
use learnsync_store::worker::{
    self as store_worker, Allowance, ClaimedJob, Heartbeat, Lease, LedgerWrite, Outcome, Progress,
    PublishedListing, Seen, SharedListing,
};
use learnsync_store::{Options, Store, areas, runs, testing};
use serde_json::json;
use uuid::Uuid;

const LEASE: Lease = lease(Duration::from_secs(30), Duration::ZERO);

/// A lease of `length`, taken over `write_grace` after it runs out.
const fn lease(length: Duration, write_grace: Duration) -> Lease {
    Lease {
        length,
        write_grace,
    }
}

async fn store() -> Store {
    let url = testing::fresh_database().await.unwrap();
    Store::connect(&Options {
        database_url: url,
        max_connections: 8,
    })
    .unwrap()
}

/// A connection with its users and courses areas enabled (the credentials are never opened here).
async fn connection(store: &Store) -> Uuid {
    let id = Uuid::new_v4();
    let conn = store.conn().await.unwrap();
    connections::insert(
        &conn,
        &NewConnection {
            id,
            tenant: "acme".into(),
            display_name: "acme".into(),
            credentials: SealedCredentials {
                sealed: vec![0; 16],
                key_id: "test".into(),
                docebo_grant: "password".into(),
                salesforce_grant: "client_credentials".into(),
                docebo_platform: format!("{id}.docebosaas.com"),
            },
            docebo_calls_per_hour: 1000,
            unenrollment_policy: UnenrollmentPolicy::MarkUnenrolled,
            unenrollment_guard: Default::default(),
        },
    )
    .await
    .unwrap();
    for area in [Area::Users, Area::Courses] {
        areas::configure(
            &conn,
            id,
            area,
            &areas::AreaSettings {
                enabled: true,
                mode: Mode::Manual,
                interval_seconds: 900,
                course_category_ids: Vec::new(),
                full_interval_seconds: 86_400,
            },
        )
        .await
        .unwrap();
    }
    id
}

async fn start(store: &Store, connection_id: Uuid, area: Area) -> Run {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let run = runs::start(&tx, connection_id, area, (None, None), None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    run
}

async fn resynchronize(
    store: &Store,
    connection_id: Uuid,
    timeframe: (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
) -> Run {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let run = runs::resynchronize(
        &tx,
        connection_id,
        Area::Users,
        timeframe,
        runs::ResyncOptions::default(),
        None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    run
}

async fn claim(store: &Store, owner: &str, lease: Lease, limit: i64) -> Vec<ClaimedJob> {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let jobs = store_worker::claim(&tx, owner, lease, limit).await.unwrap();
    tx.commit().await.unwrap();
    jobs
}

async fn finish(store: &Store, job: &ClaimedJob, outcome: Outcome) -> bool {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let held = store_worker::finish(&tx, job, &outcome).await.unwrap();
    tx.commit().await.unwrap();
    held
}

async fn run_of(store: &Store, connection_id: Uuid, run_id: Uuid) -> Run {
    let conn = store.conn().await.unwrap();
    runs::get(&conn, connection_id, run_id).await.unwrap()
}

async fn watermark(store: &Store, connection_id: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    let conn = store.conn().await.unwrap();
    areas::get(&conn, connection_id, Area::Users)
        .await
        .unwrap()
        .unwrap()
        .watermark
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_takes_due_jobs_in_order_skips_locked_ones_and_waits_for_predecessors() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let users = start(&store, connection_id, Area::Users).await;
    let courses = start(&store, connection_id, Area::Courses).await;
    let other_connection = connection(&store).await;
    let other = start(&store, other_connection, Area::Users).await;

    // The oldest run's job first, then the next run's jobs in their order.
    let first = claim(&store, "w1", LEASE, 1).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].run_id, users.id);
    assert_eq!(first[0].kind, JobKind::Users);
    assert_eq!(first[0].attempt, 1);
    let courses_job = claim(&store, "w1", LEASE, 1).await.remove(0);
    assert_eq!(courses_job.run_id, courses.id);
    assert_eq!(courses_job.kind, JobKind::Courses);

    // Two claimers at once: the first holds its row until it commits, the second skips it and
    // takes the next one.
    let mut conn_a = store.conn().await.unwrap();
    let tx_a = conn_a.transaction().await.unwrap();
    let a = store_worker::claim(&tx_a, "wa", LEASE, 1).await.unwrap();
    let mut conn_b = store.conn().await.unwrap();
    let tx_b = conn_b.transaction().await.unwrap();
    let b = store_worker::claim(&tx_b, "wb", LEASE, 10).await.unwrap();
    tx_a.commit().await.unwrap();
    tx_b.commit().await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, JobKind::LearningPlans);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].run_id, other.id);

    // Sessions wait for the courses job: nothing is claimable until it is final.
    assert!(claim(&store, "w2", LEASE, 10).await.is_empty());
    assert!(finish(&store, &courses_job, Outcome::Done).await);
    let sessions = claim(&store, "w2", LEASE, 10).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].kind, JobKind::Sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_the_stale_attempt_is_fenced_out() {
    let store = store().await;
    let connection_id = connection(&store).await;
    start(&store, connection_id, Area::Users).await;
    let stale = claim(&store, "dead", lease(Duration::ZERO, Duration::ZERO), 1)
        .await
        .remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let current = claim(&store, "alive", LEASE, 1).await.remove(0);
    assert_eq!(current.id, stale.id, "the expired lease is taken over");
    assert_eq!(current.attempt, stale.attempt + 1);

    let conn = store.conn().await.unwrap();
    assert_eq!(
        store_worker::heartbeat(&conn, stale.id, stale.attempt, LEASE)
            .await
            .unwrap(),
        Heartbeat::Lost
    );
    assert_eq!(
        store_worker::heartbeat(&conn, current.id, current.attempt, LEASE)
            .await
            .unwrap(),
        Heartbeat::Held(RunState::Running)
    );

    // The stale attempt gets no fence, so it has nothing to write with.
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    assert!(store_worker::fence(&tx, &stale).await.unwrap().is_none());
    tx.rollback().await.unwrap();
    // The current one writes through its fence.
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &current).await.unwrap().unwrap();
    let mut progress = Progress::default();
    progress.delta.read = 7;
    progress.checkpoint = Some(serde_json::json!({"page": 2}));
    store_worker::progress(&fenced, &progress).await.unwrap();
    tx.commit().await.unwrap();
    // Neither the stale attempt's finish changes the job...
    assert!(!finish(&store, &stale, Outcome::Failed("late".into())).await);
    let job = &run_of(&store, connection_id, current.run_id).await.jobs[0];
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.counts.read, 7);
    assert_eq!(job.attempt, current.attempt);
    // ...and a takeover resumes from the current attempt's checkpoint.
    let conn = store.conn().await.unwrap();
    let row = conn
        .query_one("SELECT checkpoint FROM jobs WHERE id = $1", &[&current.id])
        .await
        .unwrap();
    let checkpoint: Option<serde_json::Value> = row.get(0);
    assert_eq!(checkpoint, Some(serde_json::json!({"page": 2})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_waits_for_its_holders_write_grace_and_a_job_handed_back_does_not() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let run = start(&store, connection_id, Area::Users).await;
    // The lease runs out at once, but its holder may have a write in flight for 30 s more: neither
    // a claim nor the reaper takes the job yet.
    let frozen = claim(
        &store,
        "frozen",
        lease(Duration::ZERO, Duration::from_secs(30)),
        1,
    )
    .await
    .remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(claim(&store, "other", LEASE, 1).await.is_empty());
    // A heartbeat renews both: the lease and the grace after it.
    let conn = store.conn().await.unwrap();
    assert_eq!(
        store_worker::heartbeat(
            &conn,
            frozen.id,
            frozen.attempt,
            lease(Duration::ZERO, Duration::from_millis(50))
        )
        .await
        .unwrap(),
        Heartbeat::Held(RunState::Running)
    );
    // Once the grace has passed too, the job is taken over.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let current = claim(&store, "other", LEASE, 1).await.remove(0);
    assert_eq!(
        (current.id, current.attempt),
        (frozen.id, frozen.attempt + 1)
    );

    // A job handed back is queued: claimable at once, whatever grace its holder had.
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    assert!(store_worker::hand_back(&tx, &current).await.unwrap());
    tx.commit().await.unwrap();
    let again = claim(
        &store,
        "third",
        lease(Duration::ZERO, Duration::from_secs(30)),
        1,
    )
    .await
    .remove(0);
    assert_eq!(again.attempt, current.attempt + 1);

    // The reaper waits for the grace as a claim does: a stopping run's job whose holder may still
    // be writing stays running.
    let tx = conn.transaction().await.unwrap();
    runs::stop(&tx, connection_id, Area::Users).await.unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let tx = conn.transaction().await.unwrap();
    assert_eq!(store_worker::reap_stopped(&tx).await.unwrap(), 0);
    tx.commit().await.unwrap();
    let job = &run_of(&store, connection_id, run.id).await.jobs[0];
    assert_eq!(job.state, JobState::Running);
}

fn write(key: &str, hash: u8) -> LedgerWrite {
    LedgerWrite {
        record_key: key.to_string(),
        salesforce_id: Some(format!("a0{key}")),
        value_hash: vec![hash; 32],
        docebo_updated_at: None,
        mapping_version: Some(0),
    }
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|key| key.to_string()).collect()
}

/// The live ledger records of `job`'s scope its run neither wrote nor marked seen, its seen set
/// whole.
async fn unseen(store: &Store, job: &ClaimedJob, object: &str) -> Vec<(String, Option<String>)> {
    let conn = store.conn().await.unwrap();
    match store_worker::ledger_unseen(&conn, job, object, "", 10, None)
        .await
        .unwrap()
    {
        Seen::Whole(unseen) => unseen,
        Seen::Lost => panic!("the seen set was lost"),
    }
}

/// Marks `keys` seen by `job`, in a transaction of their own.
async fn mark_seen(store: &Store, job: &ClaimedJob, object: &str, keys: Vec<String>) {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, job).await.unwrap().unwrap();
    store_worker::ledger_mark_seen(&fenced, object, &keys)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_records_looks_up_marks_seen_unenrolls_and_deletes() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let object = "Contact";
    start(&store, connection_id, Area::Users).await;
    let job = claim(&store, "w", LEASE, 1).await.remove(0);

    let mut conn = store.conn().await.unwrap();
    assert!(
        store_worker::ledger_state(&conn, connection_id, object)
            .await
            .unwrap()
            .empty
    );
    // A first sync: plain inserts; "1-2" listed again makes the second batch's insert fail
    // whole, and it is upserted instead, inside the same transaction.
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &job).await.unwrap().unwrap();
    for batch in [
        [write("1-1", 1), write("1-2", 1)],
        [write("1-2", 2), write("1-3", 2)],
    ] {
        store_worker::ledger_record(&fenced, Area::Users, object, &batch, true)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let all = keys(&["1-1", "1-2", "1-3"]);
    let found = store_worker::ledger_lookup(&conn, connection_id, object, &all)
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(found["1-1"].value_hash, vec![1; 32]);
    assert_eq!(found["1-2"].value_hash, vec![2; 32]);
    assert_eq!(found["1-2"].salesforce_id.as_deref(), Some("a01-2"));
    assert!(!found["1-3"].unenrolled);
    let imported = runs::records_imported(&conn, connection_id).await.unwrap();
    assert_eq!(imported[&Area::Users], 3);

    // Everything was seen by the run that wrote it; another run has seen nothing yet.
    let unseen = |job: ClaimedJob| {
        let store = store.clone();
        async move { unseen(&store, &job, object).await }
    };
    assert!(unseen(job.clone()).await.is_empty());
    assert!(finish(&store, &job, Outcome::Done).await);
    let next = resynchronize(&store, connection_id, (None, None)).await;
    let next_job = claim(&store, "w", LEASE, 1).await.remove(0);
    assert_eq!(next_job.run_id, next.id);
    assert_eq!(unseen(next_job.clone()).await.len(), 3);
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &next_job).await.unwrap().unwrap();
    store_worker::ledger_mark_seen(&fenced, object, &keys(&["1-1"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let left: Vec<String> = unseen(next_job.clone())
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, keys(&["1-2", "1-3"]));
    let deletions: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        all.iter().map(|key| (key.clone(), None)).collect();
    let Seen::Whole(among) =
        store_worker::ledger_unseen_among(&conn, &next_job, object, &deletions)
            .await
            .unwrap()
    else {
        panic!("the seen set was lost")
    };
    assert_eq!(among.len(), 2);
    assert_eq!(among[0], ("1-2".to_string(), Some("a01-2".to_string())));

    // Unenrolled: no longer live (not unseen), its hash cleared; deleted: gone, and counted out.
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &next_job).await.unwrap().unwrap();
    store_worker::ledger_mark_unenrolled(&fenced, object, &keys(&["1-2"]), chrono::Utc::now())
        .await
        .unwrap();
    store_worker::ledger_delete(&fenced, Area::Users, object, &keys(&["1-3"]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(unseen(next_job.clone()).await.is_empty());
    let found = store_worker::ledger_lookup(&conn, connection_id, object, &all)
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(found["1-2"].unenrolled);
    assert!(found["1-2"].value_hash.is_empty());
    assert!(!found.contains_key("1-3"));
    let imported = runs::records_imported(&conn, connection_id).await.unwrap();
    assert_eq!(imported[&Area::Users], 2);

    // GetStatus's one statement reads what the separate reads read: the active and the last
    // finished run with their jobs, the configurations, the ledger counts, the tenant.
    let status = runs::status(&conn, connection_id).await.unwrap();
    assert_eq!(
        status.tenant,
        connections::get(&conn, connection_id).await.unwrap().tenant
    );
    assert_eq!(
        status.configs,
        areas::list(&conn, connection_id).await.unwrap()
    );
    assert_eq!(status.imported, imported);
    assert_eq!(status.latest.len(), 1);
    let users = &status.latest[&Area::Users];
    let active = run_of(&store, connection_id, next.id).await;
    assert!(active.state.is_active() && !active.jobs.is_empty());
    assert_eq!(users.active.as_ref(), Some(&active));
    let last = run_of(&store, connection_id, job.run_id).await;
    assert!(!last.state.is_active() && !last.jobs.is_empty());
    assert_eq!(users.last.as_ref(), Some(&last));
    assert!(matches!(
        runs::status(&conn, Uuid::new_v4()).await,
        Err(learnsync_store::Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_marks_are_counted_survive_a_takeover_and_a_lost_set_unenrolls_nothing() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let object = "Contact";
    start(&store, connection_id, Area::Users).await;
    let first = claim(&store, "w", LEASE, 1).await.remove(0);
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &first).await.unwrap().unwrap();
    let all = ["1-1", "1-2", "1-3", "1-4"].map(|key| write(key, 1));
    store_worker::ledger_record(&fenced, Area::Users, object, &all, true)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(finish(&store, &first, Outcome::Done).await);

    // The full comparison's job marks what its listing saw, in two commits, a key twice; its
    // lease runs out and another worker takes the job over: the marks are the job's, not the
    // attempt's.
    resynchronize(&store, connection_id, (None, None)).await;
    let stale = claim(&store, "dead", lease(Duration::ZERO, Duration::ZERO), 1)
        .await
        .remove(0);
    // A job that made no marks has a whole (empty) set: it saw nothing yet.
    assert!(store_worker::seen_whole(&conn, stale.id).await.unwrap());
    assert_eq!(unseen(&store, &stale, object).await.len(), 4);
    mark_seen(&store, &stale, object, keys(&["1-1", "1-2", "1-2"])).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let job = claim(&store, "alive", LEASE, 1).await.remove(0);
    assert_eq!((job.id, job.attempt), (stale.id, stale.attempt + 1));
    mark_seen(&store, &job, object, keys(&["1-2", "1-3"])).await;
    assert!(store_worker::seen_whole(&conn, job.id).await.unwrap());
    assert_eq!(
        unseen(&store, &job, object).await,
        [("1-4".to_string(), Some("a01-4".to_string()))]
    );
    assert_eq!(
        store_worker::ledger_unseen_count(&conn, &job, object, None)
            .await
            .unwrap(),
        Seen::Whole((1, 4))
    );
    let deletions: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        ["1-1", "1-4"].map(|key| (key.to_string(), None)).to_vec();
    assert_eq!(
        store_worker::ledger_unseen_among(&conn, &job, object, &deletions)
            .await
            .unwrap(),
        Seen::Whole(vec![("1-4".to_string(), Some("a01-4".to_string()))])
    );
    // Marking changed no ledger value.
    let found = store_worker::ledger_lookup(&conn, connection_id, object, &keys(&["1-1"]))
        .await
        .unwrap();
    assert_eq!(found["1-1"].value_hash, vec![1; 32]);

    // Postgres crashes mid-job: the unlogged set is emptied, the logged count of marks stays.
    // Every read that picks records to unenroll says the set is lost instead of answering with
    // every record the listing saw.
    learnsync_store::testing::lose_seen_sets(&conn)
        .await
        .unwrap();
    assert!(!store_worker::seen_whole(&conn, job.id).await.unwrap());
    assert_eq!(
        store_worker::ledger_unseen(&conn, &job, object, "", 10, None)
            .await
            .unwrap(),
        Seen::Lost
    );
    assert_eq!(
        store_worker::ledger_unseen_count(&conn, &job, object, None)
            .await
            .unwrap(),
        Seen::Lost
    );
    assert_eq!(
        store_worker::ledger_unseen_among(&conn, &job, object, &deletions)
            .await
            .unwrap(),
        Seen::Lost
    );
    // Nothing was unenrolled: every record is still live.
    let found = store_worker::ledger_lookup(
        &conn,
        connection_id,
        object,
        &keys(&["1-1", "1-2", "1-3", "1-4"]),
    )
    .await
    .unwrap();
    assert!(found.values().all(|entry| !entry.unenrolled));

    // The job starts its set again and reads its listing again: what it has not marked yet is
    // unseen, and the set is whole.
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &job).await.unwrap().unwrap();
    store_worker::seen_reset(&fenced).await.unwrap();
    tx.commit().await.unwrap();
    assert!(store_worker::seen_whole(&conn, job.id).await.unwrap());
    assert_eq!(unseen(&store, &job, object).await.len(), 4);
    mark_seen(&store, &job, object, keys(&["1-1", "1-2", "1-3"])).await;
    assert_eq!(unseen(&store, &job, object).await.len(), 1);
    // The stale attempt marks nothing: it gets no fence.
    let tx = conn.transaction().await.unwrap();
    assert!(store_worker::fence(&tx, &stale).await.unwrap().is_none());
    tx.rollback().await.unwrap();

    // The job's end clears its set (its count stays: a finished job's set is not read again).
    assert!(finish(&store, &job, Outcome::Done).await);
    assert!(!store_worker::seen_whole(&conn, job.id).await.unwrap());
}

/// Writes `keys` to the ledger in a run of its own (a resynchronization of the users area).
async fn written_by_a_run(store: &Store, connection_id: Uuid, object: &str, keys: &[&str]) {
    resynchronize(store, connection_id, (None, None)).await;
    let job = claim(store, "w", LEASE, 1).await.remove(0);
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, &job).await.unwrap().unwrap();
    let writes: Vec<LedgerWrite> = keys.iter().map(|key| write(key, 1)).collect();
    store_worker::ledger_record(&fenced, Area::Users, object, &writes, true)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(finish(store, &job, Outcome::Done).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_sessions_reading_proves_gone_only_what_it_read_or_what_predates_it() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let object = "Docebo_Session_Enrollment__c";
    start(&store, connection_id, Area::Users).await;
    let first = claim(&store, "w", LEASE, 1).await.remove(0);
    assert!(finish(&store, &first, Outcome::Done).await);
    // Enrollments of sessions 10 and 20, written before a sessions reading began; then of
    // sessions 30 and 40, written after.
    written_by_a_run(&store, connection_id, object, &["1-10", "1-20"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let conn = store.conn().await.unwrap();
    let read_from: chrono::DateTime<chrono::Utc> =
        conn.query_one("SELECT now()", &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    written_by_a_run(&store, connection_id, object, &["1-30", "1-40"]).await;

    // A full comparison that saw none of them walked a reading holding sessions 10 and 30: the
    // rosters it read prove 1-10 and 1-30 gone, and 1-20 (its session existed before the
    // reading, which lacks it) too; 1-40's session may be newer than the reading: kept.
    resynchronize(&store, connection_id, (None, None)).await;
    let job = claim(&store, "w", LEASE, 1).await.remove(0);
    let listed = store_worker::ListedSessions {
        read_from,
        session_ids: vec![10, 30],
    };
    let found = store_worker::ledger_unseen(&conn, &job, object, "", 10, Some(&listed))
        .await
        .unwrap();
    let keys_of = |found: Seen<Vec<(String, Option<String>)>>| match found {
        Seen::Whole(found) => found.into_iter().map(|(key, _)| key).collect::<Vec<_>>(),
        Seen::Lost => panic!("the seen set was lost"),
    };
    assert_eq!(keys_of(found), ["1-10", "1-20", "1-30"]);
    assert_eq!(
        store_worker::ledger_unseen_count(&conn, &job, object, Some(&listed))
            .await
            .unwrap(),
        Seen::Whole((3, 4))
    );
    // A job that listed the sessions itself proves all four gone.
    let own = store_worker::ledger_unseen(&conn, &job, object, "", 10, None)
        .await
        .unwrap();
    assert_eq!(keys_of(own), ["1-10", "1-20", "1-30", "1-40"]);
}

/// Runs one users run to its end (a worker claims its job and finishes it).
async fn ended_users_run(store: &Store, connection_id: Uuid, first: bool) -> Uuid {
    let run = if first {
        start(store, connection_id, Area::Users).await
    } else {
        resynchronize(store, connection_id, (None, None)).await
    };
    let job = claim(store, "w", LEASE, 1).await.remove(0);
    assert!(finish(store, &job, Outcome::Done).await);
    run.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_their_retention_go_with_their_jobs_and_log_but_each_area_s_latest_stays() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let mut ids = Vec::new();
    for first in [true, false, false] {
        ids.push(ended_users_run(&store, connection_id, first).await);
    }
    let conn = store.conn().await.unwrap();
    let count =
        async |sql: &str, run: Uuid| -> i64 { conn.query_one(sql, &[&run]).await.unwrap().get(0) };
    let logs_of = "SELECT count(*) FROM log_events WHERE run_id = $1";
    let jobs_of = "SELECT count(*) FROM jobs WHERE run_id = $1";
    assert!(count(logs_of, ids[0]).await > 0);
    // The first two ended 40 days ago, the last one too: it is the area's latest, and stays.
    conn.execute(
        "UPDATE runs SET end_time = now() - interval '40 days' WHERE id = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap();
    let retention = Duration::from_secs(30 * 24 * 3600);
    let (runs_gone, logs_gone) = runs::purge_ended(&conn, retention, 1).await.unwrap();
    assert_eq!(runs_gone, 1, "one batch of one");
    assert!(logs_gone > 0);
    let (runs_gone, _) = runs::purge_ended(&conn, retention, 10).await.unwrap();
    assert_eq!(runs_gone, 1);
    assert_eq!(
        runs::purge_ended(&conn, retention, 10).await.unwrap(),
        (0, 0)
    );
    for gone in &ids[..2] {
        assert_eq!(
            count("SELECT count(*) FROM runs WHERE id = $1", *gone).await,
            0
        );
        assert_eq!(count(jobs_of, *gone).await, 0);
        assert_eq!(count(logs_of, *gone).await, 0);
    }
    assert_eq!(count(jobs_of, ids[2]).await, 1);
    assert!(count(logs_of, ids[2]).await > 0);
    // No longer the latest, the old run goes; one ended within the retention stays, latest or
    // not.
    let recent = ended_users_run(&store, connection_id, false).await;
    ended_users_run(&store, connection_id, false).await;
    assert_eq!(runs::purge_ended(&conn, retention, 10).await.unwrap().0, 1);
    assert_eq!(
        count("SELECT count(*) FROM runs WHERE id = $1", recent).await,
        1
    );
}

/// 36 calls an hour, all of them at once.
const SLOW: Allowance = Allowance {
    calls_per_hour: 36,
    burst: 36,
};
/// A tenant's budget key for a platform.
fn budget_key(tenant: &str, platform: &str) -> store_worker::BudgetKey {
    store_worker::BudgetKey {
        tenant: tenant.to_string(),
        platform: platform.to_string(),
    }
}

/// Docebo's documented 1,000 calls an hour, 20 at once.
const DEFAULT: Allowance = Allowance {
    calls_per_hour: 1000,
    burst: 20,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_budget_refills_at_its_rate_leases_what_is_asked_and_pauses() {
    let store = store().await;
    let conn = store.conn().await.unwrap();
    let key = budget_key("acme", "budget.docebosaas.com");
    let platform = key.platform.as_str();
    // 36 calls an hour, all of them at once: the bucket starts full, and a grant is at most what was asked.
    let grant = store_worker::take_budget(&conn, &key, SLOW, 5)
        .await
        .unwrap();
    assert_eq!((grant.granted, grant.paused), (5, false));
    let grant = store_worker::take_budget(&conn, &key, SLOW, 100)
        .await
        .unwrap();
    assert_eq!(grant.granted, 31, "the rest of the hour's 36");
    let empty = store_worker::take_budget(&conn, &key, SLOW, 1)
        .await
        .unwrap();
    assert_eq!(empty.granted, 0);
    assert!(
        empty.wait > Duration::from_secs(50) && empty.wait <= Duration::from_secs(100),
        "one call every 100 s: {empty:?}"
    );
    // Calls leased and not spent come back, never above the bucket's capacity.
    store_worker::return_budget(&conn, &key, SLOW, 4)
        .await
        .unwrap();
    let back = store_worker::take_budget(&conn, &key, SLOW, 10)
        .await
        .unwrap();
    assert_eq!(back.granted, 4);
    store_worker::return_budget(&conn, &key, SLOW, 1000)
        .await
        .unwrap();
    let capped = store_worker::take_budget(&conn, &key, SLOW, 1000)
        .await
        .unwrap();
    assert_eq!(capped.granted, 36);
    // 200 s later at 36 an hour: two calls more.
    conn.execute(
        "UPDATE docebo_budgets SET refill_time = refill_time - interval '200 seconds' \
         WHERE platform = $1",
        &[&platform],
    )
    .await
    .unwrap();
    let refilled = store_worker::take_budget(&conn, &key, SLOW, 10)
        .await
        .unwrap();
    assert_eq!(refilled.granted, 2);
    // A pause holds every caller back, whatever the bucket holds; a shorter one keeps the longer.
    let other = &budget_key("acme", "paused.docebosaas.com");
    assert_eq!(
        store_worker::take_budget(&conn, other, DEFAULT, 1)
            .await
            .unwrap()
            .granted,
        1
    );
    store_worker::pause_docebo(&conn, other, Duration::from_secs(30))
        .await
        .unwrap();
    store_worker::pause_docebo(&conn, other, Duration::from_secs(1))
        .await
        .unwrap();
    let paused = store_worker::take_budget(&conn, other, DEFAULT, 5)
        .await
        .unwrap();
    assert_eq!(paused.granted, 0);
    assert!(paused.paused);
    assert!(paused.wait > Duration::from_secs(20), "{paused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_budget_lets_a_burst_through_then_paces_calls_like_doceboes_limiter() {
    let store = store().await;
    let conn = store.conn().await.unwrap();
    let key = budget_key("acme", "burst.docebosaas.com");
    let platform = key.platform.as_str();
    // 3,600 calls an hour (one a second), 5 at once: the first take finds a burst's worth.
    let allowance = Allowance {
        calls_per_hour: 3600,
        burst: 5,
    };
    let burst = store_worker::take_budget(&conn, &key, allowance, 100)
        .await
        .unwrap();
    assert_eq!(burst.granted, 5, "a burst, not the hour's 3,600");
    let empty = store_worker::take_budget(&conn, &key, allowance, 1)
        .await
        .unwrap();
    assert_eq!(empty.granted, 0);
    assert!(!empty.paused);
    assert!(
        empty.wait > Duration::ZERO && empty.wait <= Duration::from_secs(1),
        "the next call within a second: {empty:?}"
    );
    // Two seconds later: two calls, the rate's worth.
    let rewind = |seconds: f64| {
        let conn = &conn;
        async move {
            conn.execute(
                "UPDATE docebo_budgets SET refill_time = refill_time - make_interval(secs => $2) \
                 WHERE platform = $1",
                &[&platform, &seconds],
            )
            .await
            .unwrap();
        }
    };
    rewind(2.0).await;
    let paced = store_worker::take_budget(&conn, &key, allowance, 100)
        .await
        .unwrap();
    assert_eq!(paced.granted, 2);
    // After an idle hour the bucket holds a burst again, never the hour's calls.
    rewind(3600.0).await;
    let idle = store_worker::take_budget(&conn, &key, allowance, 100)
        .await
        .unwrap();
    assert_eq!(idle.granted, 5);
    // Calls given back never fill it above a burst either.
    store_worker::return_budget(&conn, &key, allowance, 1000)
        .await
        .unwrap();
    let returned = store_worker::take_budget(&conn, &key, allowance, 100)
        .await
        .unwrap();
    assert_eq!(returned.granted, 5);
    // A bucket filled under the old rule (an hour's worth) is cut down to a burst at once.
    conn.execute(
        "UPDATE docebo_budgets SET tokens = 3600 WHERE platform = $1",
        &[&platform],
    )
    .await
    .unwrap();
    let old = store_worker::take_budget(&conn, &key, allowance, 100)
        .await
        .unwrap();
    assert_eq!(old.granted, 5);
    // A burst larger than the hour's calls is the hour's calls.
    let small = Allowance {
        calls_per_hour: 3,
        burst: 20,
    };
    assert_eq!(small.capacity(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_naming_another_tenants_platform_spends_and_pauses_only_its_own_budget() {
    let store = store().await;
    let conn = store.conn().await.unwrap();
    let platform = "victim.docebosaas.com";
    let victim = budget_key("acme", platform);
    let other = budget_key("globex", platform);
    // Another tenant names the victim's platform and spends everything its bucket holds, then
    // draws a pause on it.
    let spent = store_worker::take_budget(&conn, &other, DEFAULT, 1000)
        .await
        .unwrap();
    assert_eq!(spent.granted, 20, "a burst");
    store_worker::pause_docebo(&conn, &other, Duration::from_secs(600))
        .await
        .unwrap();
    let held = store_worker::take_budget(&conn, &other, DEFAULT, 1)
        .await
        .unwrap();
    assert!(held.paused && held.granted == 0, "{held:?}");
    // The victim's own bucket is untouched: a full burst, no pause.
    let own = store_worker::take_budget(&conn, &victim, DEFAULT, 1000)
        .await
        .unwrap();
    assert_eq!(
        (own.granted, own.paused),
        (20, false),
        "the victim's calls are its own"
    );
    // A tenant's connections on one platform still share one bucket.
    let again = store_worker::take_budget(&conn, &victim, DEFAULT, 1)
        .await
        .unwrap();
    assert_eq!(again.granted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_moves_the_watermark_only_when_it_completed_over_all_time() {
    let store = store().await;
    let connection_id = connection(&store).await;
    assert_eq!(watermark(&store, connection_id).await, None);

    // A worker finishing the run's last job ends it, and the watermark moves to its creation.
    let first = start(&store, connection_id, Area::Users).await;
    let job = claim(&store, "w", LEASE, 1).await.remove(0);
    assert!(finish(&store, &job, Outcome::Done).await);
    let first = run_of(&store, connection_id, first.id).await;
    assert_eq!(first.state, RunState::Succeeded);
    assert_eq!(
        watermark(&store, connection_id).await,
        Some(first.create_time)
    );

    // A run limited to a timeframe completes, and leaves the watermark where it was.
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let limited = resynchronize(&store, connection_id, (Some(since), None)).await;
    let conn = store.conn().await.unwrap();
    let state = testing::finish_jobs_as_worker(&conn, limited.id, JobState::Succeeded)
        .await
        .unwrap();
    assert_eq!(state, Some(RunState::Succeeded));
    assert_eq!(
        watermark(&store, connection_id).await,
        Some(first.create_time)
    );

    // A stopped run and a failed run leave it too.
    let stopped = resynchronize(&store, connection_id, (None, None)).await;
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let run = runs::stop(&tx, connection_id, Area::Users).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(run.id, stopped.id);
    assert_eq!(run.state, RunState::Stopped, "no job had started");
    let failed = resynchronize(&store, connection_id, (None, None)).await;
    let job = claim(&store, "w", LEASE, 1).await.remove(0);
    assert!(finish(&store, &job, Outcome::Failed("broken".into())).await);
    assert_eq!(
        run_of(&store, connection_id, failed.id).await.state,
        RunState::Failed
    );
    assert_eq!(
        watermark(&store, connection_id).await,
        Some(first.create_time)
    );

    // The test helper ends a full run as production does: the watermark moves.
    let full = resynchronize(&store, connection_id, (None, None)).await;
    let conn = store.conn().await.unwrap();
    let state = testing::finish_jobs_as_worker(&conn, full.id, JobState::SucceededWithErrors)
        .await
        .unwrap();
    assert_eq!(state, Some(RunState::SucceededWithErrors));
    assert_eq!(
        watermark(&store, connection_id).await,
        Some(full.create_time)
    );
}

/// Records a course-enrollment webhook message under each of `ids`, all pending.
async fn record_webhooks(conn: &learnsync_store::Conn, connection_id: Uuid, ids: &[&str]) {
    let body = serde_json::json!({ "event": "course.enrollment.created" });
    for id in ids {
        learnsync_store::realtime::record_webhook(
            conn,
            connection_id,
            id,
            "course.enrollment.created",
            &body,
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_metrics_counts_see_jobs_waiting_on_the_budget_and_pending_webhooks() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let conn = store.conn().await.unwrap();
    assert_eq!(
        store_worker::jobs_waiting_on_budget(&conn).await.unwrap(),
        0
    );
    assert_eq!(
        learnsync_store::realtime::pending_webhook_stats(&conn)
            .await
            .unwrap(),
        (0, 0.0)
    );

    start(&store, connection_id, Area::Users).await;
    let job = claim(&store, "w1", LEASE, 1).await.remove(0);
    let waiting = [
        store_worker::WAITING_FOR_BUDGET,
        store_worker::WAITING_FOR_DOCEBO,
    ];
    for (message, expected) in [
        ("running", 0),
        (waiting[0], 1),
        (waiting[1], 1),
        ("running", 0),
    ] {
        // A held job's status is set (or already was): true either way.
        assert!(
            store_worker::set_status(&conn, job.id, job.attempt, message)
                .await
                .unwrap()
        );
        assert_eq!(
            store_worker::jobs_waiting_on_budget(&conn).await.unwrap(),
            expected,
            "{message}"
        );
    }

    record_webhooks(&conn, connection_id, &["m1", "m2"]).await;
    let (pending, oldest) = learnsync_store::realtime::pending_webhook_stats(&conn)
        .await
        .unwrap();
    assert_eq!(pending, 2);
    assert!((0.0..60.0).contains(&oldest), "{oldest}");
}

#[tokio::test]
async fn handled_webhook_messages_are_purged_after_their_retention_and_pending_ones_never() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let conn = store.conn().await.unwrap();
    record_webhooks(&conn, connection_id, &["old", "recent", "pending"]).await;
    // Arranged in SQL: "old" was handled ten days ago, "recent" an hour ago.
    conn.execute(
        "UPDATE webhook_messages SET handle_time = now() - interval '10 days' WHERE message_id = 'old'",
        &[],
    )
    .await
    .unwrap();
    conn.execute(
        "UPDATE webhook_messages SET handle_time = now() - interval '1 hour' WHERE message_id = 'recent'",
        &[],
    )
    .await
    .unwrap();
    let retention = learnsync_store::realtime::WEBHOOK_RETENTION;
    let purged = learnsync_store::realtime::purge_handled_webhooks(&conn, retention)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let left: Vec<String> = conn
        .query(
            "SELECT message_id FROM webhook_messages ORDER BY message_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, vec!["pending".to_string(), "recent".to_string()]);
    // A zero retention takes every handled message, still never a pending one.
    let purged = learnsync_store::realtime::purge_handled_webhooks(&conn, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        learnsync_store::realtime::pending_webhook_stats(&conn)
            .await
            .unwrap()
            .0,
        1
    );
}

// ---------------------------------------------------------------------------------------------
// A run's shared listings (`run_listings`)
//
// Proves a run's shared listing (`run_listings`) against a real Postgres: one job's attempt takes
// the reading and the run's other jobs wait; when that attempt stops running before it published
// (its lease taken over), the next job to ask takes the reading over and the stale attempt
// publishes nothing; the published items and verdict reach every job of the run; and a connection's
// rows of ended runs go with its next publication.

const LISTING: &str = "/learn/v1/courses?sort_by=last_update&sort_by_direction=asc";

/// The next claimable job, on a lease of `length`.
async fn claim_one(store: &Store, owner: &str, length: Duration) -> ClaimedJob {
    claim(store, owner, lease(length, Duration::ZERO), 1)
        .await
        .remove(0)
}

async fn ask(store: &Store, job: &ClaimedJob) -> SharedListing {
    let conn = store.conn().await.unwrap();
    store_worker::shared_listing(&conn, job, LISTING)
        .await
        .unwrap()
}

/// Publishes `items` as `job`'s reading; `None` when the attempt is fenced out or another took
/// the reading over.
async fn publish(
    store: &Store,
    job: &ClaimedJob,
    items: Vec<serde_json::Value>,
) -> Option<PublishedListing> {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let fenced = store_worker::fence(&tx, job).await.unwrap()?;
    let published = store_worker::publish_listing(&fenced, LISTING, items, Some("moved".into()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    published
}

async fn rows_of(store: &Store, run_id: Uuid) -> i64 {
    let conn = store.conn().await.unwrap();
    let row = conn
        .query_one(
            "SELECT count(*) FROM run_listings WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_is_taken_once_taken_over_from_a_stopped_attempt_and_shared() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let run = start(&store, connection_id, Area::Courses).await.id;
    // The courses job on a live worker, the learning-plans job on one that dies (its lease runs
    // out at once).
    let live = claim_one(&store, "live", Duration::from_secs(30)).await;
    assert_eq!((live.run_id, live.kind), (run, JobKind::Courses));
    let dead = claim_one(&store, "dead", Duration::ZERO).await;
    assert_eq!(dead.kind, JobKind::LearningPlans);

    // The first to ask reads; asking again, it still does; the other waits on its attempt,
    // which still runs (its lease ran out, but nobody took it over).
    assert_eq!(ask(&store, &dead).await, SharedListing::Read);
    assert_eq!(ask(&store, &dead).await, SharedListing::Read);
    assert_eq!(ask(&store, &live).await, SharedListing::Wait);

    // Its job taken over by another worker, the dead attempt no longer runs: the next job to
    // ask reads; the stale attempt publishes nothing, the new attempt of its job waits.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let resumed = claim_one(&store, "other", Duration::from_secs(30)).await;
    assert_eq!((resumed.id, resumed.attempt), (dead.id, dead.attempt + 1));
    assert_eq!(ask(&store, &live).await, SharedListing::Read);
    assert_eq!(
        publish(&store, &dead, vec![json!({"id_course": 9})]).await,
        None
    );
    assert_eq!(ask(&store, &resumed).await, SharedListing::Wait);
    assert_eq!(
        publish(&store, &resumed, vec![json!({"id_course": 9})]).await,
        None
    );

    // The reader publishes: every job of the run gets its items and its verdict.
    let items = vec![json!({"id_course": 1}), json!({"id_course": 2})];
    let published = publish(&store, &live, items.clone()).await.unwrap();
    let expected = PublishedListing {
        items,
        reading: format!("{}/{}", live.id, live.attempt),
        incomplete: Some("moved".into()),
    };
    assert_eq!(published, expected);
    assert_eq!(
        ask(&store, &resumed).await,
        SharedListing::Ready(expected.clone())
    );
    assert_eq!(ask(&store, &live).await, SharedListing::Ready(expected));

    // Once the run ended, the connection's next publication deletes its rows.
    let conn = store.conn().await.unwrap();
    testing::finish_jobs_as_worker(&conn, run, JobState::Succeeded)
        .await
        .unwrap();
    assert_eq!(rows_of(&store, run).await, 1);
    let next = start(&store, connection_id, Area::Users).await.id;
    let job = claim_one(&store, "live", Duration::from_secs(30)).await;
    assert_eq!(job.run_id, next);
    assert_eq!(ask(&store, &job).await, SharedListing::Read);
    assert!(publish(&store, &job, Vec::new()).await.is_some());
    assert_eq!(rows_of(&store, run).await, 0);
    assert_eq!(rows_of(&store, next).await, 1);
}

/// A token to store: `sealed` stands for its ciphertext.
fn docebo_token(sealed: u8, lifetime: Duration) -> store_worker::NewToken {
    store_worker::NewToken {
        sealed: vec![sealed; 32],
        fingerprint: vec![7; 32],
        lifetime,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_docebo_token_is_replaced_only_at_the_version_read_and_goes_with_its_connection() {
    let store = store().await;
    let connection_id = connection(&store).await;
    let conn = store.conn().await.unwrap();
    let minute = Duration::from_secs(60);
    assert_eq!(
        store_worker::current_token(&conn, connection_id)
            .await
            .unwrap(),
        None
    );

    // The first worker stores the connection's first token; a second that also found none lost
    // the race and is told so (it takes the stored one).
    let stored = store_worker::store_token(&conn, connection_id, &docebo_token(1, minute), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(
        store_worker::store_token(&conn, connection_id, &docebo_token(2, minute), None)
            .await
            .unwrap(),
        None
    );
    let read = store_worker::current_token(&conn, connection_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read.sealed, read.fingerprint), (vec![1; 32], vec![7; 32]));
    assert_eq!(read.version, 1);
    assert!(read.fresh_for > Duration::from_secs(50) && read.fresh_for <= minute);

    // A renewal replaces the version it read, once: a second renewal of that version is refused.
    let renewed =
        store_worker::store_token(&conn, connection_id, &docebo_token(3, minute), Some(1))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(renewed.version, 2);
    assert_eq!(
        store_worker::store_token(&conn, connection_id, &docebo_token(4, minute), Some(1))
            .await
            .unwrap(),
        None
    );

    // An expired token is still read, as expired: its version is what the next token replaces.
    store_worker::store_token(
        &conn,
        connection_id,
        &docebo_token(5, Duration::ZERO),
        Some(2),
    )
    .await
    .unwrap()
    .unwrap();
    let expired = store_worker::current_token(&conn, connection_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((expired.version, expired.fresh_for), (3, Duration::ZERO));

    // The token is deleted with its connection.
    connections::delete(&conn, connection_id).await.unwrap();
    assert_eq!(
        store_worker::current_token(&conn, connection_id)
            .await
            .unwrap(),
        None
    );
}
