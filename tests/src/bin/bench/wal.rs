//! `wal --enrollments N`: what a full comparison of an unchanged platform writes to Postgres. A
//! first sync of a generated platform, a vacuum (so autovacuum catching up with the sync's
//! inserts is not counted), then a Resynchronize of each area (a run over all time: the verify
//! phase, the listing, the unenrollment comparison) with nothing changed in Docebo or Salesforce.
//! The generator's deliberately bad records are left out unless asked for: they fail, and are
//! sent again, on every run, so a platform holding them is never unchanged.
//! Reports the WAL each comparison inserted per record read, and the ledger's bytes per record.

use anyhow::bail;
use learnsync_client::pb;
use learnsync_sim::GenerateParams;
use learnsync_store::observe;
use learnsync_store::testing::{self, LedgerFootprint};

use super::{Bed, platform};

/// Syncs a platform of `enrollments` course enrollments (with the generator's deliberately bad
/// records, which fail on every run, when `bad_records`), then measures the comparisons.
pub(super) async fn bench_wal(enrollments: usize, bad_records: bool) -> anyhow::Result<()> {
    let params = GenerateParams {
        bad_records: Some(bad_records),
        ..platform(enrollments, 46)
    };
    let mut bed = Bed::start(&params).await?;
    bed.spawn_worker(4)?;
    for area in [pb::Area::Users, pb::Area::Courses, pb::Area::Enrollments] {
        let (run, _) = bed.sync(area, true).await?;
        ended_well(&run)?;
    }
    let conn = bed.store.conn().await?;
    testing::vacuum(&conn).await?;
    let synced = testing::ledger_footprint(&conn).await?;
    println!("load average before the comparisons: {}", load_average());
    println!(
        "| area | records read | unchanged | written | wal bytes | wal bytes / record read | wall s |"
    );
    let (mut total_wal, mut total_read) = (0i64, 0i64);
    for area in [pb::Area::Users, pb::Area::Courses, pb::Area::Enrollments] {
        let before = observe::wal_position(&conn).await?;
        let (run, wall) = bed.sync(area, false).await?;
        let wal = observe::wal_position(&conn).await? - before;
        ended_well(&run)?;
        let counts = run.counts.unwrap_or_default();
        total_wal += wal;
        total_read += counts.read;
        println!(
            "| {} | {} | {} | {} | {wal} | {:.1} | {:.1} |",
            area.as_str_name(),
            counts.read,
            counts.unchanged,
            counts.written,
            wal as f64 / counts.read.max(1) as f64,
            wall.as_secs_f64(),
        );
    }
    println!(
        "| all | {total_read} | | | {total_wal} | {:.1} | |",
        total_wal as f64 / total_read.max(1) as f64
    );
    println!("load average after the comparisons: {}", load_average());
    let compared = testing::ledger_footprint(&conn).await?;
    println!(
        "| ledger | rows | table bytes / row | index bytes / row | total bytes / row | seen sets' scratch bytes (unlogged) |"
    );
    for (label, footprint) in [
        ("after the first sync (vacuumed)", synced),
        ("after the comparisons", compared),
    ] {
        print_footprint(label, &footprint);
    }
    bed.stop();
    Ok(())
}

fn print_footprint(label: &str, footprint: &LedgerFootprint) {
    let rows = footprint.rows.max(1) as f64;
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} | {} |",
        footprint.rows,
        footprint.table_bytes as f64 / rows,
        footprint.index_bytes as f64 / rows,
        (footprint.table_bytes + footprint.index_bytes) as f64 / rows,
        footprint.seen_bytes,
    );
}

fn ended_well(run: &pb::Run) -> anyhow::Result<()> {
    let state = run.state;
    if state != pb::RunState::Succeeded as i32 && state != pb::RunState::SucceededWithErrors as i32
    {
        bail!("run {} ended {state:?}: {}", run.id, run.error_message);
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
