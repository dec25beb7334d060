//! The sessions read once for both areas (`session_readings`): a courses run's sessions job saves
//! each session course's sessions as it reads them (`session_reading_pages`) and, its listing
//! proven complete, publishes them with the course list it walked (a full run replaces the
//! connection's reading, an incremental one merges what changed into it); the enrollments area's
//! roster jobs walk that reading instead of listing the sessions again, but only while it is the
//! reading of the courses area's latest run: every session learnsync wrote is then in it, and
//! what it lacks is either deleted or newer than the reading (`read_from`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use super::{ClaimedJob, Fenced};
use crate::Result;

/// A connection's published sessions reading.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionReading {
    /// The courses run whose sessions job read it.
    pub run_id: Uuid,
    /// When the latest reading merged into it began.
    pub last_read_from: DateTime<Utc>,
    /// Whether it is the reading of the courses area's latest run.
    pub latest: bool,
    /// The category filter it was read under (empty: every course).
    pub categories: Vec<i64>,
    /// The course list, in listing order.
    pub courses: Vec<Value>,
    /// Each session course's sessions (whole listings only), by course id.
    pub sessions: HashMap<i64, Vec<Value>>,
}

/// What a roster job's unenrollment may take as gone when it walked a published reading rather
/// than its own: a record of a session it read the roster of, or one written before the reading
/// began (its session existed then, and the complete reading lacks it: deleted).
#[derive(Clone, Debug, PartialEq)]
pub struct ListedSessions {
    /// When the reading of the course list began.
    pub read_from: DateTime<Utc>,
    /// The sessions whose rosters the job read.
    pub session_ids: Vec<i64>,
}

/// One session course's sessions as a sessions job read them.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionPage {
    /// The course.
    pub course_id: i64,
    /// Its sessions (the first page).
    pub items: Vec<Value>,
    /// The one answer held the whole listing.
    pub whole: bool,
    /// Read with the run's `updated_from`: the sessions changed since.
    pub filtered: bool,
}

/// Saves a sessions job's reading of one session course's sessions, as read (before the
/// checkpoint that covers it commits).
pub async fn save_session_page(
    client: &impl GenericClient,
    job: &ClaimedJob,
    page: &SessionPage,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO session_reading_pages (job_id, course_id, items, whole, filtered) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job_id, course_id) DO UPDATE SET items = excluded.items, \
                 whole = excluded.whole, filtered = excluded.filtered",
            &[
                &job.id,
                &page.course_id,
                &tokio_postgres::types::Json(&page.items),
                &page.whole,
                &page.filtered,
            ],
        )
        .await?;
    Ok(())
}

/// The pages a sessions job saved.
pub async fn session_pages(
    client: &impl GenericClient,
    job: &ClaimedJob,
) -> Result<Vec<SessionPage>> {
    let rows = client
        .query(
            "SELECT course_id, items, whole, filtered FROM session_reading_pages WHERE job_id = $1",
            &[&job.id],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let items = match row.try_get::<_, Value>("items")? {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            Ok(SessionPage {
                course_id: row.try_get("course_id")?,
                items,
                whole: row.try_get("whole")?,
                filtered: row.try_get("filtered")?,
            })
        })
        .collect()
}

/// Replaces the connection's reading, still `previous` (the run that last published it), by
/// `sessions` merged by the fenced incremental sessions job, with the course list it walked (the
/// run's shared listing `listing`, published and proven); the reading's start stays. Deletes the
/// job's pages as [`publish_sessions`] does. False when the reading changed since it was read,
/// or the course list is gone or unproven: nothing is merged then.
pub async fn merge_sessions(
    fenced: &Fenced<'_>,
    previous: Uuid,
    listing: &str,
    sessions: &HashMap<i64, Vec<Value>>,
) -> Result<bool> {
    let job = fenced.job;
    let by_course: serde_json::Map<String, Value> = sessions
        .iter()
        .map(|(course, items)| (course.to_string(), Value::Array(items.clone())))
        .collect();
    let merged = fenced
        .tx
        .execute(
            "UPDATE session_readings s SET run_id = $2, courses = l.items, sessions = $5, \
                 last_read_from = l.read_from, publish_time = now() \
             FROM run_listings l \
             WHERE s.connection_id = $1 AND s.run_id = $3 \
               AND l.run_id = $2 AND l.listing = $4 AND l.items IS NOT NULL AND l.incomplete IS NULL",
            &[
                &job.connection_id,
                &job.run_id,
                &previous,
                &listing,
                &Value::Object(by_course),
            ],
        )
        .await?;
    delete_pages(fenced).await?;
    Ok(merged == 1)
}

