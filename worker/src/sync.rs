//! The work of one job: walk a Docebo listing page by page, map each item, skip what the ledger
//! says is unchanged, write the rest to Salesforce, and commit the confirmed writes with the
//! checkpoint after them. Then retry records whose parent was missing, then (full enrollment
//! runs) mark unenrolled what the listing no longer holds.
//!
//! Memory stays flat: a few chunks of records are held (a page, or the bulk chunk when the job is
//! large enough for Bulk API 2.0): the one being read and those being written. Records kept for
//! a retry wait in `job_deferred`, not in memory.

use std::collections::{HashMap, VecDeque};

use futures::StreamExt as _;
use futures::stream::{FuturesOrdered, FuturesUnordered};

use chrono::{DateTime, Utc};
use learnsync_store::model::{Counts, JobKind, LogLevel, NewLogEvent, UnenrollmentPolicy};
use learnsync_store::realtime::Targets;
use learnsync_store::worker::{self as store_worker, LedgerWrite, Progress};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::context::{Interrupt, JobCtx, SyncError, SyncResult};
use crate::docebo::{Docebo, PageRef};
use crate::mapping::{
    Entity, Fields, MappedRecord, Mapping, ObjectMapping, RecordError, course_category,
    docebo_time, id_of,
};
use crate::salesforce::{COLLECTION_SIZE, RecordResult, Salesforce};

/// Most records whose parent was missing that a job keeps for a retry at its end; beyond it they
/// fail at once, so that the retry phase stays short (ten collection calls).
const MAX_DEFERRED: usize = 2000;
/// Rounds of re-sending rows Salesforce could not lock; rows still locked after them make the job
/// retry later (from its checkpoint, the confirmed rows kept): contention never fails a record.
const LOCK_ROUNDS: u32 = 10;
/// Unseen ledger records handled per unenrollment batch.
const UNENROLL_BATCH: i64 = COLLECTION_SIZE as i64;

/// Where a job is, as stored in `jobs.checkpoint`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The phase.
    pub phase: Phase,
    /// The listing's position, outer levels first (courses, sessions, roster).
    pub levels: Vec<Pos>,
    /// Records kept in `job_deferred` for a retry at the end of the listing (their parent was
    /// missing in Salesforce).
    #[serde(default)]
    pub deferred_count: usize,
    /// Deferred records as checkpoints held them before `job_deferred` existed: a job resumed
    /// from such a checkpoint moves them to the table first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<Deferred>,
    /// Unenrollment: the last ledger key handled.
    #[serde(default)]
    pub after_key: String,
    /// Records the listing announced so far (nested listings add up their rosters).
    #[serde(default)]
    pub expected: i64,
    /// The page size the positions count in: a job taken over by a worker configured otherwise
    /// keeps it.
    #[serde(default)]
    pub page_size: Option<u32>,
}

/// A job's phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading Docebo and writing Salesforce.
    #[default]
    List,
    /// Retrying records whose parent was missing.
    Deferred,
    /// Comparing the ledger with the listing.
    Unenroll,
    /// Nothing left.
    Done,
}

/// A position in one level of a listing: the page to read (by number, or by the cursor that reads
/// it) and how many of its items are done (outer levels only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    /// The page number, from 1.
    pub page: u32,
    /// The cursor that reads this page, in cursor mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Items of this page done (outer levels).
    #[serde(default)]
    pub index: usize,
}

impl Pos {
    fn first() -> Pos {
        Pos {
            page: 1,
            cursor: None,
            index: 0,
        }
    }

    fn page_ref(&self, page_size: u32) -> PageRef {
        PageRef {
            page: self.page.max(1),
            cursor: self.cursor.clone(),
            page_size,
        }
    }

    fn next(&self, cursor: Option<String>) -> Pos {
        Pos {
            page: self.page + 1,
            cursor,
            index: 0,
        }
    }
}

/// A record kept for a retry once its parent exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deferred {
    /// The record key.
    pub key: String,
    /// The fields to send.
    pub fields: Fields,
    /// Hex of the value hash.
    pub hash: String,
    /// The Docebo change time.
    pub updated_at: Option<DateTime<Utc>>,
    /// Salesforce's reason the first time.
    pub reason: String,
}

/// One level of a listing.
#[derive(Clone, Debug)]
struct Level {
    path: String,
    filters: Vec<(String, String)>,
    /// Fields added to each item (`_course_type`, `_session_id`, ...).
    context: Map<String, Value>,
}

/// The entity a job writes.
pub fn entity_of(kind: JobKind) -> Entity {
    match kind {
        JobKind::Users => Entity::Users,
        JobKind::Courses => Entity::Courses,
        JobKind::LearningPlans => Entity::LearningPlans,
        JobKind::Sessions => Entity::Sessions,
        JobKind::CourseEnrollments => Entity::CourseEnrollments,
        JobKind::LearningPlanEnrollments => Entity::LearningPlanEnrollments,
        JobKind::WebinarSessionEnrollments | JobKind::IltSessionEnrollments => {
            Entity::SessionEnrollments
        }
    }
}

/// How many levels a job's listing has (courses → sessions → roster).
fn depth(kind: JobKind) -> usize {
    match kind {
        JobKind::Sessions => 2,
        JobKind::WebinarSessionEnrollments | JobKind::IltSessionEnrollments => 3,
        _ => 1,
    }
}

/// Walks a (possibly nested) listing, yielding leaf pages, and knows its position at all times.
struct Walker<'a> {
    kind: JobKind,
    docebo: &'a Docebo,
    /// `updated_from` (and sort) filters of the leaf level.
    leaf_filters: Vec<(String, String)>,
    pos: Vec<Pos>,
    levels: Vec<Level>,
    pages: Vec<Option<crate::docebo::Page>>,
    depth_now: usize,
    done: bool,
    page_size: u32,
    /// Webhook runs: only the records the events named.
    targets: Option<Targets>,
    /// The courses area's category filter (empty: every course).
    categories: Vec<i64>,
    /// Incremental session-enrollment runs: sessions (and courses) that ended before this Docebo
    /// time are not read. A roster has no change filter, so each session read costs a call
    /// whatever changed, and ended sessions' rosters almost never change; webhooks and the full
    /// comparison still cover them.
    ended_before: Option<String>,
}

/// How long after it ended a session's roster is still read by incremental runs (attendance and
/// evaluations are recorded after the session).
const ROSTER_GRACE_DAYS: i64 = 14;

