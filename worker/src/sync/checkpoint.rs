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
    /// Records the Salesforce snapshot held when the verify phase ended (a check run's listing
    /// compares with it, and reads it again if a crash emptied it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_records: i64,
}

fn is_zero(count: &i64) -> bool {
    *count == 0
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
}

impl Pos {
    /// The start of a level.
    pub(super) fn first() -> Pos {
        Pos {
            page: 1,
            cursor: None,
            index: 0,
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

    /// The start of the next page (read by `cursor`, in cursor mode).
    pub(super) fn next(&self, cursor: Option<String>) -> Pos {
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
            }],
            deferred: Vec::new(),
            deferred_count: 3,
            after_key: String::new(),
            expected: 12,
            page_size: Some(10),
            snapshot_records: 0,
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
    }
}
