//! The Docebo listing walk: a job kind's listing (flat, or courses → sessions → roster as its
//! [`KindSpec`] says) read page by page, yielding leaf pages and knowing its position at all
//! times, so that a checkpoint can resume it.
//!
//! The walk also proves (or not) that it read everything, level by level ([`Proof`]): the full
//! comparison unenrolls only after a listing proven complete. One answer is consistent, and so is
//! a walk by Docebo's cursor; outer levels read by page number over several pages are read again
//! until a pass sees nothing move; every level's count must reach Docebo's `total_count`; a 404
//! on a nested listing means "gone" only when its parent is confirmed gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use learnsync_store::model::{
    COURSES_PATH, KindSpec, Listing, LogLevel, NewLogEvent, WebhookParents,
};
use learnsync_store::realtime::Targets;
use learnsync_store::worker::{SessionPage, save_session_page};
use serde_json::{Map, Value};

use super::checkpoint::{Pos, Proof};
use super::published::published_page;
use super::shared::{Shared, shared_page};
use crate::context::{Failure, JobCtx, SyncError, SyncResult};
use crate::docebo::{Docebo, Page, PageRef};
use crate::mapping::{course_category, id_of};

/// How long after it ended a session's roster is still read by incremental runs (attendance and
/// evaluations are recorded after the session).
pub(super) const ROSTER_GRACE_DAYS: i64 = 14;

/// Verification passes over an outer level read by page number before the walk gives up proving
/// it (the listing is then not complete, and the comparison unenrolls nothing).
pub(super) const MAX_VERIFY_PASSES: u32 = 3;

/// One level of a listing.
#[derive(Clone, Debug)]
struct Level {
    path: String,
    filters: Vec<(String, String)>,
    /// Fields added to each item (`_course_type`, `_session_id`, ...).
    context: Map<String, Value>,
    /// Whether the level is read in cursor mode (the kind's description says where).
    cursor_mode: bool,
    /// The id field of its items (outer levels: what the levels below are read for).
    id_field: &'static str,
    /// What it lists, for the log (`courses`, `sessions of course 12`, ...).
    what: String,
    /// The id of the item it lists the children of (a course's sessions: the course).
    parent_id: Option<i64>,
}

/// One leaf page.
pub(super) struct LeafPage {
    /// The page's items, with their level's context fields added.
    pub(super) items: Vec<Value>,
    /// Docebo's total for this leaf listing (given on its first page only).
    pub(super) total: Option<i64>,
}

/// What limits a walk besides the listing itself.
#[derive(Clone, Debug, Default)]
pub(super) struct Scope {
    /// `updated_from` (and sort) filters of the leaf level.
    pub(super) leaf_filters: Vec<(String, String)>,
    /// Webhook runs: only the records the events named.
    pub(super) targets: Option<Targets>,
    /// The courses area's category filter (empty: every course).
    pub(super) categories: Vec<i64>,
    /// Incremental session-enrollment runs: sessions (and courses) that ended before this Docebo
    /// time are not read. A roster has no change filter, so each session read costs a call
    /// whatever changed, and ended sessions' rosters almost never change; webhooks and the full
    /// comparison still cover them.
    pub(super) ended_before: Option<String>,
    /// Whether outer levels read by page number are verified by passes that read them again
    /// (full and incremental runs; webhook runs read what the events named).
    pub(super) verify: bool,
}

