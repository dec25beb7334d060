//! Proves the realtime scheduler keeps up with a fleet (real Postgres, servers over gRPC): one
//! pass starts every due area, batch after batch, and a server wakes when the next area falls due
//! rather than at its tick.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_client::pb;
use learnsync_e2e::{TestServer, create_sample, eventually};
use learnsync_store::model::{Area, JobState};
use uuid::Uuid;

const AREAS: [(pb::Area, Area); 3] = [
    (pb::Area::Users, Area::Users),
    (pb::Area::Courses, Area::Courses),
    (pb::Area::Enrollments, Area::Enrollments),
];

/// A scheduler that would sleep an hour between passes and takes one area per transaction.
fn slow_scheduler(options: &mut learnsync_server::Options) {
    options.realtime.schedule_tick = Duration::from_secs(3600);
    options.realtime.schedule_batch = 1;
}

#[tokio::test]
async fn one_pass_starts_every_due_area_and_the_next_due_wakes_the_scheduler() {
    // The server that arranges the state schedules nothing: its one pass ran at its start.
    let database_url = learnsync_store::testing::fresh_database().await.unwrap();
    let first = TestServer::start_with(
        &database_url,
        learnsync_store::secrets::Cipher::random(),
        slow_scheduler,
    )
    .await
    .unwrap();
    let mut client = first.operator().await.unwrap();
    let id = create_sample(&mut client, "acme").await.unwrap();
    let connection = Uuid::parse_str(&id).unwrap();
    let conn = first.store.conn().await.unwrap();
    for (area, _) in AREAS {
        client
            .configure(
                &id,
                pb::AreaConfig {
                    area: area as i32,
                    enabled: true,
                    mode: pb::Mode::Realtime as i32,
                    interval: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let run = client.start(&id, area, None).await.unwrap();
        let run_id = Uuid::parse_str(&run.id).unwrap();
        learnsync_store::testing::finish_jobs_as_worker(&conn, run_id, JobState::Succeeded)
            .await
            .unwrap();
    }
    // Users and courses are due already; enrollments falls due in two seconds.
    let now = chrono::Utc::now();
    for (area, due) in [
        (Area::Users, now - chrono::Duration::hours(1)),
        (Area::Courses, now - chrono::Duration::hours(1)),
        (Area::Enrollments, now + chrono::Duration::seconds(2)),
    ] {
        learnsync_store::testing::set_next_run_time(&conn, connection, area, due)
            .await
            .unwrap();
    }

    let scheduler =
        TestServer::start_with(&first.database_url, first.cipher.clone(), slow_scheduler)
            .await
            .unwrap();
    let watcher = &client;
    let id = &id;
    let scheduled = || async move {
        let runs = watcher
            .clone()
            .list_runs(pb::ListRunsRequest {
                connection_id: id.clone(),
                area: 0,
                page_size: 100,
                page_token: String::new(),
            })
            .await?
            .runs;
        let mut areas: Vec<i32> = runs
            .iter()
            .filter(|run| run.trigger == pb::Trigger::Schedule as i32)
            .map(|run| run.area)
            .collect();
        areas.sort_unstable();
        anyhow::Ok(areas)
    };
    // The first pass takes both due areas, one transaction each.
    let both = eventually(
        Duration::from_secs(10),
        "both due areas started",
        || async {
            let areas = scheduled().await?;
            Ok((areas.len() >= 2).then_some(areas))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        &both[..2],
        &[pb::Area::Users as i32, pb::Area::Courses as i32],
        "the due areas first"
    );
    // Enrollments starts once due, an hour before the scheduler's tick.
    let all = eventually(
        Duration::from_secs(15),
        "the next due area started",
        || async {
            let areas = scheduled().await?;
            Ok((areas.len() == 3).then_some(areas))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        all,
        vec![
            pb::Area::Users as i32,
            pb::Area::Courses as i32,
            pb::Area::Enrollments as i32
        ]
    );
    scheduler.stop().await.unwrap();
    first.stop().await.unwrap();
}
