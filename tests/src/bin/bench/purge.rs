//! `purge --runs N`: what the servers' hourly retention purge costs (`runs::purge_ended`). A
//! connection's history of N ended courses runs (each with its three jobs and nine log events, as
//! a fleet's scheduled runs leave them), ended past the retention, is purged batch after batch as
//! the housekeeping does; then a purge with nothing left past the retention (the hourly cost once
//! caught up) is timed over the N runs kept within it.

use std::time::{Duration, Instant};

use learnsync_store::{observe, runs, testing};

use super::{Bed, platform};

/// Log events per run (a scheduled run's, in the fleet benchmark).
const LOGS_PER_RUN: i64 = 9;

/// Fills and purges a history of `history` runs.
pub(super) async fn bench_purge(history: i64) -> anyhow::Result<()> {
    let bed = Bed::start(&platform(1_000, 47)).await?;
    let connection_id = uuid::Uuid::parse_str(&bed.connection_id)?;
    let conn = bed.store.conn().await?;
    let retention = Duration::from_secs(30 * 24 * 3600);
    let filled = Instant::now();
    // Runs a day past the retention, and as many within it (kept).
    testing::fill_ended_runs(&conn, connection_id, history, LOGS_PER_RUN, 31).await?;
    testing::fill_ended_runs(&conn, connection_id, history, LOGS_PER_RUN, 1).await?;
    testing::vacuum(&conn).await?;
    let filled = filled.elapsed();
    let wal_before = observe::wal_position(&conn).await?;
    let started = Instant::now();
    let (mut purged, mut logs, mut batches) = (0, 0, 0);
    let mut slowest = Duration::ZERO;
    loop {
        let batch = Instant::now();
        let (gone, events) = runs::purge_ended(&conn, retention, runs::PURGE_BATCH).await?;
        slowest = slowest.max(batch.elapsed());
        batches += 1;
        purged += gone;
        logs += events;
        if gone < runs::PURGE_BATCH as u64 {
            break;
        }
    }
    let took = started.elapsed();
    let wal = observe::wal_position(&conn).await? - wal_before;
    let idle = Instant::now();
    let (none, _) = runs::purge_ended(&conn, retention, runs::PURGE_BATCH).await?;
    let idle = idle.elapsed();
    anyhow::ensure!(
        purged == history as u64 && none == 0,
        "purged {purged} of {history}, then {none}"
    );
    println!(
        "history: {history} runs past the retention and {history} within it, filled in {:.1} s",
        filled.as_secs_f64()
    );
    println!(
        "| runs purged | jobs and log events with them | batches of {} | purge s | runs/s | slowest batch s | wal MiB (bytes per run) | a purge with nothing past the retention, ms |",
        runs::PURGE_BATCH
    );
    println!(
        "| {purged} | {} jobs, {logs} log events | {batches} | {:.1} | {:.0} | {:.2} | {:.1} ({:.0}) | {:.1} |",
        purged * 3,
        took.as_secs_f64(),
        purged as f64 / took.as_secs_f64(),
        slowest.as_secs_f64(),
        wal as f64 / (1024.0 * 1024.0),
        wal as f64 / purged.max(1) as f64,
        idle.as_secs_f64() * 1000.0,
    );
    bed.stop();
    Ok(())
}