/// Walks a (possibly nested) listing, yielding leaf pages, and knows its position at all times.
pub(super) struct Walker<'a> {
    spec: &'static KindSpec,
    docebo: &'a Docebo,
    scope: Scope,
    pos: Vec<Pos>,
    levels: Vec<Level>,
    pages: Vec<Option<Page>>,
    depth_now: usize,
    /// Per outer level: for each item of the page held, whether it is not walked into (an earlier
    /// pass, or this one, already did).
    walked: Vec<Vec<bool>>,
    /// Per outer level: the proof before the page held was noted (what a checkpoint stores, since
    /// a resumed walk reads that page again).
    before: Vec<Proof>,
    /// Why the listing is not known to be complete (the first reason found).
    incomplete: Option<String>,
    done: bool,
    /// The run's shared reading of the root level (the course list), walked instead of Docebo's
    /// pages: one consistent view, proven (or not) by the job that read it.
    shared: Option<Shared>,
    /// The sessions of each session course as a published reading holds them, walked instead
    /// of Docebo's pages (roster jobs: [`super::published::published_sessions`]).
    sessions: Option<Arc<HashMap<i64, Vec<Value>>>>,
    /// Whether each session course's first page of sessions is saved as read, for the reading
    /// the job publishes at its end (the sessions job of a courses run).
    saves_sessions: bool,
    /// With [`Self::saves_sessions`] in an incremental run: the courses whose sessions the
    /// reading merged into holds (the others' are read whole).
    known_courses: Option<Arc<HashSet<i64>>>,
    /// The page size the positions count in.
    pub(super) page_size: u32,
}

/// Whether an item's date field holds a real Docebo date before `cutoff` (both in Docebo's
/// sortable `YYYY-MM-DD HH:MM:SS` form); zero and missing dates never are.
fn date_before(item: &Value, field: &str, cutoff: &str) -> bool {
    match item.get(field).and_then(Value::as_str) {
        Some(date) if date.len() >= 10 && !date.starts_with("0000") => date < cutoff,
        _ => false,
    }
}

/// Whether a course passes the courses area's category filter (an empty filter passes every
/// course; a course whose category the platform does not say does not pass a filter).
pub(super) fn in_categories(categories: &[i64], course: &Value) -> bool {
    categories.is_empty()
        || course_category(course).is_some_and(|category| categories.contains(&category))
}

/// The ids a webhook run named as parents of a kind's records.
fn named_parents(targets: &Targets, parents: WebhookParents) -> &std::collections::BTreeSet<i64> {
    match parents {
        WebhookParents::Courses => &targets.course_ids,
        WebhookParents::LearningPlans => &targets.learning_plan_ids,
        WebhookParents::Sessions => &targets.session_ids,
    }
}