/// Whether an item's date field holds a real Docebo date before `cutoff` (both in Docebo's
/// sortable `YYYY-MM-DD HH:MM:SS` form); zero and missing dates never are.
fn date_before(item: &Value, field: &str, cutoff: &str) -> bool {
    match item.get(field).and_then(Value::as_str) {
        Some(date) if date.len() >= 10 && !date.starts_with("0000") => date < cutoff,
        _ => false,
    }
}

/// One leaf page.
struct LeafPage {
    items: Vec<Value>,
    /// Docebo's total for this leaf listing (given on its first page only).
    total: Option<i64>,
}

impl<'a> Walker<'a> {
    fn new(
        kind: JobKind,
        docebo: &'a Docebo,
        leaf_filters: Vec<(String, String)>,
        pos: Vec<Pos>,
        page_size: u32,
        targets: Option<Targets>,
        categories: Vec<i64>,
    ) -> Walker<'a> {
        let depth = depth(kind);
        let pos = if pos.len() == depth {
            pos
        } else {
            vec![Pos::first(); depth]
        };
        let root = Walker::root_level(kind, &leaf_filters, targets.as_ref());
        // A webhook run that named no record of this job's kind (only deletions) reads nothing.
        let done = match (&targets, kind) {
            (Some(targets), JobKind::CourseEnrollments) => targets.course_ids.is_empty(),
            (Some(targets), JobKind::LearningPlanEnrollments) => {
                targets.learning_plan_ids.is_empty()
            }
            (
                Some(targets),
                JobKind::WebinarSessionEnrollments | JobKind::IltSessionEnrollments,
            ) => targets.session_ids.is_empty(),
            _ => false,
        };
        Walker {
            kind,
            docebo,
            leaf_filters,
            pos,
            levels: vec![root],
            pages: vec![None],
            depth_now: 0,
            done,
            page_size,
            targets,
            categories,
            ended_before: None,
        }
    }

    fn root_level(
        kind: JobKind,
        leaf_filters: &[(String, String)],
        targets: Option<&Targets>,
    ) -> Level {
        let (path, leaf) = match kind {
            JobKind::Users => ("/manage/v1/user", true),
            JobKind::Courses => ("/learn/v1/courses", true),
            JobKind::LearningPlans => ("/learningplan/v1/learningplans", true),
            JobKind::CourseEnrollments => ("/course/v1/courses/enrollments", true),
            JobKind::LearningPlanEnrollments => {
                ("/learningplan/v1/learningplans/enrollments", true)
            }
            // Nested listings start from every course, whatever its change time: a session may
            // change without its course.
            JobKind::Sessions
            | JobKind::WebinarSessionEnrollments
            | JobKind::IltSessionEnrollments => ("/learn/v1/courses", false),
        };
        // Oldest change first, as Docebo documents for courses (the other lists sort that way by
        // default): records changed while the listing runs move to its end, where it reads them.
        let mut filters = Vec::new();
        if path == "/learn/v1/courses" {
            filters.push(("sort_by".to_string(), "last_update".to_string()));
            filters.push(("sort_by_direction".to_string(), "asc".to_string()));
        }
        if leaf {
            filters.extend(leaf_filters.iter().cloned());
        }
        if let Some(targets) = targets {
            let (field, ids) = match kind {
                JobKind::CourseEnrollments => ("course_id[]", &targets.course_ids),
                JobKind::LearningPlanEnrollments => {
                    ("learning_plan_id[]", &targets.learning_plan_ids)
                }
                _ => ("", &targets.course_ids),
            };
            if !field.is_empty() {
                filters.extend(ids.iter().map(|id| (field.to_string(), id.to_string())));
            }
        }
        Level {
            path: path.to_string(),
            filters,
            context: Map::new(),
        }
    }

    /// The level below an item of level `depth`, or `None` to skip the item.
    fn child(&self, depth: usize, item: &Value, parent: &Level) -> Option<Level> {
        let leaf_filters = self.leaf_filters.clone();
        match (self.kind, depth) {
            (JobKind::Sessions, 0) => {
                let course_type = item
                    .get("course_type")
                    .and_then(Value::as_str)?
                    .to_ascii_lowercase();
                if course_type != "classroom" && course_type != "webinar" {
                    return None;
                }
                let course_id = id_of(item, "id_course")?;
                if !in_categories(&self.categories, item) {
                    return None;
                }
                let mut context = Map::new();
                context.insert("_course_type".into(), Value::String(course_type));
                Some(Level {
                    path: format!("/course/v1/courses/{course_id}/sessions"),
                    filters: leaf_filters,
                    context,
                })
            }
            (JobKind::WebinarSessionEnrollments | JobKind::IltSessionEnrollments, 0) => {
                let wanted = if self.kind == JobKind::WebinarSessionEnrollments {
                    "webinar"
                } else {
                    "classroom"
                };
                let course_type = item
                    .get("course_type")
                    .and_then(Value::as_str)?
                    .to_ascii_lowercase();
                if course_type != wanted {
                    return None;
                }
                let course_id = id_of(item, "id_course")?;
                if !in_categories(&self.categories, item) {
                    return None;
                }
                if let Some(cutoff) = &self.ended_before
                    && date_before(item, "end_date", cutoff)
                {
                    return None;
                }
                if let Some(targets) = &self.targets
                    && !targets.session_course_ids.is_empty()
                    && !targets.session_course_ids.contains(&course_id)
                {
                    return None;
                }
                let mut context = Map::new();
                context.insert("_session_type".into(), Value::String(course_type));
                Some(Level {
                    path: format!("/course/v1/courses/{course_id}/sessions"),
                    filters: Vec::new(),
                    context,
                })
            }
            (JobKind::WebinarSessionEnrollments | JobKind::IltSessionEnrollments, 1) => {
                let session_id = id_of(item, "id")?;
                if let Some(targets) = &self.targets
                    && !targets.session_ids.contains(&session_id)
                {
                    return None;
                }
                if let Some(cutoff) = &self.ended_before
                    && date_before(item, "end_date", cutoff)
                {
                    return None;
                }
                let mut context = parent.context.clone();
                context.insert("_session_id".into(), Value::from(session_id));
                Some(Level {
                    path: format!("/course/v1/sessions/{session_id}/enrollments"),
                    filters: leaf_filters,
                    context,
                })
            }
            _ => None,
        }
    }

    /// The position to store after what was yielded so far.
    fn position(&self) -> Vec<Pos> {
        self.pos.clone()
    }

    /// Reads the next leaf page, descending and climbing the levels as needed; `None` at the end.
    async fn next_leaf(&mut self, ctx: &JobCtx) -> SyncResult<Option<LeafPage>> {
        let leaf = self.pos.len() - 1;
        loop {
            if self.done {
                return Ok(None);
            }
            let d = self.depth_now;
            if d < leaf {
                if self.pages[d].is_none() {
                    let page = self
                        .docebo
                        .list(
                            ctx,
                            &self.levels[d].path,
                            &self.levels[d].filters,
                            &self.pos[d].page_ref(self.page_size),
                            d > 0,
                        )
                        .await?;
                    self.pages[d] = Some(page);
                }
                let Some(page) = self.pages[d].as_ref() else {
                    continue;
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
                    continue;
                }
                if page.has_more && !page.items.is_empty() {
                    self.pos[d] = self.pos[d].next(page.cursor.clone());
                    self.pages[d] = None;
                    continue;
                }
                self.climb();
                continue;
            }
            let level = &self.levels[d];
            let at = self.pos[d].page_ref(self.page_size);
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
            return Ok(Some(LeafPage {
                items,
                total: if first { page.total_count } else { None },
            }));
        }
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

/// Whether a course passes the courses area's category filter (an empty filter passes every
/// course; a course whose category the platform does not say does not pass a filter).
fn in_categories(categories: &[i64], course: &Value) -> bool {
    categories.is_empty()
        || course_category(course).is_some_and(|category| categories.contains(&category))
}

/// A record read, mapped or not.
type Pending = Result<MappedRecord, RecordError>;

/// Records read from Docebo, to be written as one unit.
struct Chunk {
    records: Vec<Pending>,
    end: ChunkEnd,
}

/// A chunk's commit: the checkpoint once the listing's last chunk is committed.
type CommitFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = SyncResult<Option<Checkpoint>>> + Send + 'a>>;

/// Room in the worker's budget of records in flight, held by a chunk until its commit.
type Room = Option<tokio::sync::OwnedSemaphorePermit>;

/// Adds room to what a chunk holds.
fn hold(held: &mut Room, more: tokio::sync::OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(more),
        None => *held = Some(more),
    }
}

