//! The course list, read once per run: the courses job and every nested listing (sessions,
//! webinar and ILT rosters) start from it, so the first job of a run that needs it reads it whole,
//! with its verification passes, and publishes it in Postgres (`run_listings`); the run's other
//! jobs, on any worker, walk the published items instead of Docebo's pages. A reader whose attempt
//! ends before it published (a crash, a retry) is replaced by the next job that asks.
//!
//! The reading proves itself as the walk proves an outer level ([`super::listing`]): one answer is
//! consistent; a list read by page number over several pages is read again until a pass sees
//! nothing move (the same `total_count` on every page, as many items as that total, none twice,
//! none new), and that quiet pass alone is the list; after [`MAX_VERIFY_PASSES`] passes that kept
//! moving, every item any pass read is kept and the reading is not proven (so no job of the run
//! unenrolls).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use learnsync_store::model::COURSES_PATH;
use learnsync_store::worker::{PublishedListing, SharedListing, publish_listing, shared_listing};
use serde_json::Value;

use super::checkpoint::Pos;
use super::listing::MAX_VERIFY_PASSES;
use crate::context::{JobCtx, SyncResult};
use crate::docebo::{Docebo, Page, PageRef};
use crate::mapping::{docebo_time, id_of};

/// A run's published reading of a shared listing.
pub(super) type Shared = PublishedListing;

/// Whether a root level is read once per run and shared: the course list, outside webhook runs
/// (which read only what their events named).
pub(super) fn is_shared(path: &str, targeted: bool) -> bool {
    path == COURSES_PATH && !targeted
}

