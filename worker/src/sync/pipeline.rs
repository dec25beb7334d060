//! The bookkeeping of the list phase's pipeline, apart from any IO: chunks read from Docebo are
//! written concurrently (at most `writes_in_flight` at a time) but commit one after another, in
//! listing order, each with the checkpoint after it.
//!
//! After a failure (a write's error, a chunk cut short, the reader's error) no new chunk starts;
//! the chunks already sent finish, and their confirmed writes are committed "confirmed only": in
//! the ledger and the written count, with the checkpoint left before them. The checkpoint only
//! moves in listing order, past chunks whose predecessors are all committed; the listing's last
//! chunk yields the final checkpoint. `list` drives this with the futures; the tests below drive
//! it by hand.

use std::collections::VecDeque;

use learnsync_store::model::{LogLevel, NewLogEvent};

use super::checkpoint::{Checkpoint, Phase, Pos};
use super::deferred::admit_deferred;
use super::write::Written;
use crate::context::{Failure, SyncError, SyncResult};
use crate::mapping::{MappedRecord, RecordError};

/// A record read, mapped or not.
pub(super) type Pending = Result<MappedRecord, RecordError>;

/// Room in the worker's budget of records in flight, held by a chunk until its commit.
pub(super) type Room = Option<tokio::sync::OwnedSemaphorePermit>;

/// Adds room to what a chunk holds.
pub(super) fn hold(held: &mut Room, more: tokio::sync::OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(more),
        None => *held = Some(more),
    }
}

/// Records read from Docebo, to be written as one unit.
pub(super) struct Chunk {
    /// The records, in listing order.
    pub(super) records: Vec<Pending>,
    /// What its commit records besides its writes.
    pub(super) end: ChunkEnd,
}

/// What a chunk's commit records besides its writes.
#[derive(Default)]
pub(super) struct ChunkEnd {
    /// The listing's position after the chunk (empty once the listing is done).
    pub(super) levels: Vec<Pos>,
    /// Whether the listing ends with this chunk.
    pub(super) finished: bool,
    /// Records read (in the timeframe and the category filter).
    pub(super) read: i64,
    /// Pages read.
    pub(super) pages: i64,
    /// Records Docebo announced on the chunk's pages.
    pub(super) expected: i64,
    /// Why the listing is not known to be complete, if the walk found a reason so far.
    pub(super) incomplete: Option<String>,
    /// The chunk's room in the worker's records budget, given back when it is dropped.
    pub(super) room: Room,
}

/// A chunk's place in the listing (the order chunks were read in).
pub(super) type Seq = u64;

/// A commit the pipeline asks for.
pub(super) enum Commit {
    /// A chunk after (or of) a failure: its confirmed writes are kept, the checkpoint stays
    /// before it.
    ConfirmedOnly(Written),
    /// A chunk's writes with the checkpoint after it.
    Moved {
        /// The checkpoint to store with the writes.
        checkpoint: Checkpoint,
        /// The writes.
        written: Written,
        /// The chunk's room in the records budget: it goes with the commit.
        room: Room,
    },
}

/// A chunk sent to be written.
struct Slot {
    seq: Seq,
    end: ChunkEnd,
    /// The write's outcome, once known.
    outcome: Option<SyncResult<Written>>,
}

/// The state of a list phase's pipeline.
pub(super) struct Pipeline {
    /// The checkpoint after the last chunk committed (or being committed).
    checkpoint: Checkpoint,
    /// Most chunks written or waiting for their commit at a time.
    max_in_flight: usize,
    /// The phase after the listing when nothing was deferred.
    after_deferred: Phase,
    /// The Salesforce object written (for the log of records deferred beyond the limit).
    object: String,
    next_seq: Seq,
    /// Chunks sent and not yet committed, in listing order.
    chunks: VecDeque<Slot>,
    /// Whether a commit is running; `Some(true)` when it commits the listing's last chunk.
    committing: Option<bool>,
    /// Whether the reader may still hand over chunks.
    reading: bool,
    /// The first error: no chunk starts after it, and the listing ends with it.
    failure: Option<SyncError>,
}

