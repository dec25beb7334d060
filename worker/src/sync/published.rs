//! The sessions read once for both areas: a courses run's sessions job saves each session
//! course's sessions as it reads them and publishes them at its end (a full run replaces the
//! connection's reading, an incremental one merges into it what changed since the reading it
//! merges into, and the whole listing of the courses that reading lacks); the enrollments area's
//! roster jobs walk that reading (its course list and sessions) and read only the rosters from
//! Docebo, while it is the courses area's latest run's (`store::worker::sessions`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use learnsync_store::model::JobKind;
use learnsync_store::worker::{self as store_worker, SessionPage, SessionReading, session_reading};
use serde_json::Value;
use uuid::Uuid;

use super::JobRun;
use super::checkpoint::Phase;
use super::listing::in_categories;
use super::shared::Shared;
use crate::context::{JobCtx, SyncResult};
use crate::docebo::{Page, PageRef};
use crate::mapping::id_of;

/// What a published sessions reading's walk checkpoints name as the reading its positions count
/// in: `sessions/<courses run id>`.
pub(super) const SESSIONS_READING: &str = "sessions/";

/// A page of a course's sessions from a published reading, which holds the whole listing as one
/// answer: its first page has every item.
pub(super) fn published_page(items: &[Value], at: &PageRef) -> Page {
    let first = at.page <= 1 && at.cursor.is_none();
    Page {
        items: if first { items.to_vec() } else { Vec::new() },
        has_more: false,
        total_count: Some(items.len() as i64),
        cursor: None,
        made_after: None,
    }
}

/// The sessions reading a roster job walks instead of listing the course list and the sessions
/// itself (their root and middle levels): the courses area's latest run's, read
/// under the job's category filter, holding the whole listing of every session course of the
/// job's `course_types`. `None`: the job lists them itself.
pub(super) async fn published_sessions(
    ctx: &JobCtx,
    course_types: &[&str],
) -> SyncResult<Option<(Shared, Arc<HashMap<i64, Vec<Value>>>)>> {
    let reading = {
        let conn = ctx.store.conn().await?;
        session_reading(&conn, ctx.job.connection_id).await?
    };
    let Some(reading) = reading.filter(|reading| reading.latest) else {
        return Ok(None);
    };
    let categories = &ctx.job.course_category_ids;
    if let Some(course) = unfit_course(&reading, categories, course_types) {
        tracing::debug!(
            course,
            "the published sessions reading does not fit this job: listing the sessions"
        );
        return Ok(None);
    }
    let shared = Shared {
        items: reading.courses,
        reading: format!("{SESSIONS_READING}{}", reading.run_id),
        incomplete: None,
    };
    Ok(Some((shared, Arc::new(reading.sessions))))
}

/// Why a reading does not serve a job of this category filter and course types: `Some(0)` when
/// it was read under other categories, or the id of a course of those types whose sessions it
/// does not hold whole.
fn unfit_course(
    reading: &SessionReading,
    categories: &[i64],
    course_types: &[&str],
) -> Option<i64> {
    if !same_categories(&reading.categories, categories) {
        return Some(0);
    }
    reading
        .courses
        .iter()
        .filter(|course| {
            course
                .get("course_type")
                .and_then(Value::as_str)
                .is_some_and(|kind| course_types.contains(&kind.to_ascii_lowercase().as_str()))
                && in_categories(categories, course)
        })
        .filter_map(|course| id_of(course, "id_course"))
        .find(|id| !reading.sessions.contains_key(id))
}

/// Whether two category filters are the same set.
fn same_categories(a: &[i64], b: &[i64]) -> bool {
    let sorted = |ids: &[i64]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    sorted(a) == sorted(b)
}

/// How a sessions job publishes what it reads.
pub(super) enum Saving {
    /// A run over all time: its reading replaces the connection's.
    Full,
    /// An incremental run: what it reads is merged into the reading `previous` published.
    Merge {
        /// The run that last published the reading.
        previous: Uuid,
        /// The reading's sessions, by course.
        sessions: HashMap<i64, Vec<Value>>,
    },
}

impl Saving {
    /// The courses whose sessions the reading merged into holds (`None`: a full run reads all
    /// whole).
    pub(super) fn known(&self) -> Option<Arc<HashSet<i64>>> {
        match self {
            Saving::Full => None,
            Saving::Merge { sessions, .. } => Some(Arc::new(sessions.keys().copied().collect())),
        }
    }
}