/// Deletes the fenced job's saved pages, and those of its connection's jobs that ended.
async fn delete_pages(fenced: &Fenced<'_>) -> Result<()> {
    fenced
        .tx
        .execute(
            "DELETE FROM session_reading_pages p USING jobs j \
             WHERE j.id = p.job_id AND j.connection_id = $1 \
               AND (j.id = $2 OR j.state NOT IN ('queued', 'running'))",
            &[&fenced.job.connection_id, &fenced.job.id],
        )
        .await?;
    Ok(())
}

/// Publishes the fenced sessions job's reading as its connection's, with the course list it
/// walked (the run's shared listing `listing`, which must be published and proven): whole
/// listings only, under `categories`. Deletes the job's pages, and those of the connection's
/// jobs that ended without publishing. False when the course list is gone or unproven (a crash
/// of Postgres empties `run_listings`): nothing is published then.
pub async fn publish_sessions(
    fenced: &Fenced<'_>,
    listing: &str,
    categories: &[i64],
) -> Result<bool> {
    let job = fenced.job;
    let published = fenced
        .tx
        .execute(
            "WITH pages AS (SELECT course_id, items FROM session_reading_pages \
                            WHERE job_id = $3 AND whole) \
             INSERT INTO session_readings \
                 (connection_id, run_id, read_from, last_read_from, categories, courses, sessions) \
             SELECT $1, $2, l.read_from, l.read_from, $5, l.items, \
                    coalesce((SELECT jsonb_object_agg(course_id::text, items) FROM pages), '{}'::jsonb) \
             FROM run_listings l \
             WHERE l.run_id = $2 AND l.listing = $4 AND l.items IS NOT NULL AND l.incomplete IS NULL \
             ON CONFLICT (connection_id) DO UPDATE SET run_id = excluded.run_id, \
                 read_from = excluded.read_from, last_read_from = excluded.last_read_from, \
                 categories = excluded.categories, \
                 courses = excluded.courses, sessions = excluded.sessions, publish_time = now()",
            &[&job.connection_id, &job.run_id, &job.id, &listing, &categories],
        )
        .await?;
    delete_pages(fenced).await?;
    Ok(published == 1)
}

/// The connection's published sessions reading, saying whether it is the reading of the courses
/// area's latest run (only then may a roster job walk it: a later run, even one still going, may
/// have written sessions it lacks).
pub async fn session_reading(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<Option<SessionReading>> {
    let row = client
        .query_opt(
            "SELECT s.run_id, s.last_read_from, s.categories, s.courses, s.sessions, \
                    s.run_id IS NOT DISTINCT FROM ( \
                        SELECT r.id FROM runs r WHERE r.connection_id = $1 AND r.area = 'courses' \
                        ORDER BY r.create_time DESC, r.id DESC LIMIT 1) AS latest \
             FROM session_readings s WHERE s.connection_id = $1",
            &[&connection_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let courses = match row.try_get::<_, Value>("courses")? {
        Value::Array(items) => items,
        _ => return Ok(None),
    };
    let Value::Object(by_course) = row.try_get::<_, Value>("sessions")? else {
        return Ok(None);
    };
    let mut sessions = HashMap::with_capacity(by_course.len());
    for (course, items) in by_course {
        let (Ok(course), Value::Array(items)) = (course.parse::<i64>(), items) else {
            return Ok(None);
        };
        sessions.insert(course, items);
    }
    Ok(Some(SessionReading {
        run_id: row.try_get("run_id")?,
        last_read_from: row.try_get("last_read_from")?,
        latest: row.try_get("latest")?,
        categories: row.try_get("categories")?,
        courses,
        sessions,
    }))
}

/// The reading a courses run published, whatever run is the latest since (a roster job's
/// unenrollment checks what the reading it walked proves).
pub async fn listed_sessions(
    client: &impl GenericClient,
    connection_id: Uuid,
    run_id: Uuid,
) -> Result<Option<ListedSessions>> {
    let row = client
        .query_opt(
            "SELECT read_from, session_ids FROM session_readings \
             WHERE connection_id = $1 AND run_id = $2",
            &[&connection_id, &run_id],
        )
        .await?;
    row.map(|row| {
        Ok(ListedSessions {
            read_from: row.try_get("read_from")?,
            session_ids: row.try_get("session_ids")?,
        })
    })
    .transpose()
}
