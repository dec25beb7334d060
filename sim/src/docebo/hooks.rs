//! Changes applied to the platform while a client reads it: a mutation that fires once, right after
//! a given page of a given listing was served, to reproduce what page-number listings do when the
//! data moves under them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::table::EntityKind;

/// A mutation applied once, right after page `page` of the listing at `path` was served in
/// page-number mode (cursor-mode calls never fire it).
///
/// JSON form (control API `POST /__sim/on_page`):
/// `{"path": "/learn/v1/courses", "page": 1, "action": {"op": "update", "kind": "courses", "key": "12"}}`.
/// An update with no `patch` (or `{}`) touches the item: its change marker moves to now, so with
/// `sort_by=last_update asc` it moves to the end of the listing and every later item shifts back by
/// one, and the first item of the next page is never served to a page-number reader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PageHook {
    /// The listing's path, as requested: `/learn/v1/courses`, `/course/v1/courses/12/sessions`, ...
    pub path: String,
    /// The page (1-based) after which the action fires.
    pub page: usize,
    /// What changes.
    pub action: PageAction,
    /// Whether the hook has fired (set by the simulator).
    #[serde(default)]
    pub fired: bool,
    /// Why the action failed when it fired, if it did (an unknown key, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A change to the platform, as the control API's `/__sim/records` routes make them (webhooks fire).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PageAction {
    /// Merges `patch` into the item `key` of `kind`; its change marker moves to now unless the patch
    /// sets it.
    Update {
        /// The entity kind (`courses`, `users`, ...).
        kind: EntityKind,
        /// The item's key (`12`, or `"{user_id}-{course_id}"` for enrollments).
        key: String,
        /// Fields to set; absent or `{}` only touches the item.
        #[serde(default)]
        patch: Value,
    },
    /// Deletes the item `key` of `kind`.
    Delete {
        /// The entity kind.
        kind: EntityKind,
        /// The item's key.
        key: String,
    },
    /// Creates `item` in `kind`.
    Create {
        /// The entity kind.
        kind: EntityKind,
        /// The new item, as `POST /__sim/records/{kind}` takes it.
        item: Value,
    },
}
