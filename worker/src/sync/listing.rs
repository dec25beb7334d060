//! The Docebo listing walk: a job kind's listing (flat, or courses → sessions → roster as its
//! [`KindSpec`] says) read page by page, yielding leaf pages and knowing its position at all
//! times, so that a checkpoint can resume it.

use learnsync_store::model::{COURSES_PATH, KindSpec, Listing, WebhookParents};
use learnsync_store::realtime::Targets;
use serde_json::{Map, Value};

use super::checkpoint::Pos;
use crate::context::{JobCtx, SyncResult};
use crate::docebo::{Docebo, Page};
use crate::mapping::{course_category, id_of};

/// How long after it ended a session's roster is still read by incremental runs (attendance and
/// evaluations are recorded after the session).
pub(super) const ROSTER_GRACE_DAYS: i64 = 14;

/// One level of a listing.
#[derive(Clone, Debug)]
struct Level {
    path: String,
    filters: Vec<(String, String)>,
    /// Fields added to each item (`_course_type`, `_session_id`, ...).
    context: Map<String, Value>,
    /// Whether the level is read in cursor mode (the kind's description says where).
    cursor_mode: bool,
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
    done: bool,
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
    /// listing's depth).
    pub(super) fn new(
        spec: &'static KindSpec,
        docebo: &'a Docebo,
        scope: Scope,
        pos: Vec<Pos>,
        page_size: u32,
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
        Walker {
            spec,
            docebo,
            scope,
            pos,
            levels: vec![root],
            pages: vec![None],
            depth_now: 0,
            done,
            page_size,
        }
    }

    /// The outermost level: the flat listing, or every course.
    fn root_level(spec: &KindSpec, scope: &Scope) -> Level {
        let (path, leaf, cursor_mode) = match spec.listing {
            Listing::Flat {
                path, uses_cursor, ..
            } => (path, true, uses_cursor),
            // Nested listings start from every course, whatever its change time: a session may
            // change without its course.
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
            path: path.to_string(),
            filters,
            context: Map::new(),
            cursor_mode,
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

    /// The sessions of a course of one of `course_types`, in the area's categories (rosters: a
    /// course that has not ended, among those webhooks named).
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
        if roster && self.ended(course) {
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
            filters: if roster {
                Vec::new()
            } else {
                self.scope.leaf_filters.clone()
            },
            context,
            cursor_mode: false,
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
        })
    }

    /// Whether a course or session ended before the incremental run's roster cutoff.
    fn ended(&self, item: &Value) -> bool {
        self.scope
            .ended_before
            .as_ref()
            .is_some_and(|cutoff| date_before(item, "end_date", cutoff))
    }

    /// The position to store after what was yielded so far.
    pub(super) fn position(&self) -> Vec<Pos> {
        self.pos.clone()
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
            let page = self
                .docebo
                .list(
                    ctx,
                    &self.levels[d].path,
                    &self.levels[d].filters,
                    &self.pos[d].page_ref(self.page_size, self.levels[d].cursor_mode),
                    d > 0,
                )
                .await?;
            self.pages[d] = Some(page);
        }
        let Some(page) = self.pages[d].as_ref() else {
            return Ok(());
        };
        if let Some(item) = page.items.get(self.pos[d].index) {
            match self.child(d, item, &self.levels[d]) {
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
            self.pos[d] = self.pos[d].next(page.cursor.clone());
            self.pages[d] = None;
            return Ok(());
        }
        self.climb();
        Ok(())
    }

    /// Reads the leaf level's next page and moves past it.
    async fn read_leaf(&mut self, ctx: &JobCtx) -> SyncResult<LeafPage> {
        let d = self.depth_now;
        let level = &self.levels[d];
        let at = self.pos[d].page_ref(self.page_size, level.cursor_mode);
        let first = at.page == 1 && at.cursor.is_none();
        let page = self
            .docebo
            .list(ctx, &level.path, &level.filters, &at, d > 0)
            .await?;
        let context = level.context.clone();
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
            self.pos[d] = self.pos[d].next(page.cursor);
        } else {
            self.climb();
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