/// What a chunk's commit records besides its writes.
#[derive(Default)]
struct ChunkEnd {
    /// The listing's position after the chunk (empty once the listing is done).
    levels: Vec<Pos>,
    /// Whether the listing ends with this chunk.
    finished: bool,
    /// Records read (in the timeframe and the category filter).
    read: i64,
    /// Pages read.
    pages: i64,
    /// Records Docebo announced on the chunk's pages.
    expected: i64,
    /// The chunk's room in the worker's records budget, given back when it is dropped.
    room: Room,
}

/// What one write produced.
#[derive(Default)]
struct Written {
    ledger: Vec<LedgerWrite>,
    /// Keys the ledger holds that are present in the listing but were not written (unchanged,
    /// failed, deferred): marked seen so that the unenrollment comparison keeps them. A key the
    /// ledger does not hold has nothing to mark.
    seen: Vec<String>,
    counts: Counts,
    events: Vec<NewLogEvent>,
    deferred: Vec<Deferred>,
    /// Deferred records retried (whatever the outcome): removed from `job_deferred`.
    retired: Vec<String>,
    /// The chunk was cut short after some writes were confirmed: those go to the ledger (so a
    /// resumed job skips them), the checkpoint stays before the chunk, and the job ends with this.
    interrupted: Option<SyncError>,
}

impl Written {
    fn fail(&mut self, object: &str, key: &str, code: &str, reason: &str) {
        self.counts.failed += 1;
        self.events.push(
            NewLogEvent::new(LogLevel::Error, reason.to_string())
                .record(key)
                .code(code)
                .field("object", object),
        );
    }
}

/// Whether a per-record failure means the parent is not in Salesforce yet.
fn is_missing_parent(code: &str, message: &str) -> bool {
    code == "INVALID_FIELD" && message.contains("Foreign key external ID")
}

/// Runs a job to its end (or its interruption).
pub struct JobRun<'a> {
    ctx: &'a JobCtx,
    docebo: Docebo,
    salesforce: Salesforce,
    mapping: ObjectMapping,
    checkpoint: Checkpoint,
    /// Webhook runs: the records the events named.
    targets: Option<Targets>,
    /// The ledger held nothing of this object when the attempt started (a first sync): records
    /// are not looked up, since only this attempt's own writes could be found (a key listed
    /// twice is then written twice, which Salesforce's upsert makes harmless).
    ledger_empty: bool,
}

