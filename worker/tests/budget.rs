//! Proves the Docebo call budget is one token bucket per platform, shared by every job and worker: grants never exceed what the hour allows, an empty bucket says how long to wait, and a 429/503 pause holds everyone back.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_store::Store;
use learnsync_store::worker::{pause_docebo, take_budget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_is_shared_and_pauses_hold_everyone() {
    let url = learnsync_store::testing::fresh_database().await.unwrap();
    let store = Store::connect(&learnsync_store::Options {
        database_url: url,
        max_connections: 8,
    })
    .unwrap();
    // Ten callers at once on a platform allowing 36 calls an hour, each asking for 5.
    let mut takers = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        takers.push(tokio::spawn(async move {
            let conn = store.conn().await.unwrap();
            take_budget(&conn, "platform-a", 36, 5).await.unwrap()
        }));
    }
    let mut granted = 0;
    for taker in takers {
        granted += taker.await.unwrap().granted;
    }
    assert_eq!(
        granted, 36,
        "the first hour's bucket holds exactly 36 calls"
    );

    let conn = store.conn().await.unwrap();
    let empty = take_budget(&conn, "platform-a", 36, 5).await.unwrap();
    assert_eq!(empty.granted, 0);
    assert!(!empty.paused);
    // 36 calls an hour: the next one in about 100 s.
    assert!(
        empty.wait > Duration::from_secs(50) && empty.wait <= Duration::from_secs(100),
        "{empty:?}"
    );

    // Another platform has a bucket of its own.
    let other = take_budget(&conn, "platform-b", 1000, 5).await.unwrap();
    assert_eq!(other.granted, 5);

    // A pause holds every caller of the platform back, whatever its bucket holds.
    pause_docebo(&conn, "platform-b", Duration::from_secs(30))
        .await
        .unwrap();
    let paused = take_budget(&conn, "platform-b", 1000, 5).await.unwrap();
    assert_eq!(paused.granted, 0);
    assert!(paused.paused);
    assert!(paused.wait > Duration::from_secs(20), "{paused:?}");
}
