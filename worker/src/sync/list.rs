//! The list phase: one task reads the Docebo listing and maps it into chunks while up to
//! `writes_in_flight` chunks are written to Salesforce; a [`Pipeline`] decides what commits when.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use learnsync_store::model::Listing;
use serde_json::Value;
use tokio::sync::mpsc;

use super::JobRun;
use super::checkpoint::{Checkpoint, Phase};
use super::listing::{LeafPage, Scope, Walker, in_categories};
use super::pipeline::{Chunk, ChunkEnd, Commit, Pending, Pipeline, hold};
use super::published::{self, Saving};
use super::shared::{self, Shared};
use crate::context::{Interrupt, SyncError, SyncResult};
use crate::mapping::id_of;

/// A walk's shared root reading, and the published sessions it walks (roster jobs).
type SharedRoot = (Option<Shared>, Option<Arc<HashMap<i64, Vec<Value>>>>);

/// A chunk's commit.
type CommitFuture<'a> = std::pin::Pin<Box<dyn Future<Output = SyncResult<()>> + Send + 'a>>;

/// What the reader gathers between two hand-overs.
#[derive(Default)]
struct Gathered {
    records: Vec<Pending>,
    end: ChunkEnd,
}

impl JobRun<'_> {
    /// Reads the listing and writes it, pipelined: one task reads Docebo and maps chunks while up
    /// to `writes_in_flight` chunks are being written to Salesforce; chunks commit in listing
    /// order, each with the checkpoint after it, so a takeover resumes after the last chunk whose
    /// predecessors are all confirmed. On an error no new chunk starts; the chunks already sent
    /// finish and their confirmed writes reach the ledger (the checkpoint stays before them).
    pub(super) async fn list(&mut self) -> SyncResult<()> {
        let page_size = *self
            .checkpoint
            .page_size
            .get_or_insert(self.ctx.settings.page_size.max(1));
        let scope = Scope {
            leaf_filters: self.leaf_filters(),
            targets: self.targets.clone(),
            categories: self.ctx.job.course_category_ids.clone(),
            ended_before: self.ended_before(),
            verify: self.targets.is_none(),
        };
        let (shared, sessions) = self.shared_root(&scope, page_size).await?;
        let spec = self.ctx.job.kind.spec();
        let (path, filters) = Walker::root(spec, &scope);
        let saving = self.session_saving().await?;
        // A merge drops the courses no longer listed: the course list's ids, kept for it.
        let root: HashSet<i64> = match (&saving, &shared) {
            (Some(Saving::Merge { .. }), Some(shared)) => shared
                .items
                .iter()
                .filter_map(|course| id_of(course, "id_course"))
                .collect(),
            _ => HashSet::new(),
        };
        let levels = self.checkpoint.levels.clone();
        let mut walker = Walker::new(spec, &self.docebo, scope, levels, page_size, shared);
        if let Some(sessions) = sessions {
            walker = walker.with_sessions(sessions);
        }
        if let Some(saving) = &saving {
            walker = walker.saving_sessions(saving.known());
        }
        // Records earlier runs kept are tried again in the deferred phase, whatever this
        // listing deferred.
        let after_listing = if self.loads_retries() && !self.checkpoint.retries_loaded {
            Phase::Deferred
        } else {
            self.phase_after_deferred()
        };
        let pipeline = Pipeline::new(
            self.checkpoint.clone(),
            self.ctx.settings.writes_in_flight,
            after_listing,
            self.mapping.object.clone(),
        );
        let (sender, chunks) = mpsc::channel::<SyncResult<Chunk>>(1);
        let this = &*self;
        let expected = self.checkpoint.expected;
        let reader = async {
            this.read_chunks(&mut walker, expected, sender).await;
            // The writer decides when the listing is done (its last chunk committed, or an error).
            std::future::pending::<()>().await;
        };
        // The reader never ends on its own: when the writer ends, the reader (perhaps waiting for
        // a page or for room in the channel) is dropped with it.
        let outcome = tokio::select! {
            outcome = this.write_chunks(pipeline, chunks) => outcome,
            () = reader => unreachable!("the reader waits for the writer"),
        };
        self.checkpoint = outcome?;
        let listing = shared::listing_key(&path, &filters);
        self.publish_sessions(saving, &listing, &root).await
    }

    /// Whether this job walks the published sessions reading instead of listing the course list
    /// and the sessions itself: a roster job, outside webhook runs.
    fn walks_published_sessions(&self) -> bool {
        self.ctx.job.kind.spec().listing.reads_rosters() && self.targets.is_none()
    }

    /// The shared reading of the listing's root level: the run's course list when the run shares
    /// it, or (roster jobs outside webhook runs) the courses area's published sessions reading,
    /// whose sessions the walk then takes too. A position stored in another reading (one a crash of
    /// Postgres emptied, read again since, or another courses run's) means nothing in this one:
    /// the walk starts over (the ledger makes what it already wrote unchanged).
    async fn shared_root(&mut self, scope: &Scope, page_size: u32) -> SyncResult<SharedRoot> {
        let spec = self.ctx.job.kind.spec();
        let published = match spec.listing {
            Listing::Nested { course_types, .. } if self.walks_published_sessions() => {
                published::published_sessions(self.ctx, course_types).await?
            }
            _ => None,
        };
        let (reading, sessions) = match published {
            Some((reading, sessions)) => (reading, Some(sessions)),
            None => {
                let (path, filters) = Walker::root(spec, scope);
                if !shared::is_shared(&path, scope.targets.is_some()) {
                    return Ok((None, None));
                }
                let reading =
                    shared::shared_level(self.ctx, &self.docebo, &path, &filters, page_size)
                        .await?;
                (reading, None)
            }
        };
        let checkpoint = &mut self.checkpoint;
        if checkpoint.shared_reading.as_deref() != Some(reading.reading.as_str()) {
            if !checkpoint.levels.is_empty() {
                tracing::info!("the listing's shared reading changed: the walk starts over");
                checkpoint.levels.clear();
            }
            checkpoint.shared_reading = Some(reading.reading.clone());
        }
        Ok((Some(reading), sessions))
    }

    /// Writes the chunks the reader hands over and commits them as `pipeline` says; returns the
    /// checkpoint after the listing's last chunk.
    async fn write_chunks(
        &self,
        mut pipeline: Pipeline,
        // Owned here: when the writer ends, a reader waiting to hand over a chunk is released.
        mut chunks: mpsc::Receiver<SyncResult<Chunk>>,
    ) -> SyncResult<Checkpoint> {
        // Every future of the pipeline is polled on every turn of this loop, commits included: a
        // write suspended while holding a pooled connection would otherwise keep it from the
        // commit waiting for one.
        let mut writing = FuturesOrdered::new();
        // At most one commit at a time (the pipeline sees to it).
        let mut committing: FuturesUnordered<CommitFuture<'_>> = FuturesUnordered::new();
        loop {
            if let Some(commit) = pipeline.next_commit() {
                committing.push(self.commit_of(commit));
                continue;
            }
            if pipeline.should_stop() {
                return Err(pipeline.failure());
            }
            let wants_chunk = pipeline.wants_chunk();
            tokio::select! {
                Some(done) = committing.next(), if !committing.is_empty() => {
                    if let Some(outcome) = pipeline.commit_finished(done) {
                        return outcome;
                    }
                }
                Some((seq, outcome)) = writing.next(), if !writing.is_empty() => {
                    pipeline.write_finished(seq, outcome);
                }
                message = chunks.recv(), if wants_chunk => match message {
                    Some(Ok(Chunk { records, end })) => {
                        let seq = pipeline.chunk_read(end);
                        writing.push_back(async move { (seq, self.write(records, true).await) });
                    }
                    Some(Err(error)) => pipeline.read_failed(error),
                    None => pipeline.read_ended(),
                },
            }
        }
    }

    /// The future that runs a commit the pipeline asked for.
    fn commit_of(&self, commit: Commit) -> CommitFuture<'_> {
        match commit {
            Commit::ConfirmedOnly(written) => Box::pin(self.commit_confirmed_only(written)),
            Commit::Moved {
                checkpoint,
                written,
                room,
            } => Box::pin(async move {
                self.commit(Some(&checkpoint), written).await?;
                // The chunk's room in the records budget goes with the commit.
                drop(room);
                Ok(())
            }),
        }
    }

    /// Reads the listing into chunks of mapped records and hands them to the writer; an error
    /// (or an interruption) is handed over as the last message.
    async fn read_chunks(
        &self,
        walker: &mut Walker<'_>,
        expected: i64,
        sender: mpsc::Sender<SyncResult<Chunk>>,
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
        sender: &mpsc::Sender<SyncResult<Chunk>>,
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
        let mut gathered = Gathered::default();
        // Room for one page, taken before it is read.
        let page_room = (walker.page_size as usize)
            .min(settings.records_in_flight)
            .max(1) as u32;
        loop {
            if !self
                .take_room(walker, &mut gathered, page_room, sender)
                .await?
            {
                return Ok(());
            }
            let next = self.ctx.interruptible(walker.next_leaf(self.ctx)).await?;
            let finished = next.is_none();
            if let Some(page) = next {
                if let Some(total) = page.total {
                    expected += total;
                    if expected >= settings.bulk_threshold {
                        chunk_target = bulk_chunk;
                    }
                }
                self.gather(&mut gathered, page, page_room);
            }
            if finished || gathered.records.len() >= chunk_target {
                gathered.end.finished = finished;
                gathered.end.levels = if finished {
                    Vec::new()
                } else {
                    walker.position()
                };
                gathered.end.incomplete = walker.incomplete().cloned();
                if !hand_over(&mut gathered, sender).await || finished {
                    return Ok(());
                }
            }
        }
    }

    /// Takes room for one page in the worker's records budget. When the worker has none left,
    /// what was gathered is handed over first: a listing waits only with nothing held, so the
    /// budget shared by the worker's jobs cannot deadlock. False once the writer is gone.
    async fn take_room(
        &self,
        walker: &Walker<'_>,
        gathered: &mut Gathered,
        page_room: u32,
        sender: &mpsc::Sender<SyncResult<Chunk>>,
    ) -> SyncResult<bool> {
        let room = match self.ctx.room.clone().try_acquire_many_owned(page_room) {
            Ok(room) => room,
            Err(_) => {
                if !gathered.records.is_empty() {
                    gathered.end.levels = walker.position();
                    gathered.end.incomplete = walker.incomplete().cloned();
                    if !hand_over(gathered, sender).await {
                        return Ok(false);
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
        hold(&mut gathered.end.room, room);
        Ok(true)
    }

    /// Maps a page's items in the run's timeframe (and, for courses, the category filter) into
    /// what is gathered; a short page (a small roster) gives back the room it did not use.
    fn gather(&self, gathered: &mut Gathered, page: LeafPage, page_room: u32) {
        let end = &mut gathered.end;
        end.pages += 1;
        if let Some(total) = page.total {
            end.expected += total;
        }
        let unused = (page_room as usize).saturating_sub(page.items.len());
        if unused > 0
            && let Some(room) = end.room.as_mut()
            && room.num_permits() > unused
        {
            drop(room.split(unused));
        }
        let by_category = matches!(
            self.ctx.job.kind.spec().listing,
            learnsync_store::model::Listing::Flat {
                by_category: true,
                ..
            }
        );
        let mapper = self.mapping.mapper();
        for item in page.items {
            if !self.in_timeframe(&item) {
                continue;
            }
            if by_category && !in_categories(&self.ctx.job.course_category_ids, &item) {
                continue;
            }
            end.read += 1;
            gathered.records.push(mapper.map(&item));
        }
    }
}

/// Hands what was gathered over to the writer; false once the writer is gone.
async fn hand_over(gathered: &mut Gathered, sender: &mpsc::Sender<SyncResult<Chunk>>) -> bool {
    let Gathered { records, end } = std::mem::take(gathered);
    sender.send(Ok(Chunk { records, end })).await.is_ok()
}