impl<'a> JobRun<'a> {
    /// Prepares a job's run from its checkpoint.
    pub fn new(
        ctx: &'a JobCtx,
        docebo: Docebo,
        salesforce: Salesforce,
        mapping: &'a Mapping,
    ) -> SyncResult<JobRun<'a>> {
        let mapping = mapping
            .entity(entity_of(ctx.job.kind))
            .map_err(|error| SyncError::Permanent(error.to_string()))?
            .clone();
        let checkpoint = match &ctx.job.checkpoint {
            None | Some(Value::Null) => Checkpoint::default(),
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|error| SyncError::Permanent(format!("unreadable checkpoint: {error}")))?,
        };
        let targets = match &ctx.job.targets {
            None | Some(Value::Null) => None,
            Some(value) => Some(serde_json::from_value(value.clone()).map_err(|error| {
                SyncError::Permanent(format!("unreadable run targets: {error}"))
            })?),
        };
        Ok(JobRun {
            ctx,
            docebo,
            salesforce,
            mapping,
            checkpoint,
            targets,
            ledger_empty: false,
        })
    }

    /// Runs every phase left, then gives unspent Docebo calls back.
    pub async fn run(mut self) -> SyncResult<()> {
        let outcome = self.phases().await;
        self.docebo.release_budget(self.ctx).await;
        outcome
    }

    async fn phases(&mut self) -> SyncResult<()> {
        // The org is checked against the mapping before anything is written.
        let describe = self
            .salesforce
            .describe(self.ctx, &self.mapping.object)
            .await?;
        self.mapping = self
            .mapping
            .fit_to_org(&describe)
            .map_err(SyncError::Permanent)?;
        self.ledger_empty = {
            let conn = self.ctx.store.conn().await?;
            store_worker::ledger_is_empty(&conn, self.ctx.job.connection_id, &self.mapping.object)
                .await?
        };
        self.move_legacy_deferred().await?;
        if self.checkpoint.phase == Phase::List {
            self.list().await?;
        }
        if self.checkpoint.phase == Phase::Deferred {
            self.ctx
                .status("retrying records whose parent was missing")
                .await?;
            self.retry_deferred().await?;
        }
        if self.checkpoint.phase == Phase::Unenroll {
            self.ctx
                .status("marking enrollments gone from docebo")
                .await?;
            self.unenroll().await?;
        }
        Ok(())
    }

    fn leaf_filters(&self) -> Vec<(String, String)> {
        let job = &self.ctx.job;
        let from = match (job.timeframe_start, job.updated_from) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        from.map(|time| vec![("updated_from".to_string(), docebo_time(time))])
            .unwrap_or_default()
    }

    /// Whether an item falls in the run's timeframe (Docebo filters the start; the end is ours).
    fn in_timeframe(&self, item: &Value) -> bool {
        let job = &self.ctx.job;
        if job.timeframe_start.is_none() && job.timeframe_end.is_none() {
            return true;
        }
        let Some(time) = self.mapping.updated_at_of(item) else {
            return false;
        };
        job.timeframe_start.is_none_or(|start| time >= start)
            && job.timeframe_end.is_none_or(|end| time < end)
    }

    fn next_phase_after_list(&self, checkpoint: &Checkpoint) -> Phase {
        if checkpoint.deferred_count > 0 {
            Phase::Deferred
        } else {
            self.phase_after_deferred()
        }
    }

    fn phase_after_deferred(&self) -> Phase {
        let job = &self.ctx.job;
        let wanted = self.mapping.unenroll.is_some()
            && (job.tracks_unenrollments()
                || (job.may_unenroll() && !self.deleted_keys().is_empty()));
        if wanted { Phase::Unenroll } else { Phase::Done }
    }

    /// Webhook runs: the keys of this job's kind that Docebo said were deleted, sorted.
    fn deleted_keys(&self) -> Vec<String> {
        let Some(targets) = &self.targets else {
            return Vec::new();
        };
        let mut keys: Vec<String> = targets
            .deleted
            .iter()
            .filter(|deleted| deleted.kind == self.ctx.job.kind.as_str())
            .map(|deleted| deleted.key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Incremental runs of session enrollments (scheduled, not webhook-targeted) skip sessions that
    /// ended more than the grace period before the run reads from.
    fn ended_before(&self) -> Option<String> {
        let session_job = matches!(
            self.ctx.job.kind,
            JobKind::WebinarSessionEnrollments | JobKind::IltSessionEnrollments
        );
        let from = self.ctx.job.updated_from?;
        (session_job && self.targets.is_none())
            .then(|| crate::mapping::docebo_time(from - chrono::Duration::days(ROSTER_GRACE_DAYS)))
    }

    /// Reads the listing and writes it, pipelined: one task reads Docebo and maps chunks while up
    /// to `writes_in_flight` chunks are being written to Salesforce; chunks commit in listing
    /// order, each with the checkpoint after it, so a takeover resumes after the last chunk whose
    /// predecessors are all confirmed. On an error no new chunk starts; the chunks already sent
    /// finish and their confirmed writes reach the ledger (the checkpoint stays before them).
    async fn list(&mut self) -> SyncResult<()> {
        let filters = self.leaf_filters();
        let page_size = *self
            .checkpoint
            .page_size
            .get_or_insert(self.ctx.settings.page_size.max(1));
        let mut walker = Walker::new(
            self.ctx.job.kind,
            &self.docebo,
            filters,
            self.checkpoint.levels.clone(),
            page_size,
            self.targets.clone(),
            self.ctx.job.course_category_ids.clone(),
        );
        walker.ended_before = self.ended_before();
        let mut checkpoint = self.checkpoint.clone();
        let in_flight_max = self.ctx.settings.writes_in_flight.max(1);
        let (sender, chunks) = tokio::sync::mpsc::channel::<SyncResult<Chunk>>(1);
        let this = &*self;
        let expected = checkpoint.expected;
        let reader = async {
            this.read_chunks(&mut walker, expected, sender).await;
            // The writer decides when the listing is done (its last chunk committed, or an error).
            std::future::pending::<()>().await;
        };
        let writer = async {
            // Owned here: when the writer ends, a reader waiting to hand over a chunk is released.
            let mut chunks = chunks;
            // Every future of the pipeline is polled on every turn of this loop, commits
            // included: a write suspended while holding a pooled connection would otherwise keep
            // it from the commit waiting for one.
            let mut in_flight = FuturesOrdered::new();
            let mut ready: VecDeque<(ChunkEnd, SyncResult<Written>)> = VecDeque::new();
            // At most one commit at a time (they go in listing order); it yields the checkpoint
            // once the listing's last chunk is committed.
            let mut committing = FuturesUnordered::new();
            let mut reading = true;
            let mut failure: Option<SyncError> = None;
            loop {
                if committing.is_empty()
                    && let Some((chunk, outcome)) = ready.pop_front()
                {
                    let chunk: ChunkEnd = chunk;
                    let mut written: Written = match outcome {
                        Ok(written) => written,
                        Err(error) => {
                            failure.get_or_insert(error);
                            continue;
                        }
                    };
                    if failure.is_none()
                        && let Some(error) = written.interrupted.take()
                    {
                        failure = Some(error);
                    }
                    if failure.is_some() {
                        // A chunk after (or of) a failure: its confirmed writes are kept, the
                        // checkpoint stays before it.
                        committing.push(Box::pin(async move {
                            this.commit_confirmed_only(written).await.map(|()| None)
                        }) as CommitFuture<'_>);
                        continue;
                    }
                    checkpoint.levels = chunk.levels;
                    checkpoint.expected += chunk.expected;
                    this.admit_deferred(&mut checkpoint, &mut written);
                    written.counts.read = chunk.read;
                    if chunk.finished {
                        checkpoint.phase = this.next_phase_after_list(&checkpoint);
                    }
                    if chunk.pages > 0 {
                        written.events.insert(
                            0,
                            NewLogEvent::new(LogLevel::Debug, "docebo pages read")
                                .field("pages", chunk.pages)
                                .field("records", chunk.read),
                        );
                    }
                    let snapshot = checkpoint.clone();
                    let finished = chunk.finished;
                    // The chunk's room in the records budget goes with the commit.
                    let room = chunk.room;
                    committing.push(Box::pin(async move {
                        this.commit(Some(&snapshot), written).await?;
                        drop(room);
                        Ok(finished.then_some(snapshot))
                    }) as CommitFuture<'_>);
                    continue;
                }
                let idle = committing.is_empty() && ready.is_empty() && in_flight.is_empty();
                if idle && (!reading || failure.is_some()) {
                    break;
                }
                let room_for_more = in_flight.len() + ready.len() < in_flight_max;
                tokio::select! {
                    Some(done) = committing.next(), if !committing.is_empty() => {
                        if let Some(done) = done? {
                            return Ok(done);
                        }
                    }
                    Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                        ready.push_back(result);
                    }
                    message = chunks.recv(), if reading && failure.is_none() && room_for_more => {
                        match message {
                            Some(Ok(chunk)) => {
                                let Chunk { records, end } = chunk;
                                in_flight.push_back(async move {
                                    (end, this.write(records, true).await)
                                });
                            }
                            Some(Err(error)) => failure = Some(error),
                            None => reading = false,
                        }
                    }
                }
            }
            Err(failure.unwrap_or_else(|| {
                SyncError::Transient("the docebo listing ended without its last chunk".into())
            }))
        };
        // The reader never ends on its own: when the writer ends, the reader (perhaps waiting for
        // a page or for room in the channel) is dropped with it.
        let outcome = tokio::select! {
            outcome = writer => outcome,
            () = reader => unreachable!("the reader waits for the writer"),
        };
        self.checkpoint = outcome?;
        Ok(())
    }

    /// Reads the listing into chunks of mapped records and hands them to the writer; an error
    /// (or an interruption) is handed over as the last message.
    async fn read_chunks(
        &self,
        walker: &mut Walker<'_>,
        expected: i64,
        sender: tokio::sync::mpsc::Sender<SyncResult<Chunk>>,
    ) {
        if let Err(error) = self.read_into(walker, expected, &sender).await {
            let _ = sender.send(Err(error)).await;
        }
    }

    /// The reading of [`Self::read_chunks`]; ends early, with no error, when the writer is gone.
    async fn read_into(
        &self,
        walker: &mut Walker<'_>,
        mut expected: i64,
        sender: &tokio::sync::mpsc::Sender<SyncResult<Chunk>>,
    ) -> SyncResult<()> {
        // Small jobs write page by page through collections; large ones gather chunks of the bulk
        // chunk size (at least the threshold), so that few Bulk API 2.0 jobs carry them.
        let settings = &self.ctx.settings;
        let bulk_chunk = settings.bulk_chunk.max(settings.bulk_threshold).max(1) as usize;
        let mut chunk_target = if self.ctx.job.counts.expected >= settings.bulk_threshold {
            bulk_chunk
        } else {
            walker.page_size as usize
        };
        let mut records: Vec<Pending> = Vec::new();
        let mut end = ChunkEnd::default();
        // Hands what was gathered over to the writer; false once the writer is gone.
        let hand_over = async |records: &mut Vec<Pending>, end: &mut ChunkEnd| {
            let chunk = Chunk {
                records: std::mem::take(records),
                end: std::mem::take(end),
            };
            sender.send(Ok(chunk)).await.is_ok()
        };
        // Room for one page, taken before it is read. When the worker has none left, what was
        // gathered is handed over first: a listing waits only with nothing held, so the budget
        // shared by the worker's jobs cannot deadlock.
        let page_room = (walker.page_size as usize)
            .min(settings.records_in_flight)
            .max(1) as u32;
        loop {
            let room = match self.ctx.room.clone().try_acquire_many_owned(page_room) {
                Ok(room) => room,
                Err(_) => {
                    if !records.is_empty() {
                        end.levels = walker.position();
                        if !hand_over(&mut records, &mut end).await {
                            return Ok(());
                        }
                    }
                    let wait = async {
                        self.ctx
                            .room
                            .clone()
                            .acquire_many_owned(page_room)
                            .await
                            .map_err(|_| SyncError::Interrupted(Interrupt::Shutdown))
                    };
                    self.ctx.interruptible(wait).await?
                }
            };
            hold(&mut end.room, room);
            let next = self.ctx.interruptible(walker.next_leaf(self.ctx)).await?;
            let finished = next.is_none();
            if let Some(page) = next {
                end.pages += 1;
                if let Some(total) = page.total {
                    end.expected += total;
                    expected += total;
                    if expected >= settings.bulk_threshold {
                        chunk_target = bulk_chunk;
                    }
                }
                // A short page (a small roster) gives back the room it did not use.
                let unused = (page_room as usize).saturating_sub(page.items.len());
                if unused > 0
                    && let Some(room) = end.room.as_mut()
                    && room.num_permits() > unused
                {
                    drop(room.split(unused));
                }
                for item in page.items {
                    if !self.in_timeframe(&item) {
                        continue;
                    }
                    if self.ctx.job.kind == JobKind::Courses
                        && !in_categories(&self.ctx.job.course_category_ids, &item)
                    {
                        continue;
                    }
                    end.read += 1;
                    records.push(self.mapping.map(&item));
                }
            }
            if finished || records.len() >= chunk_target {
                end.finished = finished;
                end.levels = if finished {
                    Vec::new()
                } else {
                    walker.position()
                };
                if !hand_over(&mut records, &mut end).await || finished {
                    return Ok(());
                }
            }
        }
    }

    /// Keeps a chunk's records whose parent was missing for the retry at the end of the listing,
    /// up to [`MAX_DEFERRED`]; beyond it they fail now, with Salesforce's reason.
    fn admit_deferred(&self, checkpoint: &mut Checkpoint, written: &mut Written) {
        let object = self.mapping.object.as_str();
        for deferred in std::mem::take(&mut written.deferred) {
            if checkpoint.deferred_count < MAX_DEFERRED {
                checkpoint.deferred_count += 1;
                written.deferred.push(deferred);
            } else {
                written.counts.failed += 1;
                written.events.push(
                    NewLogEvent::new(LogLevel::Error, deferred.reason)
                        .record(deferred.key.as_str())
                        .code("INVALID_FIELD")
                        .field("object", object),
                );
            }
        }
    }

    /// Writes a chunk of records: skips unchanged ones, sends the rest, classifies the answers.
    async fn write(
        &self,
        records: Vec<Pending>,
        defer_missing_parents: bool,
    ) -> SyncResult<Written> {
        let object = self.mapping.object.as_str();
        let mut written = Written::default();
        let mut mapped: Vec<MappedRecord> = Vec::with_capacity(records.len());
        let mut unfit: Vec<String> = Vec::new();
        for record in records {
            match record {
                Ok(record) => mapped.push(record),
                Err(error) => {
                    written.fail(object, &error.key, &error.code, &error.message);
                    unfit.push(error.key);
                }
            }
        }
        // The same key twice in one request fails both: the later one wins, the earlier one is
        // superseded (counted unchanged).
        let mut last_index: HashMap<String, usize> = HashMap::new();
        for (index, record) in mapped.iter().enumerate() {
            last_index.insert(record.key.clone(), index);
        }
        let mut unique: Vec<MappedRecord> = Vec::with_capacity(last_index.len());
        for (index, record) in mapped.into_iter().enumerate() {
            if last_index.get(&record.key) == Some(&index) {
                unique.push(record);
            } else {
                written.counts.unchanged += 1;
            }
        }
        self.resolve_matches(&mut unique).await?;
        let mut keys: Vec<String> = unique.iter().map(|record| record.key.clone()).collect();
        keys.extend(unfit.iter().cloned());
        let ledger = if self.ledger_empty {
            HashMap::new()
        } else {
            let conn = self.ctx.store.conn().await?;
            store_worker::ledger_lookup(&conn, self.ctx.job.connection_id, object, &keys).await?
        };
        drop(keys);
        // Records that do not fit stay enrolled if they were written before.
        written
            .seen
            .extend(unfit.into_iter().filter(|key| ledger.contains_key(key)));
        let mut to_write = Vec::new();
        for record in unique {
            let unchanged = !self.ctx.job.rewrite_unchanged
                && ledger
                    .get(&record.key)
                    .is_some_and(|entry| !entry.unenrolled && entry.value_hash == record.hash);
            if unchanged {
                written.counts.unchanged += 1;
                written.seen.push(record.key);
            } else {
                to_write.push(record);
            }
        }
        if to_write.is_empty() {
            return Ok(written);
        }
        // A stop lands here, between two confirmed writes.
        self.ctx.check()?;
        // Chunks are gathered up to the bulk threshold; one whose changed records still number at
        // least half of it goes through Bulk API 2.0 (a handful of calls instead of one per 200).
        let use_bulk = to_write.len() > COLLECTION_SIZE
            && to_write.len() as i64 * 2 >= self.ctx.settings.bulk_threshold;
        let mut outstanding = to_write;
        let mut round = 0;
        while !outstanding.is_empty() {
            round += 1;
            let (results, error) = self.send(&outstanding, use_bulk && round == 1).await;
            if let Some(error) = error {
                if written.ledger.is_empty() && results.iter().all(|result| !result.success) {
                    return Err(error);
                }
                for (record, result) in outstanding.into_iter().zip(results) {
                    if result.success {
                        written.ledger.push(LedgerWrite {
                            record_key: record.key,
                            salesforce_id: result.id,
                            value_hash: record.hash,
                            docebo_updated_at: record.updated_at,
                        });
                    }
                }
                written.interrupted = Some(error);
                return Ok(written);
            }
            let mut locked = Vec::new();
            for (record, result) in outstanding.into_iter().zip(results) {
                if result.success {
                    written.counts.written += 1;
                    written.ledger.push(LedgerWrite {
                        record_key: record.key,
                        salesforce_id: result.id,
                        value_hash: record.hash,
                        docebo_updated_at: record.updated_at,
                    });
                    continue;
                }
                let failure = result.failure();
                if failure.code == "UNABLE_TO_LOCK_ROW" {
                    locked.push(record);
                } else if is_missing_parent(&failure.code, &failure.message)
                    && defer_missing_parents
                {
                    if ledger.contains_key(&record.key) {
                        written.seen.push(record.key.clone());
                    }
                    written.deferred.push(Deferred {
                        key: record.key,
                        fields: record.fields,
                        hash: hex::encode(&record.hash),
                        updated_at: record.updated_at,
                        reason: failure.message,
                    });
                } else {
                    written.fail(object, &record.key, &failure.code, &failure.message);
                    if ledger.contains_key(&record.key) {
                        written.seen.push(record.key);
                    }
                }
            }
            if !locked.is_empty() && round >= LOCK_ROUNDS {
                written.interrupted = Some(SyncError::Transient(format!(
                    "salesforce could not lock {} rows after {round} attempts",
                    locked.len()
                )));
                return Ok(written);
            }
            if !locked.is_empty() {
                written.events.push(
                    NewLogEvent::new(
                        LogLevel::Warn,
                        "salesforce could not lock rows: re-sending them",
                    )
                    .code("UNABLE_TO_LOCK_ROW")
                    .field("records", locked.len() as i64)
                    .field("round", round as i64),
                );
                // Children of one parent together, so a retry contends with itself less.
                locked.sort_by_key(parent_key);
                self.ctx
                    .sleep(self.ctx.settings.call_retry_base * 2u32.pow(round.min(5) - 1))
                    .await
                    .or_else(|error| match error {
                        SyncError::Interrupted(Interrupt::Stop) => Ok(()),
                        other => Err(other),
                    })?;
            }
            outstanding = locked;
        }
        written.events.push(
            NewLogEvent::new(LogLevel::Debug, "salesforce batch written")
                .field("object", object)
                .field("written", written.counts.written)
                .field("unchanged", written.counts.unchanged)
                .field("failed", written.counts.failed)
                .field("bulk", use_bulk),
        );
        Ok(written)
    }

    /// Resolves lookups by value (a user's `Contact` by email) with one query per object and
    /// field for the whole chunk, then hashes the records again with the ids found.
    async fn resolve_matches(&self, records: &mut [MappedRecord]) -> SyncResult<()> {
        let mut wanted: HashMap<(String, String), Vec<String>> = HashMap::new();
        for record in records.iter() {
            for pending in &record.matches {
                wanted
                    .entry((pending.object.clone(), pending.match_field.clone()))
                    .or_default()
                    .push(pending.value.clone());
            }
        }
        let mut found: HashMap<(String, String), HashMap<String, Option<String>>> = HashMap::new();
        for ((object, field), mut values) in wanted {
            values.sort();
            values.dedup();
            let mut ids = HashMap::new();
            for chunk in values.chunks(COLLECTION_SIZE) {
                ids.extend(
                    self.salesforce
                        .match_ids(self.ctx, &object, &field, chunk)
                        .await?,
                );
            }
            found.insert((object, field), ids);
        }
        for record in records.iter_mut() {
            if record.matches.is_empty() {
                continue;
            }
            self.mapping.resolve(record, |pending| {
                found
                    .get(&(pending.object.clone(), pending.match_field.clone()))
                    .and_then(|ids| ids.get(&pending.value).cloned().flatten())
            });
        }
        Ok(())
    }

    /// Sends records; returns the results of a prefix of them, and the error that cut the rest
    /// short, if any (so that what Salesforce confirmed is never forgotten).
    async fn send(
        &self,
        records: &[MappedRecord],
        bulk: bool,
    ) -> (Vec<RecordResult>, Option<SyncError>) {
        let object = &self.mapping.object;
        let external_id = &self.mapping.external_id;
        let fields: Vec<&Fields> = records.iter().map(|record| &record.fields).collect();
        if bulk {
            return match self
                .salesforce
                .upsert_bulk(self.ctx, object, external_id, &fields)
                .await
            {
                Ok(results) => (results, None),
                Err(error) => (Vec::new(), Some(error)),
            };
        }
        let mut results = Vec::with_capacity(records.len());
        for chunk in fields.chunks(COLLECTION_SIZE) {
            if !results.is_empty()
                && let Err(error) = self.ctx.check()
            {
                return (results, Some(error));
            }
            match self
                .salesforce
                .upsert_collection(self.ctx, object, external_id, chunk)
                .await
            {
                Ok(chunk_results) => results.extend(chunk_results),
                Err(error) => return (results, Some(error)),
            }
        }
        (results, None)
    }

    /// Records in the ledger the writes of a chunk cut short (or written after a failure or a
    /// stop), and counts them written, without moving the checkpoint: the job's counts say what
    /// Salesforce holds. A resumed job reads the chunk again; its confirmed records then count as
    /// unchanged as well.
    async fn commit_confirmed_only(&self, written: Written) -> SyncResult<()> {
        if written.ledger.is_empty() {
            return Ok(());
        }
        let counts = Counts {
            written: written.ledger.len() as i64,
            ..Counts::default()
        };
        let confirmed = Written {
            ledger: written.ledger,
            counts,
            ..Written::default()
        };
        self.commit(None, confirmed).await
    }

    /// Commits what Salesforce confirmed, with the checkpoint after it when there is one (none:
    /// the position stays where it was), in one transaction fenced by the attempt.
    async fn commit(&self, checkpoint: Option<&Checkpoint>, written: Written) -> SyncResult<()> {
        let job = &self.ctx.job;
        let object = self.mapping.object.as_str();
        let expected = checkpoint
            .map(|checkpoint| checkpoint.expected)
            .filter(|expected| *expected > 0);
        let checkpoint = checkpoint
            .map(serde_json::to_value)
            .transpose()
            .map_err(|error| SyncError::Permanent(error.to_string()))?;
        let deferred = written
            .deferred
            .iter()
            .map(|deferred| {
                serde_json::to_value(deferred)
                    .map(|record| (deferred.key.clone(), record))
                    .map_err(|error| SyncError::Permanent(error.to_string()))
            })
            .collect::<SyncResult<Vec<_>>>()?;
        let moved = checkpoint.is_some();
        let progress = Progress {
            delta: written.counts,
            expected,
            checkpoint,
            status_message: None,
        };
        let area = self.mapping.area;
        let maybe_new = self.ledger_empty;
        self.ctx
            .fenced(async |fenced| {
                store_worker::ledger_record(fenced, area, object, &written.ledger, maybe_new)
                    .await?;
                store_worker::ledger_mark_seen(fenced, object, &written.seen).await?;
                store_worker::deferred_add(fenced, &deferred).await?;
                store_worker::deferred_remove(fenced, &written.retired).await?;
                store_worker::progress(fenced, &progress).await?;
                store_worker::log(fenced, written.events).await?;
                Ok(())
            })
            .await?;
        if moved {
            self.ctx.mark_progress();
        }
        let records = &crate::metrics::METRICS.records;
        for (outcome, count) in [
            ("written", written.counts.written),
            ("unchanged", written.counts.unchanged),
            ("failed", written.counts.failed),
        ] {
            if count > 0 {
                records
                    .with_label_values(&[job.kind.as_str(), outcome])
                    .inc_by(count as u64);
            }
        }
        Ok(())
    }

    /// Retries the records whose parent was missing: parents written since (by this job, or by
    /// another) make them succeed; those still orphaned fail with Salesforce's reason.
    async fn retry_deferred(&mut self) -> SyncResult<()> {
        loop {
            let batch = {
                let conn = self.ctx.store.conn().await?;
                store_worker::deferred_next(&conn, self.ctx.job.id, COLLECTION_SIZE as i64).await?
            };
            if batch.is_empty() {
                self.checkpoint.deferred_count = 0;
                self.checkpoint.phase = self.phase_after_deferred();
                return self
                    .commit(Some(&self.checkpoint), Written::default())
                    .await;
            }
            let mut retired = Vec::with_capacity(batch.len());
            let mut records: Vec<Pending> = Vec::with_capacity(batch.len());
            for record in batch {
                let deferred: Deferred = serde_json::from_value(record).map_err(|error| {
                    SyncError::Permanent(format!("unreadable deferred record: {error}"))
                })?;
                retired.push(deferred.key.clone());
                records.push(Ok(MappedRecord {
                    key: deferred.key,
                    fields: deferred.fields,
                    hash: hex::decode(&deferred.hash).unwrap_or_default(),
                    updated_at: deferred.updated_at,
                    matches: Vec::new(),
                }));
            }
            let mut written = self.write(records, false).await?;
            if let Some(error) = written.interrupted.take() {
                self.commit_confirmed_only(written).await?;
                return Err(error);
            }
            self.checkpoint.deferred_count =
                self.checkpoint.deferred_count.saturating_sub(retired.len());
            written.retired = retired;
            self.commit(Some(&self.checkpoint), written).await?;
        }
    }

    /// Moves the deferred records of a checkpoint written before `job_deferred` existed into it.
    async fn move_legacy_deferred(&mut self) -> SyncResult<()> {
        if self.checkpoint.deferred.is_empty() {
            return Ok(());
        }
        let written = Written {
            deferred: std::mem::take(&mut self.checkpoint.deferred),
            ..Written::default()
        };
        self.checkpoint.deferred_count += written.deferred.len();
        self.commit(Some(&self.checkpoint), written).await
    }

    /// Marks unenrolled (or deletes) the records the ledger holds that this full listing did not
    /// contain.
    async fn unenroll(&mut self) -> SyncResult<()> {
        let job = self.ctx.job.clone();
        let object = self.mapping.object.clone();
        // A webhook run unenrolls the deletions its events announced; a full run, whatever its
        // listing did not contain.
        let announced = self.targets.is_some().then(|| self.deleted_keys());
        loop {
            let (unseen, last_key) = {
                let conn = self.ctx.store.conn().await?;
                match &announced {
                    Some(keys) => {
                        let batch: Vec<String> = keys
                            .iter()
                            .filter(|key| key.as_str() > self.checkpoint.after_key.as_str())
                            .take(UNENROLL_BATCH as usize)
                            .cloned()
                            .collect();
                        let last = batch.last().cloned();
                        let unseen = store_worker::ledger_unseen_among(
                            &conn,
                            job.connection_id,
                            &object,
                            job.run_id,
                            &batch,
                        )
                        .await?;
                        (unseen, last)
                    }
                    None => {
                        let unseen = store_worker::ledger_unseen(
                            &conn,
                            job.connection_id,
                            &object,
                            job.kind.as_str(),
                            job.run_id,
                            &self.checkpoint.after_key,
                            UNENROLL_BATCH,
                        )
                        .await?;
                        let last = unseen.last().map(|(key, _)| key.clone());
                        (unseen, last)
                    }
                }
            };
            let Some(last_key) = last_key else {
                self.checkpoint.phase = Phase::Done;
                return self
                    .commit(Some(&self.checkpoint), Written::default())
                    .await;
            };
            self.ctx.check()?;
            let now = Utc::now();
            let mut done_keys = Vec::new();
            let mut events = Vec::new();
            match job.unenrollment_policy {
                _ if unseen.is_empty() => {}
                UnenrollmentPolicy::MarkUnenrolled => {
                    let records: Vec<Fields> = unseen
                        .iter()
                        .filter_map(|(key, _)| self.mapping.unenrolled_record(key, now))
                        .collect();
                    let records: Vec<&Fields> = records.iter().collect();
                    let results = self
                        .salesforce
                        .upsert_collection(self.ctx, &object, &self.mapping.external_id, &records)
                        .await?;
                    for ((key, _), result) in unseen.iter().zip(results) {
                        if result.success {
                            done_keys.push(key.clone());
                        } else {
                            let failure = result.failure();
                            events.push(
                                NewLogEvent::new(LogLevel::Error, failure.message)
                                    .record(key.as_str())
                                    .code(failure.code)
                                    .field("object", object.as_str())
                                    .field("action", "unenroll"),
                            );
                        }
                    }
                }
                UnenrollmentPolicy::Delete => {
                    let mut with_ids: Vec<(String, String)> = unseen
                        .iter()
                        .filter_map(|(key, id)| id.clone().map(|id| (key.clone(), id)))
                        .collect();
                    let without: Vec<String> = unseen
                        .iter()
                        .filter(|(_, id)| id.is_none())
                        .map(|(key, _)| key.clone())
                        .collect();
                    if !without.is_empty() {
                        // The upsert's answer carried no id: ask Salesforce by external id. A
                        // record it does not hold is already gone.
                        let found = self
                            .salesforce
                            .find_ids(self.ctx, &object, &self.mapping.external_id, &without)
                            .await?;
                        for key in without {
                            match found.get(&key) {
                                Some(id) => with_ids.push((key, id.clone())),
                                None => done_keys.push(key),
                            }
                        }
                    }
                    if !with_ids.is_empty() {
                        let ids: Vec<String> = with_ids.iter().map(|(_, id)| id.clone()).collect();
                        let results = self.salesforce.delete_collection(self.ctx, &ids).await?;
                        for ((key, _), result) in with_ids.iter().zip(results) {
                            if result.success {
                                done_keys.push(key.clone());
                            } else {
                                let failure = result.failure();
                                events.push(
                                    NewLogEvent::new(LogLevel::Error, failure.message)
                                        .record(key.as_str())
                                        .code(failure.code)
                                        .field("object", object.as_str())
                                        .field("action", "delete"),
                                );
                            }
                        }
                    }
                }
            }
            if !done_keys.is_empty() {
                events.push(
                    NewLogEvent::new(
                        LogLevel::Info,
                        "enrollments gone from docebo marked in salesforce",
                    )
                    .field("object", object.as_str())
                    .field("records", done_keys.len() as i64)
                    .field("policy", job.unenrollment_policy.as_str()),
                );
            }
            self.checkpoint.after_key = last_key;
            let checkpoint = serde_json::to_value(&self.checkpoint)
                .map_err(|error| SyncError::Permanent(error.to_string()))?;
            let progress = Progress {
                checkpoint: Some(checkpoint),
                ..Progress::default()
            };
            let area = self.mapping.area;
            self.ctx
                .fenced(async |fenced| {
                    match job.unenrollment_policy {
                        UnenrollmentPolicy::MarkUnenrolled => {
                            store_worker::ledger_mark_unenrolled(fenced, &object, &done_keys, now)
                                .await?;
                        }
                        UnenrollmentPolicy::Delete => {
                            store_worker::ledger_delete(fenced, area, &object, &done_keys).await?;
                        }
                    }
                    store_worker::progress(fenced, &progress).await?;
                    store_worker::log(fenced, events).await?;
                    Ok(())
                })
                .await?;
            self.ctx.mark_progress();
        }
    }
}

/// The first lookup's value: children of one parent sort together.
fn parent_key(record: &MappedRecord) -> String {
    record
        .fields
        .first_lookup_key()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    fn checkpoints_round_trip_through_json() {
        let checkpoint = Checkpoint {
            phase: Phase::Deferred,
            levels: vec![Pos {
                page: 3,
                cursor: Some("abc".into()),
                index: 2,
            }],
            deferred: Vec::new(),
            deferred_count: 3,
            after_key: String::new(),
            expected: 12,
            page_size: Some(10),
        };
        let value = serde_json::to_value(&checkpoint).unwrap();
        assert_eq!(value["phase"], "deferred");
        let back: Checkpoint = serde_json::from_value(value).unwrap();
        assert_eq!(back, checkpoint);
    }

    #[test]
    fn recognises_a_missing_parent() {
        assert!(is_missing_parent(
            "INVALID_FIELD",
            "Foreign key external ID: 12301 not found for field Docebo_User_Id__c in entity Docebo_User__c"
        ));
        assert!(!is_missing_parent(
            "INVALID_FIELD",
            "No such column 'X' on sobject of type Y"
        ));
    }
}