impl Pipeline {
    /// A pipeline that goes on from `checkpoint`.
    pub(super) fn new(
        checkpoint: Checkpoint,
        max_in_flight: usize,
        after_deferred: Phase,
        object: String,
    ) -> Pipeline {
        Pipeline {
            checkpoint,
            max_in_flight: max_in_flight.max(1),
            after_deferred,
            object,
            next_seq: 0,
            chunks: VecDeque::new(),
            committing: None,
            reading: true,
            failure: None,
        }
    }

    /// Whether the reader's next chunk is wanted now: no failure, the listing not over, and
    /// room among the chunks in flight.
    pub(super) fn wants_chunk(&self) -> bool {
        self.reading && self.failure.is_none() && self.chunks.len() < self.max_in_flight
    }

    /// Takes a chunk the reader handed over; returns its place, which its write reports with.
    pub(super) fn chunk_read(&mut self, end: ChunkEnd) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.chunks.push_back(Slot {
            seq,
            end,
            outcome: None,
        });
        seq
    }

    /// The reader failed (or was interrupted): its error ends the listing.
    pub(super) fn read_failed(&mut self, error: SyncError) {
        self.failure = Some(error);
    }

    /// The reader handed over everything it will.
    pub(super) fn read_ended(&mut self) {
        self.reading = false;
    }

    /// A chunk's write ended.
    pub(super) fn write_finished(&mut self, seq: Seq, outcome: SyncResult<Written>) {
        if let Some(slot) = self.chunks.iter_mut().find(|slot| slot.seq == seq) {
            slot.outcome = Some(outcome);
        }
    }

    /// The next commit, when none is running and the oldest chunk's write has ended. Chunks whose
    /// write failed are dropped here (their room with them), the failure kept.
    pub(super) fn next_commit(&mut self) -> Option<Commit> {
        while self.committing.is_none() {
            // The oldest chunk commits first: a later one waits for it.
            let oldest_written = self.chunks.front()?.outcome.is_some();
            if !oldest_written {
                return None;
            }
            let slot = self.chunks.pop_front()?;
            let mut written = match slot.outcome? {
                Ok(written) => written,
                Err(error) => {
                    self.failure.get_or_insert(error);
                    continue;
                }
            };
            if self.failure.is_none()
                && let Some(error) = written.interrupted.take()
            {
                self.failure = Some(error);
            }
            if self.failure.is_some() {
                self.committing = Some(false);
                return Some(Commit::ConfirmedOnly(written));
            }
            return Some(self.moved(slot.end, written));
        }
        None
    }

    /// Moves the checkpoint past a chunk whose predecessors are all committed.
    fn moved(&mut self, end: ChunkEnd, mut written: Written) -> Commit {
        let checkpoint = &mut self.checkpoint;
        checkpoint.levels = end.levels;
        checkpoint.expected += end.expected;
        if checkpoint.incomplete.is_none() {
            checkpoint.incomplete = end.incomplete;
        }
        admit_deferred(&self.object, checkpoint, &mut written);
        written.counts.read = end.read;
        if end.finished {
            checkpoint.listing_complete = checkpoint.incomplete.is_none();
            checkpoint.phase = if checkpoint.deferred_count > 0 {
                Phase::Deferred
            } else {
                self.after_deferred
            };
        }
        if end.pages > 0 {
            written.events.insert(
                0,
                NewLogEvent::new(LogLevel::Debug, "docebo pages read")
                    .field("pages", end.pages)
                    .field("records", end.read),
            );
        }
        self.committing = Some(end.finished);
        Commit::Moved {
            checkpoint: checkpoint.clone(),
            written,
            room: end.room,
        }
    }

    /// The running commit ended; returns the listing's outcome once it is known (the final
    /// checkpoint after the last chunk's commit, or the commit's error).
    pub(super) fn commit_finished(
        &mut self,
        outcome: SyncResult<()>,
    ) -> Option<SyncResult<Checkpoint>> {
        let last = self.committing.take().unwrap_or(false);
        match outcome {
            Err(error) => Some(Err(error)),
            Ok(()) if last => Some(Ok(self.checkpoint.clone())),
            Ok(()) => None,
        }
    }

    /// Whether nothing is left to wait for: nothing in flight or committing, and the reader done
    /// or a failure recorded. The listing then ends with [`Pipeline::failure`].
    pub(super) fn should_stop(&self) -> bool {
        let idle = self.committing.is_none() && self.chunks.is_empty();
        idle && (!self.reading || self.failure.is_some())
    }

    /// The error a stopped pipeline ends with.
    pub(super) fn failure(self) -> SyncError {
        self.failure
            .unwrap_or(SyncError::Transient(Failure::ListingCutShort))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::context::Interrupt;
    use learnsync_store::worker::LedgerWrite;

    fn end(page: u32, finished: bool) -> ChunkEnd {
        ChunkEnd {
            levels: if finished {
                Vec::new()
            } else {
                vec![Pos {
                    page,
                    ..Pos::default()
                }]
            },
            finished,
            read: 10,
            pages: 1,
            expected: if page == 2 { 30 } else { 0 },
            incomplete: None,
            room: None,
        }
    }

    fn written(keys: &[&str]) -> Written {
        let mut written = Written::default();
        for key in keys {
            written.counts.written += 1;
            written.ledger.push(LedgerWrite {
                record_key: key.to_string(),
                salesforce_id: None,
                value_hash: Vec::new(),
                docebo_updated_at: None,
                mapping_version: None,
            });
        }
        written
    }

    fn new_pipeline(max: usize) -> Pipeline {
        Pipeline::new(Checkpoint::default(), max, Phase::Done, "Object__c".into())
    }

    /// The page a `Moved` commit's checkpoint resumes at.
    fn moved_page(commit: Option<Commit>) -> u32 {
        match commit {
            Some(Commit::Moved { checkpoint, .. }) => {
                checkpoint.levels.first().map_or(0, |pos| pos.page)
            }
            _ => panic!("expected a commit that moves the checkpoint"),
        }
    }

    #[test]
    fn chunks_commit_in_listing_order_one_at_a_time() {
        let mut pipeline = new_pipeline(3);
        let a = pipeline.chunk_read(end(2, false));
        let b = pipeline.chunk_read(end(3, false));
        let c = pipeline.chunk_read(end(4, false));
        assert!(!pipeline.wants_chunk(), "three chunks fill the pipeline");
        // The later writes end first: nothing commits before the first one.
        pipeline.write_finished(c, Ok(written(&["c"])));
        pipeline.write_finished(b, Ok(written(&["b"])));
        assert!(pipeline.next_commit().is_none());
        pipeline.write_finished(a, Ok(written(&["a"])));
        assert_eq!(moved_page(pipeline.next_commit()), 2);
        // One commit at a time.
        assert!(pipeline.next_commit().is_none());
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert!(pipeline.wants_chunk(), "a committed chunk frees its place");
        assert_eq!(moved_page(pipeline.next_commit()), 3);
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert_eq!(moved_page(pipeline.next_commit()), 4);
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert!(!pipeline.should_stop(), "the reader may hand over more");
    }

    #[test]
    fn the_last_chunk_yields_the_final_checkpoint() {
        let mut pipeline = new_pipeline(2);
        let a = pipeline.chunk_read(end(2, false));
        let b = pipeline.chunk_read(end(0, true));
        pipeline.write_finished(a, Ok(written(&["a"])));
        pipeline.write_finished(b, Ok(written(&["b"])));
        let first = pipeline.next_commit();
        assert_eq!(moved_page(first), 2);
        assert!(pipeline.commit_finished(Ok(())).is_none());
        let Some(Commit::Moved {
            checkpoint,
            written,
            ..
        }) = pipeline.next_commit()
        else {
            panic!("expected the last chunk's commit");
        };
        assert!(checkpoint.levels.is_empty());
        assert_eq!(checkpoint.phase, Phase::Done);
        assert_eq!(checkpoint.expected, 30, "the announced totals add up");
        assert_eq!(written.counts.read, 10);
        assert_eq!(written.events[0].message, "docebo pages read");
        let done = pipeline.commit_finished(Ok(())).unwrap().unwrap();
        assert_eq!(done, checkpoint);
    }

    #[test]
    fn records_deferred_in_the_listing_lead_to_the_deferred_phase() {
        let mut pipeline = new_pipeline(1);
        let a = pipeline.chunk_read(end(0, true));
        let mut outcome = written(&[]);
        outcome.deferred.push(super::super::checkpoint::Deferred {
            key: "1-2".into(),
            fields: Default::default(),
            hash: String::new(),
            updated_at: None,
            reason: "Foreign key external ID: 2 not found".into(),
        });
        pipeline.write_finished(a, Ok(outcome));
        let Some(Commit::Moved { checkpoint, .. }) = pipeline.next_commit() else {
            panic!("expected a commit");
        };
        assert_eq!(checkpoint.deferred_count, 1);
        assert_eq!(checkpoint.phase, Phase::Deferred);
    }

    #[test]
    fn after_a_failed_write_the_chunks_sent_commit_confirmed_only() {
        let mut pipeline = new_pipeline(3);
        let a = pipeline.chunk_read(end(2, false));
        let b = pipeline.chunk_read(end(3, false));
        let c = pipeline.chunk_read(end(4, false));
        pipeline.write_finished(a, Ok(written(&["a"])));
        assert_eq!(moved_page(pipeline.next_commit()), 2);
        pipeline.write_finished(
            b,
            Err(SyncError::Transient(Failure::Unreadable(
                "salesforce is down".into(),
            ))),
        );
        pipeline.write_finished(c, Ok(written(&["c"])));
        assert!(pipeline.commit_finished(Ok(())).is_none());
        // b is dropped; c's confirmed writes are kept, the checkpoint stays after a.
        match pipeline.next_commit() {
            Some(Commit::ConfirmedOnly(written)) => {
                assert_eq!(written.ledger[0].record_key, "c");
            }
            _ => panic!("expected a confirmed-only commit"),
        }
        assert!(!pipeline.wants_chunk(), "no chunk starts after a failure");
        assert!(!pipeline.should_stop(), "the commit is still running");
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert!(pipeline.should_stop());
        assert_eq!(pipeline.checkpoint.levels[0].page, 2);
        let failure = pipeline.failure();
        assert!(
            matches!(failure, SyncError::Transient(Failure::Unreadable(message)) if message == "salesforce is down")
        );
    }

    #[test]
    fn an_interrupted_chunk_keeps_its_confirmed_writes_and_the_checkpoint_before_it() {
        let mut pipeline = new_pipeline(2);
        let a = pipeline.chunk_read(end(2, false));
        let b = pipeline.chunk_read(end(3, false));
        let mut cut = written(&["a1"]);
        cut.interrupted = Some(SyncError::Interrupted(Interrupt::Stop));
        pipeline.write_finished(a, Ok(cut));
        pipeline.write_finished(b, Ok(written(&["b1"])));
        assert!(matches!(
            pipeline.next_commit(),
            Some(Commit::ConfirmedOnly(written)) if written.ledger.len() == 1
        ));
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert!(matches!(
            pipeline.next_commit(),
            Some(Commit::ConfirmedOnly(_))
        ));
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert!(pipeline.should_stop());
        assert_eq!(pipeline.checkpoint, Checkpoint::default());
        assert!(matches!(
            pipeline.failure(),
            SyncError::Interrupted(Interrupt::Stop)
        ));
    }

    #[test]
    fn a_reader_failure_stops_new_chunks_once_those_sent_are_done() {
        let mut pipeline = new_pipeline(2);
        let a = pipeline.chunk_read(end(2, false));
        pipeline.read_failed(SyncError::Transient(Failure::Unreadable(
            "docebo is down".into(),
        )));
        assert!(!pipeline.wants_chunk());
        assert!(!pipeline.should_stop(), "the chunk sent finishes first");
        pipeline.write_finished(a, Ok(written(&["a"])));
        assert!(matches!(
            pipeline.next_commit(),
            Some(Commit::ConfirmedOnly(_))
        ));
        assert!(pipeline.commit_finished(Ok(())).is_none());
        assert!(pipeline.should_stop());
    }

    #[test]
    fn a_failed_commit_ends_the_listing_and_a_reader_that_ends_early_is_an_error() {
        let mut pipeline = new_pipeline(1);
        let a = pipeline.chunk_read(end(2, false));
        pipeline.write_finished(a, Ok(written(&["a"])));
        assert!(pipeline.next_commit().is_some());
        let outcome = pipeline.commit_finished(Err(SyncError::Interrupted(Interrupt::Lost)));
        assert!(matches!(
            outcome,
            Some(Err(SyncError::Interrupted(Interrupt::Lost)))
        ));

        let mut pipeline = new_pipeline(1);
        pipeline.read_ended();
        assert!(pipeline.should_stop());
        assert!(matches!(pipeline.failure(), SyncError::Transient(_)));
    }
}
