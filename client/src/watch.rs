//! `--watch`: live progress bars, one per job of the active runs, until no run is active.

use std::collections::HashMap;
use std::time::Duration;

use crate::{Client, pb};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::text::{enum_name, status};

/// Shows progress bars for the active runs of the given areas (all when empty), refreshed twice a
/// second, then prints the final status table.
pub async fn watch(
    client: &mut Client,
    connection_id: &str,
    areas: &[pb::Area],
) -> anyhow::Result<()> {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<32} [{bar:30}] {pos:>8}/{len:<8} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let spinner = ProgressStyle::with_template("{prefix:<32} {spinner} {pos:>8} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let current = client.get_status(connection_id, areas).await?;
        let mut any_active = false;
        for area in &current.areas {
            let Some(run) = area.active_run.as_ref().or(area.last_run.as_ref()) else {
                continue;
            };
            let active = area.active_run.is_some();
            any_active |= active;
            if !active && !bars.keys().any(|k| k.starts_with(&run.id)) {
                continue;
            }
            for job in &run.jobs {
                let key = format!("{}/{}", run.id, job.id);
                let bar = bars.entry(key).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_prefix(format!(
                        "{}: {}",
                        enum_name(pb::Area::try_from(run.area)),
                        enum_name(pb::JobKind::try_from(job.kind))
                    ));
                    bar
                });
                let counts = job.counts.unwrap_or_default();
                let done = (counts.written + counts.unchanged + counts.failed).max(0) as u64;
                if counts.expected > 0 {
                    bar.set_style(style.clone());
                    bar.set_length(counts.expected.max(0) as u64);
                } else {
                    bar.set_style(spinner.clone());
                }
                bar.set_position(done);
                let mut message = enum_name(pb::JobState::try_from(job.state));
                if counts.failed > 0 {
                    message.push_str(&format!(", {} failed", counts.failed));
                }
                if !job.status_message.is_empty() {
                    message.push_str(&format!(" ({})", job.status_message));
                }
                bar.set_message(message);
                if job.state != pb::JobState::Queued as i32
                    && job.state != pb::JobState::Running as i32
                {
                    bar.finish();
                } else {
                    bar.tick();
                }
            }
        }
        if !any_active {
            for bar in bars.values() {
                bar.finish();
            }
            drop(multi);
            println!("{}", status(&current));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