/// Merges an incremental sessions job's pages into a reading's sessions: a page read with the
/// run's `updated_from` replaces or adds the sessions it lists (by id); a page read whole
/// replaces its course's; a course whose sessions took several pages goes (the roster jobs then
/// list for themselves); so do courses no longer in the course list (`root`).
pub(super) fn merge_pages(
    mut sessions: HashMap<i64, Vec<Value>>,
    pages: Vec<SessionPage>,
    root: &HashSet<i64>,
) -> HashMap<i64, Vec<Value>> {
    for page in pages {
        if !page.whole {
            sessions.remove(&page.course_id);
            continue;
        }
        if !page.filtered {
            sessions.insert(page.course_id, page.items);
            continue;
        }
        let held = sessions.entry(page.course_id).or_default();
        for item in page.items {
            let id = id_of(&item, "id");
            match held
                .iter_mut()
                .find(|old| id.is_some() && id_of(old, "id") == id)
            {
                Some(old) => *old = item,
                None => held.push(item),
            }
        }
    }
    sessions.retain(|course, _| root.contains(course));
    sessions
}

impl JobRun<'_> {
    /// How this job publishes the sessions it reads, if it does: the sessions job of a courses
    /// run (not a check, not a webhook run); over all time it replaces the connection's reading,
    /// an incremental run merges into it when it reads every change since that reading began
    /// (its `updated_from` no later), under the same category filter.
    pub(super) async fn session_saving(&self) -> SyncResult<Option<Saving>> {
        let job = &self.ctx.job;
        if job.kind != JobKind::Sessions || self.targets.is_some() || job.check_only {
            return Ok(None);
        }
        let Some(from) = self.reads_from() else {
            return Ok(Some(Saving::Full));
        };
        let reading = {
            let conn = self.ctx.store.conn().await?;
            session_reading(&conn, job.connection_id).await?
        };
        Ok(reading
            .filter(|reading| {
                reading.last_read_from >= from
                    && same_categories(&reading.categories, &job.course_category_ids)
            })
            .map(|reading| Saving::Merge {
                previous: reading.run_id,
                sessions: reading.sessions,
            }))
    }

    /// After the sessions job's listing, proven complete: publishes what it read (the run's
    /// course list, shared under `listing` and holding the courses `root`, and the sessions
    /// saved as read).
    pub(super) async fn publish_sessions(
        &self,
        saving: Option<Saving>,
        listing: &str,
        root: &HashSet<i64>,
    ) -> SyncResult<()> {
        let Some(saving) = saving else {
            return Ok(());
        };
        if self.checkpoint.phase == Phase::List || !self.checkpoint.listing_complete {
            return Ok(());
        }
        let categories = self.ctx.job.course_category_ids.clone();
        let published = match saving {
            Saving::Full => {
                self.ctx
                    .fenced(async |fenced| {
                        Ok(store_worker::publish_sessions(fenced, listing, &categories).await?)
                    })
                    .await?
            }
            Saving::Merge { previous, sessions } => {
                let pages = {
                    let conn = self.ctx.store.conn().await?;
                    store_worker::session_pages(&conn, &self.ctx.job).await?
                };
                let merged = merge_pages(sessions, pages, root);
                self.ctx
                    .fenced(async |fenced| {
                        Ok(
                            store_worker::merge_sessions(fenced, previous, listing, &merged)
                                .await?,
                        )
                    })
                    .await?
            }
        };
        if published {
            tracing::info!("sessions reading published for the enrollments area");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(course_id: i64, ids: &[i64], whole: bool, filtered: bool) -> SessionPage {
        SessionPage {
            course_id,
            items: ids
                .iter()
                .map(|id| serde_json::json!({ "id": id, "v": course_id }))
                .collect(),
            whole,
            filtered,
        }
    }

    fn ids(sessions: &HashMap<i64, Vec<Value>>, course: i64) -> Vec<i64> {
        sessions[&course]
            .iter()
            .map(|item| id_of(item, "id").unwrap())
            .collect()
    }

    #[test]
    fn changes_merge_by_id_whole_listings_replace_and_what_cannot_be_held_goes() {
        let held: HashMap<i64, Vec<Value>> = [
            (1, page(1, &[10, 11], true, false).items),
            (2, page(2, &[20], true, false).items),
            (3, page(3, &[30], true, false).items),
            (4, page(4, &[40], true, false).items),
        ]
        .into();
        let pages = vec![
            // Course 1: session 11 changed, 12 created.
            page(1, &[11, 12], true, true),
            // Course 5, new to the reading: read whole.
            page(5, &[50, 51], true, false),
            // Course 3: its changes took several pages.
            page(3, &[31], false, true),
        ];
        let root: HashSet<i64> = [1, 2, 3, 5].into();
        let merged = merge_pages(held, pages, &root);
        assert_eq!(ids(&merged, 1), [10, 11, 12]);
        assert_eq!(ids(&merged, 2), [20]);
        assert_eq!(ids(&merged, 5), [50, 51]);
        // Course 3 cannot be held whole; course 4 left the course list.
        assert!(!merged.contains_key(&3));
        assert!(!merged.contains_key(&4));
    }
}