/// The name a run's jobs share a listing under: its path and filters, as a query string (jobs
/// whose filters differ, such as an incremental courses job's `updated_from`, read their own).
pub(super) fn listing_key(path: &str, filters: &[(String, String)]) -> String {
    let query: Vec<String> = filters
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// The page `at` of a published reading, as Docebo would have answered it in one consistent view.
pub(super) fn shared_page(shared: &Shared, at: &PageRef) -> Page {
    let size = at.page_size.max(1) as usize;
    let start = (at.page.max(1) as usize - 1) * size;
    let items: Vec<Value> = shared
        .items
        .iter()
        .skip(start)
        .take(size)
        .cloned()
        .collect();
    Page {
        has_more: start + items.len() < shared.items.len() && !items.is_empty(),
        total_count: Some(shared.items.len() as i64),
        items,
        cursor: None,
        made_after: None,
    }
}

/// The run's reading of the listing `path` with `filters`: published by another job, or read
/// now by this one (and published), or waited for while another job's running attempt reads it.
pub(super) async fn shared_level(
    ctx: &JobCtx,
    docebo: &Docebo,
    path: &str,
    filters: &[(String, String)],
    page_size: u32,
) -> SyncResult<Shared> {
    let key = listing_key(path, filters);
    let mut waiting = false;
    loop {
        let found = {
            let conn = ctx.store.conn().await?;
            shared_listing(&conn, &ctx.job, &key).await?
        };
        match found {
            SharedListing::Ready(shared) => return Ok(shared),
            SharedListing::Read => {
                ctx.status("reading the course list for the run's jobs")
                    .await?;
                let (items, incomplete) = read_whole(ctx, docebo, path, filters, page_size).await?;
                let published = ctx
                    .fenced(async |fenced| {
                        Ok(publish_listing(fenced, &key, items, incomplete).await?)
                    })
                    .await?;
                if let Some(shared) = published {
                    return Ok(shared);
                }
            }
            SharedListing::Wait => {
                if !waiting {
                    waiting = true;
                    ctx.status("waiting for the course list another job of the run reads")
                        .await?;
                }
                ctx.sleep(ctx.settings.poll_interval).await?;
            }
        }
    }
}

/// The course list's change time, which it is sorted by (oldest first).
const CHANGED: &str = "date_last_updated";

/// One pass over a listing read by page number.
#[derive(Default)]
struct Pass {
    items: Vec<Value>,
    ids: BTreeSet<i64>,
    total: Option<i64>,
    pages: u32,
    moved: bool,
    malformed: bool,
    /// A Docebo time no later than the first page was made ([`Page::made_after`]).
    started: Option<DateTime<Utc>>,
    /// The latest change time read, while every item read has one, in listing order.
    latest: Option<String>,
    /// An item without a change time, or out of the listing's order: no proof by the order.
    unordered: bool,
}

impl Pass {
    /// Notes an item's change time: the listing is sorted by it, oldest first.
    fn note_change(&mut self, item: &Value) {
        match item.get(CHANGED).and_then(Value::as_str) {
            Some(time) if time.len() == 19 && !time.starts_with("0000") => {
                if self.latest.as_deref().is_some_and(|latest| time < latest) {
                    self.unordered = true;
                }
                self.latest = Some(time.to_string());
            }
            _ => self.unordered = true,
        }
    }

    /// Whether this one pass is proven whole by the listing's order, without a verification
    /// pass. Sorted by change time, oldest first, a listing read by page number can skip an item
    /// only when an item read earlier leaves its place: deleted (the total drops, unless a
    /// creation makes up for it) or changed (it moves to the end, and is read twice or last). A
    /// creation or a change lands at the end, with a change time no earlier than the first page:
    /// the last page, read after it, would hold it. So when every page gave the same total, the
    /// pass read that many items, none twice, and every change time read is older than the
    /// second the first page was made in, nothing was created or changed while the pass ran;
    /// then nothing was deleted either (the total stayed), and the pass read one unchanging list.
    fn quiet_by_order(&self) -> bool {
        let (Some(started), Some(latest)) = (self.started, self.latest.as_deref()) else {
            return false;
        };
        let cutoff = docebo_time(started);
        !self.moved
            && !self.unordered
            && !self.malformed
            && self.total == Some(self.items.len() as i64)
            && latest < cutoff.as_str()
    }
}

/// Reads a whole listing (its items carry `id_course`), proving it as the module says; returns
/// the items and why they are not proven complete.
async fn read_whole(
    ctx: &JobCtx,
    docebo: &Docebo,
    path: &str,
    filters: &[(String, String)],
    page_size: u32,
) -> SyncResult<(Vec<Value>, Option<String>)> {
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    let mut every: Vec<Value> = Vec::new();
    let mut index: HashMap<i64, usize> = HashMap::new();
    for number in 0..=MAX_VERIFY_PASSES {
        let pass = read_pass(ctx, docebo, path, filters, page_size, &seen, number).await?;
        let read = pass.items.len() as i64;
        if pass.malformed {
            keep(&mut every, &mut index, pass.items);
            return Ok((
                every,
                Some("docebo said more courses follow but sent an empty page".into()),
            ));
        }
        let by_order = number == 0 && pass.quiet_by_order();
        if pass.pages == 1 || by_order || (number > 0 && !pass.moved && pass.total == Some(read)) {
            // One answer, or a quiet verification pass: this pass alone is the whole list.
            let short = pass.total.filter(|total| read < *total);
            let reason = short
                .map(|total| format!("docebo announced {total} courses, the listing gave {read}"));
            return Ok((pass.items, reason));
        }
        seen.extend(pass.ids.iter().copied());
        keep(&mut every, &mut index, pass.items);
        tracing::debug!(
            pass = number + 1,
            "verifying the course list read by page number"
        );
    }
    Ok((
        every,
        Some("the courses kept changing while they were read".into()),
    ))
}

/// Adds a pass's items to those kept, the later version of an item replacing the earlier.
fn keep(every: &mut Vec<Value>, index: &mut HashMap<i64, usize>, items: Vec<Value>) {
    for item in items {
        match id_of(&item, "id_course").and_then(|id| index.get(&id).copied()) {
            Some(at) => every[at] = item,
            None => {
                if let Some(id) = id_of(&item, "id_course") {
                    index.insert(id, every.len());
                }
                every.push(item);
            }
        }
    }
}

/// Reads one pass over the listing by page number, noting what moved: a missing or changed
/// total, an item twice, or (verification passes) an item no earlier pass had.
async fn read_pass(
    ctx: &JobCtx,
    docebo: &Docebo,
    path: &str,
    filters: &[(String, String)],
    page_size: u32,
    seen: &BTreeSet<i64>,
    number: u32,
) -> SyncResult<Pass> {
    let mut pass = Pass::default();
    let mut at = Pos::first();
    loop {
        let page = docebo
            .list(ctx, path, filters, &at.page_ref(page_size, false))
            .await?;
        pass.pages += 1;
        match (pass.pages, page.total_count) {
            (_, None) => pass.moved = true,
            (1, total) => {
                pass.total = total;
                pass.started = page.made_after;
            }
            (_, total) if total != pass.total => pass.moved = true,
            _ => {}
        }
        let more = page.has_more;
        let empty = page.items.is_empty();
        for item in page.items {
            let id = id_of(&item, "id_course");
            if let Some(id) = id
                && (!pass.ids.insert(id) || (number > 0 && !seen.contains(&id)))
            {
                pass.moved = true;
            }
            pass.note_change(&item);
            pass.items.push(item);
        }
        if !more || empty {
            pass.malformed = more;
            return Ok(pass);
        }
        at.next(page.cursor);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reading(count: i64) -> Shared {
        Shared {
            items: (0..count)
                .map(|id| serde_json::json!({ "id_course": id }))
                .collect(),
            reading: "job/1".into(),
            incomplete: None,
        }
    }

    fn at(page: u32, page_size: u32) -> PageRef {
        PageRef {
            page,
            cursor: None,
            page_size,
            cursor_mode: false,
        }
    }

    #[test]
    fn a_reading_is_served_in_pages_of_the_job_s_size() {
        let shared = reading(12);
        let first = shared_page(&shared, &at(1, 5));
        assert_eq!(first.items.len(), 5);
        assert!(first.has_more);
        assert_eq!(first.total_count, Some(12));
        let last = shared_page(&shared, &at(3, 5));
        assert_eq!(last.items.len(), 2);
        assert!(!last.has_more);
        assert_eq!(last.items[0]["id_course"], 10);
        let past = shared_page(&shared, &at(4, 5));
        assert!(past.items.is_empty() && !past.has_more);
        let empty = shared_page(&reading(0), &at(1, 5));
        assert!(empty.items.is_empty() && !empty.has_more);
        assert_eq!(empty.total_count, Some(0));
    }

    #[test]
    fn only_the_course_list_outside_webhook_runs_is_shared_and_filters_name_it() {
        assert!(is_shared(COURSES_PATH, false));
        assert!(!is_shared(COURSES_PATH, true));
        assert!(!is_shared("/manage/v1/user", false));
        let sort = vec![("sort_by".to_string(), "last_update".to_string())];
        let mut since = sort.clone();
        since.push(("updated_from".into(), "2024-01-01 00:00:00".into()));
        assert_eq!(
            listing_key(COURSES_PATH, &sort),
            "/learn/v1/courses?sort_by=last_update"
        );
        assert_ne!(
            listing_key(COURSES_PATH, &sort),
            listing_key(COURSES_PATH, &since)
        );
    }

    /// A pass of three courses changed at `times`, Docebo's total being 3, its first page made
    /// after 2024-05-01 12:00:00.5.
    fn pass_of(times: &[&str]) -> Pass {
        let mut pass = Pass {
            total: Some(3),
            pages: 2,
            started: Some("2024-05-01T12:00:00.5Z".parse().unwrap()),
            ..Pass::default()
        };
        for (id, time) in times.iter().enumerate() {
            let item = serde_json::json!({ "id_course": id, CHANGED: time });
            pass.note_change(&item);
            pass.items.push(item);
        }
        pass
    }

    #[test]
    fn one_pass_is_proven_by_its_order_only_when_nothing_changed_since_it_began() {
        let old = [
            "2024-04-01 00:00:00",
            "2024-04-01 00:00:00",
            "2024-05-01 11:59:59",
        ];
        assert!(pass_of(&old).quiet_by_order());
        // Changed in the second the first page was made in: perhaps while the pass ran.
        let late = [
            "2024-04-01 00:00:00",
            "2024-04-02 00:00:00",
            "2024-05-01 12:00:00",
        ];
        assert!(!pass_of(&late).quiet_by_order());
        // Not in the listing's order, or without a change time: the order proves nothing.
        let unsorted = [
            "2024-04-02 00:00:00",
            "2024-04-01 00:00:00",
            "2024-04-03 00:00:00",
        ];
        assert!(!pass_of(&unsorted).quiet_by_order());
        let undated = [
            "2024-04-01 00:00:00",
            "0000-00-00 00:00:00",
            "2024-04-03 00:00:00",
        ];
        assert!(!pass_of(&undated).quiet_by_order());
        // Short of Docebo's total, moved, or without the time of the first page.
        let mut short = pass_of(&old);
        short.total = Some(4);
        assert!(!short.quiet_by_order());
        let mut moved = pass_of(&old);
        moved.moved = true;
        assert!(!moved.quiet_by_order());
        let mut undated_page = pass_of(&old);
        undated_page.started = None;
        assert!(!undated_page.quiet_by_order());
    }

    #[test]
    fn a_later_version_of_an_item_replaces_the_earlier() {
        let mut every = Vec::new();
        let mut index = HashMap::new();
        keep(
            &mut every,
            &mut index,
            vec![
                serde_json::json!({ "id_course": 1, "name": "a" }),
                serde_json::json!({ "id_course": 2 }),
            ],
        );
        keep(
            &mut every,
            &mut index,
            vec![
                serde_json::json!({ "id_course": 1, "name": "b" }),
                serde_json::json!({ "id_course": 3 }),
            ],
        );
        assert_eq!(every.len(), 3);
        assert_eq!(every[0]["name"], "b");
    }
}
