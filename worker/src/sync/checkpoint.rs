//! Where a job is, as stored in `jobs.checkpoint`: its phase, its position in the listing, and
//! what the later phases need. Jobs resume from stored checkpoints, so this JSON form only grows
//! fields with defaults.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::docebo::PageRef;
use crate::mapping::Fields;

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
    /// Why the listing is not known to be complete, the first reason found (a level that
    /// changed while it was read, a count that does not match Docebo's `total_count`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    /// Whether the listing ran to its end and every level of it was proven complete (see
    /// [`Proof`]); only then does the full comparison unenroll. Checkpoints stored before this
    /// field read as not proven.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listing_complete: bool,
    /// Records the Salesforce snapshot held when the verify phase ended (a check run's listing
    /// compares with it, and reads it again if a crash emptied it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_records: i64,
    /// The run's shared reading of the course list the positions count in (its reader's job and
    /// attempt), when the listing starts from one: a position in another reading is void.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_reading: Option<String>,
    /// The records earlier runs kept to try again were handed to this job's deferred retry
    /// (incremental runs: [`super::JobRun::load_retries`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retries_loaded: bool,
}

/// A job's phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading what Salesforce holds of the object (runs over all time), before the listing.
    Verify,
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
    /// What this level's reading proves so far.
    #[serde(default, skip_serializing_if = "Proof::is_empty")]
    pub proof: Proof,
}

/// What the reading of one level of a listing (the courses, one course's sessions, one roster)
/// proves so far about its completeness.
///
/// One answer is a consistent view, and so is a walk by Docebo's cursor. A walk by page number
/// over several pages is not: an item edited or deleted on a page already read shifts every later
/// item back by one, and the first item of the next page is never served. Outer levels read by
/// page number are therefore read again (verification passes: only items no pass had are
/// descended into) until a pass sees nothing move: the same `total_count` on every page, as
/// many items as that total, no item twice and no item new. Such a pass is complete, since any
/// shift during it would have shown as an item read twice (an edit moves the item to the end)
/// or a changed total (a deletion; a creation that hid one in the total shows as a new item).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The pass over the level: 0 the first reading, then the verification passes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pass: u32,
    /// Items read in this pass.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read: i64,
    /// Docebo's `total_count` on this pass's first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// Docebo's `total_count` on this pass's last page read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_total: Option<i64>,
    /// A page after the first was read by page number (not by a cursor Docebo gave).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_number: bool,
    /// Something moved during this pass: the total changed, a page lacked it, an item came twice
    /// or an item no earlier pass had came.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moved: bool,
    /// Outer levels read by page number: the ids earlier passes read, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<i64>,
    /// Outer levels read by page number: the ids this pass read, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub this_pass: Vec<i64>,
}

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Proof {
    fn is_empty(&self) -> bool {
        *self == Proof::default()
    }
}

impl Pos {
    /// The start of a level.
    pub(super) fn first() -> Pos {
        Pos {
            page: 1,
            cursor: None,
            index: 0,
            proof: Proof::default(),
        }
    }

    /// The page request that reads this position.
    pub(super) fn page_ref(&self, page_size: u32, cursor_mode: bool) -> PageRef {
        PageRef {
            page: self.page.max(1),
            cursor: self.cursor.clone(),
            page_size,
            cursor_mode,
        }
    }

    /// The start of the next page (read by `cursor`, in cursor mode); the level's proof goes on.
    pub(super) fn next(&mut self, cursor: Option<String>) {
        self.page += 1;
        self.cursor = cursor;
        self.index = 0;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checkpoints_round_trip_through_json() {
        let checkpoint = Checkpoint {
            phase: Phase::Deferred,
            levels: vec![Pos {
                page: 3,
                cursor: Some("abc".into()),
                index: 2,
                proof: Proof {
                    pass: 1,
                    read: 4,
                    total: Some(9),
                    seen: vec![3, 7],
                    ..Proof::default()
                },
            }],
            deferred: Vec::new(),
            deferred_count: 3,
            after_key: String::new(),
            expected: 12,
            page_size: Some(10),
            snapshot_records: 0,
            incomplete: Some("the courses kept changing".into()),
            listing_complete: false,
            shared_reading: Some("7b0c/2".into()),
            retries_loaded: false,
        };
        let value = serde_json::to_value(&checkpoint).unwrap();
        assert_eq!(value["phase"], "deferred");
        let back: Checkpoint = serde_json::from_value(value).unwrap();
        assert_eq!(back, checkpoint);
    }

    #[test]
    fn the_stored_form_is_unchanged() {
        // A checkpoint as jobs stored it before the sync was split into modules.
        let stored = serde_json::json!({
            "phase": "unenroll",
            "levels": [{"page": 2, "index": 1}, {"page": 1, "cursor": "c", "index": 0}],
            "deferred_count": 0,
            "after_key": "12-5",
            "expected": 40,
            "page_size": 200,
        });
        let checkpoint: Checkpoint = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(checkpoint.phase, Phase::Unenroll);
        assert_eq!(serde_json::to_value(&checkpoint).unwrap(), stored);
        // The oldest form had only a phase and levels.
        let oldest: Checkpoint =
            serde_json::from_value(serde_json::json!({"phase": "list", "levels": []})).unwrap();
        assert_eq!(oldest, Checkpoint::default());
        // Stored before completeness was recorded: not proven, so the comparison unenrolls
        // nothing.
        assert!(!checkpoint.listing_complete);
        let proven =
            serde_json::json!({"phase": "unenroll", "levels": [], "listing_complete": true});
        let proven: Checkpoint = serde_json::from_value(proven).unwrap();
        assert!(proven.listing_complete);
    }
}
