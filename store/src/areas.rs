//! Area configurations: enabled or not, manual or realtime, and the synchronization milestones.

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::codes::ErrorCode;
use crate::model::{Area, AreaConfig, Mode, area_subject};
use crate::{Error, Result};

pub(crate) const COLUMNS: &str = "connection_id, area, enabled, mode, interval_seconds, course_category_ids, update_time, \
    first_success_time, last_success_time, watermark, next_run_time, full_interval_seconds, next_full_time";

pub(crate) fn from_row(row: &Row) -> Result<AreaConfig> {
    Ok(AreaConfig {
        connection_id: row.try_get("connection_id")?,
        area: Area::parse(row.try_get("area")?)?,
        enabled: row.try_get("enabled")?,
        mode: Mode::parse(row.try_get("mode")?)?,
        interval_seconds: row.try_get("interval_seconds")?,
        course_category_ids: row.try_get("course_category_ids")?,
        update_time: row.try_get("update_time")?,
        first_success_time: row.try_get("first_success_time")?,
        last_success_time: row.try_get("last_success_time")?,
        watermark: row.try_get("watermark")?,
        next_run_time: row.try_get("next_run_time")?,
        full_interval_seconds: row.try_get("full_interval_seconds")?,
        next_full_time: row.try_get("next_full_time")?,
    })
}

/// A configuration to set.
#[derive(Clone, Debug, PartialEq)]
pub struct AreaSettings {
    /// Whether the area synchronizes.
    pub enabled: bool,
    /// Manual or realtime.
    pub mode: Mode,
    /// The realtime interval in seconds.
    pub interval_seconds: i32,
    /// Courses only: the category filter.
    pub course_category_ids: Vec<i64>,
    /// Realtime: seconds between two full comparisons.
    pub full_interval_seconds: i32,
}

/// Reads an area's configuration, if it was ever configured.
pub async fn get(
    client: &impl GenericClient,
    connection_id: Uuid,
    area: Area,
) -> Result<Option<AreaConfig>> {
    let sql = format!("SELECT {COLUMNS} FROM area_configs WHERE connection_id = $1 AND area = $2");
    client
        .query_opt(&sql, &[&connection_id, &area.as_str()])
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

/// Reads an area's configuration and locks it until the transaction ends: Start, Stop,
/// Resynchronize and Configure of one area take turns on this lock, so it takes a transaction.
pub async fn lock(
    client: &Transaction<'_>,
    connection_id: Uuid,
    area: Area,
) -> Result<Option<AreaConfig>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM area_configs WHERE connection_id = $1 AND area = $2 FOR UPDATE"
    );
    client
        .query_opt(&sql, &[&connection_id, &area.as_str()])
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

/// Reads every configured area of a connection.
pub async fn list(client: &impl GenericClient, connection_id: Uuid) -> Result<Vec<AreaConfig>> {
    let sql = format!("SELECT {COLUMNS} FROM area_configs WHERE connection_id = $1 ORDER BY area");
    let rows = client.query(&sql, &[&connection_id]).await?;
    rows.iter().map(from_row).collect()
}

/// Fails unless users and courses have each completed a run (what enrollments need first).
pub async fn require_enrollment_prerequisites(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<()> {
    let rows = client
        .query(
            "SELECT area FROM area_configs WHERE connection_id = $1 AND area IN ('users', 'courses') \
             AND first_success_time IS NOT NULL",
            &[&connection_id],
        )
        .await?;
    let done: Vec<String> = rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let missing: Vec<&str> = ["users", "courses"]
        .into_iter()
        .filter(|area| !done.iter().any(|d| d == area))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::precondition(
        ErrorCode::PrerequisiteNotSynchronized,
        area_subject(connection_id, Area::Enrollments),
        format!(
            "enrollments need users and courses synchronized first; not yet completed a run: {}",
            missing.join(", ")
        ),
    ))
}

/// Sets an area's configuration. Enabling enrollments needs users and courses synchronized
/// first. Switching to realtime (or changing its interval) schedules the next run one interval
/// from now; switching to manual clears the schedule.
pub async fn configure(
    client: &impl GenericClient,
    connection_id: Uuid,
    area: Area,
    settings: &AreaSettings,
) -> Result<AreaConfig> {
    if area == Area::Enrollments && settings.enabled {
        require_enrollment_prerequisites(client, connection_id).await?;
    }
    let sql = format!(
        "INSERT INTO area_configs AS a (connection_id, area, enabled, mode, interval_seconds, course_category_ids, \
             full_interval_seconds, next_run_time, next_full_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, \
             CASE WHEN $4 = 'realtime' AND $3 THEN now() + $5::int * interval '1 second' END, \
             CASE WHEN $4 = 'realtime' AND $3 THEN now() + $7::int * interval '1 second' END) \
         ON CONFLICT (connection_id, area) DO UPDATE SET \
             enabled = excluded.enabled, mode = excluded.mode, interval_seconds = excluded.interval_seconds, \
             course_category_ids = excluded.course_category_ids, update_time = now(), \
             full_interval_seconds = excluded.full_interval_seconds, \
             next_full_time = CASE \
                 WHEN excluded.mode <> 'realtime' OR NOT excluded.enabled THEN NULL \
                 WHEN a.mode = 'realtime' AND a.enabled AND a.full_interval_seconds = excluded.full_interval_seconds \
                      AND a.next_full_time IS NOT NULL THEN a.next_full_time \
                 ELSE now() + excluded.full_interval_seconds * interval '1 second' END, \
             next_run_time = CASE \
                 WHEN excluded.mode <> 'realtime' OR NOT excluded.enabled THEN NULL \
                 WHEN a.mode = 'realtime' AND a.enabled AND a.interval_seconds = excluded.interval_seconds \
                      AND a.next_run_time IS NOT NULL THEN a.next_run_time \
                 ELSE now() + excluded.interval_seconds * interval '1 second' END \
         RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &connection_id,
                &area.as_str(),
                &settings.enabled,
                &settings.mode.as_str(),
                &settings.interval_seconds,
                &settings.course_category_ids,
                &settings.full_interval_seconds,
            ],
        )
        .await?;
    from_row(&row)
}
