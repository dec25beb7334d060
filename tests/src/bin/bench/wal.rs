//! `wal --enrollments N`: what a full comparison of an unchanged platform writes to Postgres. A
//! first sync of a generated platform, a vacuum (so autovacuum catching up with the sync's
//! inserts is not counted), then a Resynchronize of each area (a run over all time: the verify
//! phase, the listing, the unenrollment comparison) with nothing changed in Docebo or Salesforce.
//! The generator's deliberately bad records are left out unless asked for: they fail, and are
//! sent again, on every run, so a platform holding them is never unchanged.
//! `--changed PERCENT` changes that share of the course enrollments in Docebo (their score) between
//! the first sync and the comparisons: the enrollments comparison then writes them.
//! Reports the WAL each comparison inserted per record read (and per changed record), and the
//! ledger's bytes per record.

use anyhow::bail;
use learnsync_client::pb;
use learnsync_sim::{EntityKind, GenerateParams};
use learnsync_store::observe;
use learnsync_store::testing::{self, LedgerFootprint};

use super::{Bed, platform};

/// Syncs a platform of `enrollments` course enrollments (with the generator's deliberately bad
/// records, which fail on every run, when `bad_records`), changes `changed` percent of its course
/// enrollments when asked, then measures the comparisons.
pub(super) async fn bench_wal(
    enrollments: usize,
    bad_records: bool,
    changed: Option<f64>,
) -> anyhow::Result<()> {
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
    let changed = match changed {
        Some(percent) => change_enrollments(&bed, percent)?,
        None => 0,
    };
    println!("load average before the comparisons: {}", load_average());
    println!(
        "| area | records read | unchanged | written | wal bytes | wal bytes / record read | wal bytes / changed record | wall s |"
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
        let per_changed = match area {
            pb::Area::Enrollments if changed > 0 => format!("{:.1}", wal as f64 / changed as f64),
            _ => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {wal} | {:.1} | {per_changed} | {:.1} |",
            area.as_str_name(),
            counts.read,
            counts.unchanged,
            counts.written,
            wal as f64 / counts.read.max(1) as f64,
            wall.as_secs_f64(),
        );
    }
    let per_changed = if changed > 0 {
        format!("{:.1}", total_wal as f64 / changed as f64)
    } else {
        String::new()
    };
    println!(
        "| all | {total_read} | | | {total_wal} | {:.1} | {per_changed} | |",
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

/// Changes `percent` of the simulator's course enrollments, spread evenly over them: a score no
/// generated enrollment has (generated scores are whole numbers), so each one changed differs
/// from what Salesforce holds. Returns how many were changed.
fn change_enrollments(bed: &Bed, percent: f64) -> anyhow::Result<usize> {
    if !(percent > 0.0 && percent <= 100.0) {
        bail!("--changed takes a percentage above 0 and at most 100, not {percent}");
    }
    let keys = super::enrollment_keys(bed);
    let count = ((keys.len() as f64 * percent / 100.0).round() as usize).max(1);
    let step = (keys.len() / count).max(1);
    for key in keys.iter().step_by(step).take(count) {
        bed.docebo.update(
            EntityKind::CourseEnrollments,
            key,
            serde_json::json!({"enrollment_score": 12.34}),
        )?;
    }
    println!(
        "changed {count} of {} course enrollments ({percent}%)",
        keys.len()
    );
    Ok(count)
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