impl<'a> Walker<'a> {
    /// A walk of `spec`'s listing from `pos` (from the start when `pos` does not fit the
    /// listing's depth), its root level read from `shared` when the run shares it.
    pub(super) fn new(
        spec: &'static KindSpec,
        docebo: &'a Docebo,
        scope: Scope,
        pos: Vec<Pos>,
        page_size: u32,
        shared: Option<Shared>,
    ) -> Walker<'a> {
        let depth = spec.listing.depth();
        let pos = if pos.len() == depth {
            pos
        } else {
            vec![Pos::first(); depth]
        };
        let root = Walker::root_level(spec, &scope);
        // A webhook run that named no record of this job's kind (only deletions) reads nothing.
        let done = match (&scope.targets, spec.webhook) {
            (Some(targets), Some(webhook)) => named_parents(targets, webhook.parents).is_empty(),
            _ => false,
        };
        let before = pos.iter().map(|at| at.proof.clone()).collect();
        Walker {
            spec,
            docebo,
            scope,
            pos,
            levels: vec![root],
            pages: vec![None],
            depth_now: 0,
            walked: vec![Vec::new(); depth],
            before,
            incomplete: shared.as_ref().and_then(|shared| shared.incomplete.clone()),
            done,
            shared,
            sessions: None,
            saves_sessions: false,
            known_courses: None,
            page_size,
        }
    }

    /// Walks the sessions of `sessions` (by course id) instead of listing them.
    pub(super) fn with_sessions(mut self, sessions: Arc<HashMap<i64, Vec<Value>>>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Saves each session course's first page of sessions as read; `known`: the courses whose
    /// sessions the reading merged into holds (the others are read whole).
    pub(super) fn saving_sessions(mut self, known: Option<Arc<HashSet<i64>>>) -> Self {
        self.saves_sessions = true;
        self.known_courses = known;
        self
    }

    /// Whether the sessions of `course` are read whole although the run reads changes only: the
    /// reading this job merges into does not hold them.
    fn unknown_course(&self, course: i64) -> bool {
        self.known_courses
            .as_ref()
            .is_some_and(|known| !known.contains(&course))
    }

    /// The root level of `spec`'s listing: its path and filters (what a shared reading is of).
    pub(super) fn root(spec: &KindSpec, scope: &Scope) -> (String, Vec<(String, String)>) {
        let level = Walker::root_level(spec, scope);
        (level.path, level.filters)
    }

    /// The outermost level: the flat listing, or every course.
    fn root_level(spec: &KindSpec, scope: &Scope) -> Level {
        let (path, leaf, cursor_mode) = match spec.listing {
            Listing::Flat {
                path, uses_cursor, ..
            } => (path, true, uses_cursor),
            // Nested listings start from every course, whatever its change time: a session may
            // change without its course. Docebo documents no cursor for courses.
            Listing::Nested { .. } => (COURSES_PATH, false, false),
        };
        // Oldest change first, as Docebo documents for courses (the other lists sort that way by
        // default): records changed while the listing runs move to its end, where it reads them.
        let mut filters = Vec::new();
        if path == COURSES_PATH {
            filters.push(("sort_by".to_string(), "last_update".to_string()));
            filters.push(("sort_by_direction".to_string(), "asc".to_string()));
        }
        if leaf {
            filters.extend(scope.leaf_filters.iter().cloned());
        }
        if let (Some(targets), Some(webhook)) = (&scope.targets, spec.webhook)
            && let Some(field) = webhook.listing_filter
        {
            let ids = named_parents(targets, webhook.parents);
            filters.extend(ids.iter().map(|id| (field.to_string(), id.to_string())));
        }
        Level {
            what: path.rsplit('/').next().unwrap_or(path).to_string(),
            path: path.to_string(),
            filters,
            context: Map::new(),
            cursor_mode,
            id_field: "id_course",
            parent_id: None,
        }
    }

    /// The level below an item of level `depth`, or `None` to skip the item.
    fn child(&self, depth: usize, item: &Value, parent: &Level) -> Option<Level> {
        let Listing::Nested {
            course_types,
            type_field,
            roster,
        } = self.spec.listing
        else {
            return None;
        };
        match depth {
            0 => self.sessions_of(item, course_types, type_field, roster),
            1 if roster => self.roster_of(item, parent),
            _ => None,
        }
    }

    /// The sessions of a course of one of `course_types`, in the area's categories: in
    /// incremental runs, of a course that has not ended (unless read whole for a merge); for
    /// rosters, among those webhooks named.
    fn sessions_of(
        &self,
        course: &Value,
        course_types: &[&str],
        type_field: &str,
        roster: bool,
    ) -> Option<Level> {
        let course_type = course
            .get("course_type")
            .and_then(Value::as_str)?
            .to_ascii_lowercase();
        if !course_types.contains(&course_type.as_str()) {
            return None;
        }
        let course_id = id_of(course, "id_course")?;
        if !in_categories(&self.scope.categories, course) {
            return None;
        }
        let whole = !roster && self.unknown_course(course_id);
        if self.ended(course) && !whole {
            return None;
        }
        if roster
            && let Some(targets) = &self.scope.targets
            && !targets.session_course_ids.is_empty()
            && !targets.session_course_ids.contains(&course_id)
        {
            return None;
        }
        let mut context = Map::new();
        context.insert(type_field.into(), Value::String(course_type));
        Some(Level {
            path: format!("/course/v1/courses/{course_id}/sessions"),
            // The sessions are the leaves unless rosters are read below them.
            filters: if roster || whole {
                Vec::new()
            } else {
                self.scope.leaf_filters.clone()
            },
            context,
            cursor_mode: false,
            id_field: "id",
            what: format!("sessions of course {course_id}"),
            parent_id: Some(course_id),
        })
    }

    /// A session's roster, unless webhooks named other sessions or the session ended.
    fn roster_of(&self, session: &Value, parent: &Level) -> Option<Level> {
        let session_id = id_of(session, "id")?;
        if let Some(targets) = &self.scope.targets
            && !targets.session_ids.contains(&session_id)
        {
            return None;
        }
        if self.ended(session) {
            return None;
        }
        let mut context = parent.context.clone();
        context.insert("_session_id".into(), Value::from(session_id));
        Some(Level {
            path: format!("/course/v1/sessions/{session_id}/enrollments"),
            filters: self.scope.leaf_filters.clone(),
            context,
            cursor_mode: false,
            id_field: "user_id",
            what: format!("roster of session {session_id}"),
            parent_id: Some(session_id),
        })
    }

    /// Whether a course or session ended before the incremental run's roster cutoff.
    fn ended(&self, item: &Value) -> bool {
        self.scope
            .ended_before
            .as_ref()
            .is_some_and(|cutoff| date_before(item, "end_date", cutoff))
    }

    /// The position to store after what was yielded so far: an outer level's proof as it was
    /// before the page it holds, which a resumed walk reads (and notes) again.
    pub(super) fn position(&self) -> Vec<Pos> {
        let mut pos = self.pos.clone();
        for (d, at) in pos.iter_mut().enumerate() {
            if self.pages.get(d).is_some_and(Option::is_some)
                && let Some(before) = self.before.get(d)
            {
                at.proof = before.clone();
            }
        }
        pos
    }

    /// Why the listing is not known to be complete, if the walk found a reason so far.
    pub(super) fn incomplete(&self) -> Option<&String> {
        self.incomplete.as_ref()
    }

    /// Notes the first reason the listing is not known to be complete.
    fn not_complete(&mut self, reason: String) {
        tracing::debug!(%reason, "listing not proven complete");
        self.incomplete.get_or_insert(reason);
    }

    /// Reads the next leaf page, descending and climbing the levels as needed; `None` at the end.
    pub(super) async fn next_leaf(&mut self, ctx: &JobCtx) -> SyncResult<Option<LeafPage>> {
        let leaf = self.pos.len() - 1;
        loop {
            if self.done {
                return Ok(None);
            }
            if self.depth_now == leaf {
                return self.read_leaf(ctx).await.map(Some);
            }
            self.step_outer(ctx).await?;
        }
    }

    /// One step in an outer level: read its page if needed, then descend into the next item,
    /// skip it, turn the page, or climb.
    async fn step_outer(&mut self, ctx: &JobCtx) -> SyncResult<()> {
        let d = self.depth_now;
        if self.pages[d].is_none() {
            let at = self.pos[d].page_ref(self.page_size, self.levels[d].cursor_mode);
            let page = self.read_page(ctx, d, &at).await?;
            self.before[d] = self.pos[d].proof.clone();
            self.walked[d] = self.note_page(d, &page);
            self.pages[d] = Some(page);
        }
        let Some(page) = self.pages[d].as_ref() else {
            return Ok(());
        };
        let index = self.pos[d].index;
        if let Some(item) = page.items.get(index) {
            let walked = self.walked[d].get(index).copied().unwrap_or(false);
            let child = if walked {
                None
            } else {
                self.child(d, item, &self.levels[d])
            };
            match child {
                Some(level) => {
                    self.levels.truncate(d + 1);
                    self.levels.push(level);
                    self.pages.truncate(d + 1);
                    self.pages.push(None);
                    self.depth_now = d + 1;
                }
                None => self.pos[d].index += 1,
            }
            return Ok(());
        }
        if page.has_more && !page.items.is_empty() {
            let cursor = page.cursor.clone();
            self.turn_page(d, cursor);
            self.pages[d] = None;
            return Ok(());
        }
        let malformed = page.has_more;
        self.end_level(d, malformed);
        Ok(())
    }

    /// Reads one page of level `d`; a 404 on a nested listing reads as empty only when its
    /// parent is confirmed gone, and is a transient error otherwise.
    async fn read_page(&self, ctx: &JobCtx, d: usize, at: &PageRef) -> SyncResult<Page> {
        if d == 0
            && let Some(shared) = &self.shared
        {
            return Ok(shared_page(shared, at));
        }
        let level = &self.levels[d];
        if d == 1
            && let (Some(sessions), Some(course)) = (&self.sessions, level.parent_id)
            && let Some(items) = sessions.get(&course)
        {
            return Ok(published_page(items, at));
        }
        match self.docebo.list(ctx, &level.path, &level.filters, at).await {
            Err(SyncError::Permanent(failure)) if d > 0 && is_not_found(&failure) => {
                if self.parent_listed(ctx, d).await? {
                    tracing::warn!(path = %level.path, "docebo answered 404 for the listing of a live parent");
                    return Err(SyncError::Transient(failure));
                }
                ctx.log(vec![
                    NewLogEvent::new(
                        LogLevel::Info,
                        format!(
                            "{} answered 404 and its parent is gone: read as empty",
                            level.what
                        ),
                    )
                    .field("path", level.path.as_str()),
                ])
                .await?;
                Ok(Page {
                    total_count: Some(0),
                    ..Page::default()
                })
            }
            answer => answer,
        }
    }

    /// Moves level `d` to its next page (by `cursor` when Docebo gave one, else by number; the
    /// pages of a shared reading are one consistent view).
    fn turn_page(&mut self, d: usize, cursor: Option<String>) {
        let shared = d == 0 && self.shared.is_some();
        let at = &mut self.pos[d];
        if cursor.is_none() && !shared {
            at.proof.by_number = true;
        }
        at.next(cursor);
    }

    /// Notes a page of level `d` in its proof; for an outer level read by page number, says for
    /// each item whether it is not to be walked into again (an earlier pass or page had it).
    fn note_page(&mut self, d: usize, page: &Page) -> Vec<bool> {
        let outer = d + 1 < self.pos.len();
        let id_field = self.levels[d].id_field;
        let proof = &mut self.pos[d].proof;
        let first = proof.read == 0 && proof.total.is_none() && proof.last_total.is_none();
        match (first, page.total_count) {
            (_, None) => proof.moved = true,
            (true, total) => proof.total = total,
            (false, total) if total != proof.total => proof.moved = true,
            _ => {}
        }
        proof.last_total = page.total_count.or(proof.last_total);
        proof.read += page.items.len() as i64;
        if !outer {
            return Vec::new();
        }
        let mut ids = Vec::new();
        let walked = page
            .items
            .iter()
            .map(|item| {
                let Some(id) = id_of(item, id_field) else {
                    // Nothing is read below an item without an id.
                    return true;
                };
                let again = proof.this_pass.binary_search(&id).is_ok() || ids.contains(&id);
                let earlier = proof.seen.binary_search(&id).is_ok();
                if again || (proof.pass > 0 && !earlier) {
                    // Read twice in one pass (edited behind the reader: a shift), or new to a
                    // verification pass (a creation may hide a deletion in the total).
                    proof.moved = true;
                }
                ids.push(id);
                again || earlier
            })
            .collect();
        proof.this_pass.extend(ids);
        proof.this_pass.sort_unstable();
        proof.this_pass.dedup();
        walked
    }

    /// Ends a pass over level `d` (`malformed`: Docebo said more pages follow but sent none):
    /// proves the level, starts a verification pass over it, or climbs.
    fn end_level(&mut self, d: usize, malformed: bool) {
        let outer = d + 1 < self.pos.len();
        let proof = &self.pos[d].proof;
        let what = &self.levels[d].what;
        let short = proof.last_total.filter(|total| proof.read < *total);
        let reason = if malformed {
            Some(format!(
                "docebo said more {what} follow but sent an empty page"
            ))
        } else if !proof.by_number {
            // One answer, or a walk by Docebo's cursor: consistent; the count must reach the total.
            short.map(|total| {
                format!(
                    "docebo announced {total} {what}, the listing gave {}",
                    proof.read
                )
            })
        } else if outer && self.scope.verify {
            let quiet = proof.pass > 0 && !proof.moved && proof.total == Some(proof.read);
            if !quiet && proof.pass < MAX_VERIFY_PASSES {
                self.verify_again(d);
                return;
            }
            (!quiet).then(|| format!("the {what} kept changing while they were read"))
        } else {
            Some(format!(
                "the {what} were read by page number over several pages (a shift may skip an item)"
            ))
        };
        if let Some(reason) = reason {
            self.not_complete(reason);
        }
        self.climb();
    }

    /// Starts another pass over level `d`: from its first page, walking only into items no pass
    /// had.
    fn verify_again(&mut self, d: usize) {
        let proof = &mut self.pos[d].proof;
        let mut seen = std::mem::take(&mut proof.seen);
        seen.append(&mut proof.this_pass);
        seen.sort_unstable();
        seen.dedup();
        let pass = proof.pass + 1;
        tracing::debug!(what = %self.levels[d].what, pass, "verifying a listing read by page number");
        self.pos[d] = Pos::first();
        self.pos[d].proof = Proof {
            pass,
            seen,
            ..Proof::default()
        };
        self.pages[d] = None;
    }

    /// Whether the item walked into at level `d - 1` (or, when its own listing is gone too, the
    /// one above it) is still listed by Docebo: a 404 below it is then not "gone". Listed unless
    /// a consistent re-reading of its listing proves it is not.
    async fn parent_listed(&self, ctx: &JobCtx, d: usize) -> SyncResult<bool> {
        let mut depth = d - 1;
        loop {
            let level = &self.levels[depth];
            let id = self.pages[depth]
                .as_ref()
                .and_then(|page| page.items.get(self.pos[depth].index))
                .and_then(|item| id_of(item, level.id_field));
            let Some(id) = id else {
                return Ok(true);
            };
            match self.listed(ctx, level, id).await {
                Ok(listed) => return Ok(listed),
                Err(SyncError::Permanent(failure)) if depth > 0 && is_not_found(&failure) => {
                    depth -= 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether `level`'s listing holds the item `id`: true when found, or when the re-reading
    /// was not consistent (read by page number while its total moved): only a consistent reading
    /// that lacks it says it is gone.
    async fn listed(&self, ctx: &JobCtx, level: &Level, id: i64) -> SyncResult<bool> {
        let mut at = Pos::first();
        let mut total = None;
        loop {
            let page = self
                .docebo
                .list(
                    ctx,
                    &level.path,
                    &level.filters,
                    &at.page_ref(self.page_size, level.cursor_mode),
                )
                .await?;
            if page
                .items
                .iter()
                .any(|item| id_of(item, level.id_field) == Some(id))
            {
                return Ok(true);
            }
            at.proof.read += page.items.len() as i64;
            if at.page == 1 {
                total = page.total_count;
            } else if page.total_count != total {
                at.proof.moved = true;
            }
            if !page.has_more || page.items.is_empty() {
                let consistent = !at.proof.moved && total.is_some_and(|t| t <= at.proof.read);
                return Ok(!consistent || page.has_more);
            }
            at.next(page.cursor);
        }
    }

    /// Reads the leaf level's next page and moves past it.
    async fn read_leaf(&mut self, ctx: &JobCtx) -> SyncResult<LeafPage> {
        let d = self.depth_now;
        let at = self.pos[d].page_ref(self.page_size, self.levels[d].cursor_mode);
        let first = at.page == 1 && at.cursor.is_none();
        let page = self.read_page(ctx, d, &at).await?;
        self.note_page(d, &page);
        if self.saves_sessions
            && first
            && let Some(course_id) = self.levels[d].parent_id
        {
            let saved = SessionPage {
                course_id,
                items: page.items.clone(),
                whole: !page.has_more,
                filtered: !self.levels[d].filters.is_empty(),
            };
            let conn = ctx.store.conn().await?;
            save_session_page(&conn, &ctx.job, &saved).await?;
        }
        let context = self.levels[d].context.clone();
        let items: Vec<Value> = page
            .items
            .into_iter()
            .map(|mut item| {
                if let Value::Object(fields) = &mut item {
                    fields.extend(context.clone());
                }
                item
            })
            .collect();
        if page.has_more && !items.is_empty() {
            self.turn_page(d, page.cursor);
        } else {
            self.end_level(d, page.has_more);
        }
        Ok(LeafPage {
            items,
            total: if first { page.total_count } else { None },
        })
    }

    /// Ends the current level: the parent's item is done.
    fn climb(&mut self) {
        let d = self.depth_now;
        if d == 0 {
            self.done = true;
            return;
        }
        self.pos[d] = Pos::first();
        self.depth_now = d - 1;
        self.pos[d - 1].index += 1;
    }
}

/// Whether Docebo answered 404.
fn is_not_found(failure: &Failure) -> bool {
    matches!(failure, Failure::Answered { status: 404, .. })
}

#[cfg(test)]
mod tests {
    use learnsync_store::model::JobKind;

    use super::*;

    #[test]
    fn only_real_dates_before_the_cutoff_count_as_ended() {
        let cutoff = "2024-03-01 00:00:00";
        let item = |date: Value| serde_json::json!({ "end_date": date });
        assert!(date_before(
            &item("2024-02-10 10:00:00".into()),
            "end_date",
            cutoff
        ));
        assert!(!date_before(
            &item("2024-03-10 10:00:00".into()),
            "end_date",
            cutoff
        ));
        assert!(!date_before(
            &item("0000-00-00 00:00:00".into()),
            "end_date",
            cutoff
        ));
        assert!(!date_before(&item(Value::Null), "end_date", cutoff));
        assert!(!date_before(&serde_json::json!({}), "end_date", cutoff));
    }

    #[test]
    fn root_levels_read_what_the_kind_describes() {
        let scope = Scope {
            leaf_filters: vec![("updated_from".into(), "2024-01-01 00:00:00".into())],
            targets: Some(Targets {
                course_ids: [7, 9].into(),
                ..Targets::default()
            }),
            ..Scope::default()
        };
        let enrollments = Walker::root_level(JobKind::CourseEnrollments.spec(), &scope);
        assert_eq!(enrollments.path, "/course/v1/courses/enrollments");
        let filters: Vec<(&str, &str)> = enrollments
            .filters
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            filters,
            [
                ("updated_from", "2024-01-01 00:00:00"),
                ("course_id[]", "7"),
                ("course_id[]", "9"),
            ]
        );
        // A nested listing starts from every course, oldest change first, unfiltered by time.
        let sessions = Walker::root_level(JobKind::Sessions.spec(), &Scope::default());
        assert_eq!(sessions.path, COURSES_PATH);
        assert_eq!(sessions.filters.len(), 2);
        let rosters = Walker::root_level(JobKind::IltSessionEnrollments.spec(), &scope);
        assert_eq!(rosters.path, COURSES_PATH);
        assert!(
            rosters
                .filters
                .iter()
                .all(|(name, _)| name.starts_with("sort_by"))
        );
    }
}
