//! Proves a run's shared listing (`run_listings`) against a real Postgres: one job's attempt takes the reading and the run's other jobs wait; when that attempt stops running before it published (its lease taken over), the next job to ask takes the reading over and the stale attempt publishes nothing; the published items and verdict reach every job of the run; and a connection's rows of ended runs go with its next publication.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_store::connections::{self, NewConnection, SealedCredentials};
use learnsync_store::model::{Area, JobKind, JobState, Mode, UnenrollmentPolicy};
use learnsync_store::worker::{
    self as store_worker, ClaimedJob, Lease, PublishedListing, SharedListing,
};
use learnsync_store::{Options, Store, areas, runs, testing};
use serde_json::json;
use uuid::Uuid;

const LISTING: &str = "/learn/v1/courses?sort_by=last_update&sort_by_direction=asc";

fn lease(length: Duration) -> Lease {
    Lease {
        length,
        write_grace: Duration::ZERO,
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

/// A connection with its users and courses areas enabled.
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
        let settings = areas::AreaSettings {
            enabled: true,
            mode: Mode::Manual,
            interval_seconds: 900,
            course_category_ids: Vec::new(),
            full_interval_seconds: 86_400,
        };
        areas::configure(&conn, id, area, &settings).await.unwrap();
    }
    id
}

async fn start(store: &Store, connection_id: Uuid, area: Area) -> Uuid {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let run = runs::start(&tx, connection_id, area, (None, None), None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    run.id
}

async fn claim(store: &Store, owner: &str, length: Duration) -> ClaimedJob {
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let mut jobs = store_worker::claim(&tx, owner, lease(length), 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    jobs.remove(0)
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
    let run = start(&store, connection_id, Area::Courses).await;
    // The courses job on a live worker, the learning-plans job on one that dies (its lease runs
    // out at once).
    let live = claim(&store, "live", Duration::from_secs(30)).await;
    assert_eq!((live.run_id, live.kind), (run, JobKind::Courses));
    let dead = claim(&store, "dead", Duration::ZERO).await;
    assert_eq!(dead.kind, JobKind::LearningPlans);

    // The first to ask reads; asking again, it still does; the other waits on its attempt,
    // which still runs (its lease ran out, but nobody took it over).
    assert_eq!(ask(&store, &dead).await, SharedListing::Read);
    assert_eq!(ask(&store, &dead).await, SharedListing::Read);
    assert_eq!(ask(&store, &live).await, SharedListing::Wait);

    // Its job taken over by another worker, the dead attempt no longer runs: the next job to
    // ask reads; the stale attempt publishes nothing, the new attempt of its job waits.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let resumed = claim(&store, "other", Duration::from_secs(30)).await;
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
    let next = start(&store, connection_id, Area::Users).await;
    let job = claim(&store, "live", Duration::from_secs(30)).await;
    assert_eq!(job.run_id, next);
    assert_eq!(ask(&store, &job).await, SharedListing::Read);
    assert!(publish(&store, &job, Vec::new()).await.is_some());
    assert_eq!(rows_of(&store, run).await, 0);
    assert_eq!(rows_of(&store, next).await, 1);
}
