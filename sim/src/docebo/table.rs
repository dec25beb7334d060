//! In-memory Docebo tables: each row keeps its item pre-serialized, and a lazily rebuilt index keeps
//! rows sorted by last update, so serving a page is a binary search plus copying bytes.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::parse_docebo_date;

/// A row key: `(id, 0)` for plain entities, `(user_id, other_id)` for enrollments.
pub type Key = (i64, i64);

/// The seven Docebo entity kinds the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// `GET /manage/v1/user`, key `user_id`.
    Users,
    /// `GET /learn/v1/courses`, key `id_course`.
    Courses,
    /// `GET /learningplan/v1/learningplans`, key `learning_plan_id`.
    LearningPlans,
    /// `GET /course/v1/courses/{course_id}/sessions`, key `id` (grouped by `course_id`).
    Sessions,
    /// `GET /course/v1/courses/enrollments`, key `"{user_id}-{course_id}"`.
    CourseEnrollments,
    /// `GET /learningplan/v1/learningplans/enrollments`, key `"{user_id}-{learning_plan_id}"`.
    LearningPlanEnrollments,
    /// `GET /course/v1/sessions/{session_id}/enrollments`, key `"{user_id}-{session_id}"`.
    SessionEnrollments,
}

impl EntityKind {
    /// Every kind, parents first.
    pub const ALL: [EntityKind; 7] = [
        EntityKind::Users,
        EntityKind::Courses,
        EntityKind::LearningPlans,
        EntityKind::Sessions,
        EntityKind::CourseEnrollments,
        EntityKind::LearningPlanEnrollments,
        EntityKind::SessionEnrollments,
    ];

    /// The snake_case name used in the control API and the summary.
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Users => "users",
            EntityKind::Courses => "courses",
            EntityKind::LearningPlans => "learning_plans",
            EntityKind::Sessions => "sessions",
            EntityKind::CourseEnrollments => "course_enrollments",
            EntityKind::LearningPlanEnrollments => "learning_plan_enrollments",
            EntityKind::SessionEnrollments => "session_enrollments",
        }
    }

    /// Parses a control-API name.
    pub fn from_name(name: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Fields forming the key: first the id (or user id), then the second part for enrollments.
    pub(crate) fn key_fields(self) -> (&'static str, Option<&'static str>) {
        match self {
            EntityKind::Users => ("user_id", None),
            EntityKind::Courses => ("id_course", None),
            EntityKind::LearningPlans => ("learning_plan_id", None),
            EntityKind::Sessions => ("id", None),
            EntityKind::CourseEnrollments => ("user_id", Some("course_id")),
            EntityKind::LearningPlanEnrollments => ("user_id", Some("learning_plan_id")),
            EntityKind::SessionEnrollments => ("user_id", Some("session_id")),
        }
    }

    /// The field the list endpoints filter with `updated_from` and sort by.
    pub(crate) fn marker_fields(self) -> &'static [&'static str] {
        match self {
            EntityKind::Users => &["last_update"],
            EntityKind::Courses => &["date_last_updated"],
            EntityKind::LearningPlans | EntityKind::Sessions => &["updated_on"],
            EntityKind::CourseEnrollments | EntityKind::LearningPlanEnrollments => {
                &["enrollment_date_last_updated"]
            }
            // Docebo has no update marker on session rosters: the later of both dates stands in.
            EntityKind::SessionEnrollments => &["enrollment_date", "completion_date"],
        }
    }

    /// The field the list groups by (path parameter or `xxx_id[]` filter).
    pub(crate) fn group_field(self) -> Option<&'static str> {
        match self {
            EntityKind::Sessions => Some("course_id"),
            EntityKind::CourseEnrollments => Some("course_id"),
            EntityKind::LearningPlanEnrollments => Some("learning_plan_id"),
            EntityKind::SessionEnrollments => Some("session_id"),
            _ => None,
        }
    }

    /// Whether the kind is one of the enrollment kinds (key `user-other`).
    pub fn is_enrollment(self) -> bool {
        matches!(
            self,
            EntityKind::CourseEnrollments
                | EntityKind::LearningPlanEnrollments
                | EntityKind::SessionEnrollments
        )
    }

    /// Extracts the row key of an item.
    pub(crate) fn key_of(self, item: &Value) -> Option<Key> {
        let (first, second) = self.key_fields();
        let a = id_of(item, first)?;
        match second {
            Some(field) => Some((a, id_of(item, field)?)),
            None => Some((a, 0)),
        }
    }

    /// Formats a key as the control API spells it.
    pub fn key_string(self, key: Key) -> String {
        if self.is_enrollment() {
            format!("{}-{}", key.0, key.1)
        } else {
            key.0.to_string()
        }
    }

    /// Parses a control-API key (`"123"` or `"12301-55"`).
    pub fn parse_key(self, text: &str) -> Option<Key> {
        if self.is_enrollment() {
            let (a, b) = text.split_once('-')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        } else {
            Some((text.trim().parse().ok()?, 0))
        }
    }

    /// The sort/filter time of an item (epoch seconds; 0 when it has no valid date).
    pub(crate) fn marker_of(self, item: &Value) -> i64 {
        self.marker_fields()
            .iter()
            .filter_map(|field| item.get(*field).and_then(Value::as_str))
            .filter_map(parse_docebo_date)
            .map(|time| time.timestamp())
            .max()
            .unwrap_or(0)
    }
}

/// Reads an id that may be a JSON number or a numeric string.
pub(crate) fn id_of(item: &Value, field: &str) -> Option<i64> {
    match item.get(field)? {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// One stored item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub sort: i64,
    pub group: i64,
    pub user: i64,
    /// The item, serialized once when written.
    pub json: Box<str>,
}

impl Row {
    pub fn build(kind: EntityKind, item: &Value) -> Row {
        let group = kind
            .group_field()
            .and_then(|field| id_of(item, field))
            .unwrap_or(0);
        let user = if kind.is_enrollment() {
            id_of(item, "user_id").unwrap_or(0)
        } else {
            0
        };
        Row {
            sort: kind.marker_of(item),
            group,
            user,
            json: item.to_string().into_boxed_str(),
        }
    }

    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

/// Rows sorted by `(sort, key)` plus positions per group and per user.
#[derive(Debug, Default)]
pub(crate) struct Index {
    keys: Vec<Key>,
    sorts: Vec<i64>,
    by_group: HashMap<i64, Vec<u32>>,
    by_user: HashMap<i64, Vec<u32>>,
}

/// One table of items of a kind.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub rows: HashMap<Key, Row>,
    /// `None` after a write; rebuilt by the next read.
    pub index: Option<Index>,
}

/// What a list call asks for.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListQuery {
    pub page: usize,
    pub page_size: usize,
    pub groups: Option<Vec<i64>>,
    pub users: Option<Vec<i64>>,
    pub updated_from: Option<i64>,
    pub descending: bool,
    pub want_cursor: bool,
    pub cursor: Option<Cursor>,
}

/// A position in the sorted order, handed out as an opaque string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cursor {
    pub sort: i64,
    pub key: Key,
}

impl Cursor {
    pub fn encode(self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}:{}", self.sort, self.key.0, self.key.1))
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split(':');
        let sort = parts.next()?.parse().ok()?;
        let a = parts.next()?.parse().ok()?;
        let b = parts.next()?.parse().ok()?;
        Some(Cursor { sort, key: (a, b) })
    }
}

/// One served page.
#[derive(Debug, Default)]
pub(crate) struct Page<'a> {
    pub items: Vec<&'a str>,
    pub total_count: usize,
    pub has_more: bool,
    pub next_cursor: Option<Cursor>,
}

/// The candidate positions of a query: everything, or an explicit ascending list.
enum Candidates {
    Range(usize, usize),
    List(Vec<u32>),
}

impl Candidates {
    fn len(&self) -> usize {
        match self {
            Candidates::Range(start, end) => end - start,
            Candidates::List(list) => list.len(),
        }
    }

    fn get(&self, i: usize) -> usize {
        match self {
            Candidates::Range(start, _) => start + i,
            Candidates::List(list) => list[i] as usize,
        }
    }

    /// Drops the leading candidates for which `before` holds (it must be monotonic).
    fn skip_while_before(self, before: impl Fn(usize) -> bool) -> Candidates {
        match self {
            Candidates::Range(start, end) => {
                let skip = partition_point_range(start, end, &before);
                Candidates::Range(skip, end)
            }
            Candidates::List(list) => {
                let skip = list.partition_point(|&pos| before(pos as usize));
                Candidates::List(list[skip..].to_vec())
            }
        }
    }
}

fn partition_point_range(start: usize, end: usize, before: &impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (start, end);
    while low < high {
        let mid = low + (high - low) / 2;
        if before(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

impl Table {
    pub fn insert(&mut self, key: Key, row: Row) {
        self.rows.insert(key, row);
        self.index = None;
    }

    pub fn remove(&mut self, key: Key) -> Option<Row> {
        let removed = self.rows.remove(&key);
        if removed.is_some() {
            self.index = None;
        }
        removed
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.index = None;
    }

    pub fn ensure_index(&mut self) {
        if self.index.is_some() {
            return;
        }
        let mut order: Vec<(i64, Key)> = self.rows.iter().map(|(k, r)| (r.sort, *k)).collect();
        order.sort_unstable();
        let mut index = Index {
            keys: Vec::with_capacity(order.len()),
            sorts: Vec::with_capacity(order.len()),
            ..Index::default()
        };
        for (position, (sort, key)) in order.into_iter().enumerate() {
            let row = &self.rows[&key];
            index
                .by_group
                .entry(row.group)
                .or_default()
                .push(position as u32);
            index
                .by_user
                .entry(row.user)
                .or_default()
                .push(position as u32);
            index.keys.push(key);
            index.sorts.push(sort);
        }
        self.index = Some(index);
    }

    /// Serves one page; the index must have been built (`ensure_index`).
    pub fn page(&self, query: &ListQuery) -> Page<'_> {
        let Some(index) = &self.index else {
            return Page::default();
        };
        let mut candidates = match (&query.groups, &query.users) {
            (Some(groups), _) => {
                let mut list = union(groups.iter().filter_map(|g| index.by_group.get(g)));
                if let Some(users) = &query.users {
                    list.retain(|&pos| {
                        let key = index.keys[pos as usize];
                        self.rows
                            .get(&key)
                            .is_some_and(|row| users.contains(&row.user))
                    });
                }
                Candidates::List(list)
            }
            (None, Some(users)) => {
                Candidates::List(union(users.iter().filter_map(|u| index.by_user.get(u))))
            }
            (None, None) => Candidates::Range(0, index.keys.len()),
        };
        if let Some(from) = query.updated_from {
            candidates = candidates.skip_while_before(|pos| index.sorts[pos] < from);
        }
        let total_count = candidates.len();
        let mut page = Page {
            total_count,
            ..Page::default()
        };
        let (first, take) = if query.want_cursor || query.cursor.is_some() {
            let after = match query.cursor {
                Some(cursor) => {
                    let remaining = candidates.skip_while_before(|pos| {
                        (index.sorts[pos], index.keys[pos]) <= (cursor.sort, cursor.key)
                    });
                    candidates = remaining;
                    0
                }
                None => 0,
            };
            (after, query.page_size)
        } else {
            (
                query.page.saturating_sub(1).saturating_mul(query.page_size),
                query.page_size,
            )
        };
        let available = candidates.len();
        let end = first.saturating_add(take).min(available);
        let mut last_served = None;
        for i in first.min(end)..end {
            let position = if query.descending && query.cursor.is_none() && !query.want_cursor {
                candidates.get(available - 1 - i)
            } else {
                candidates.get(i)
            };
            let key = index.keys[position];
            if let Some(row) = self.rows.get(&key) {
                page.items.push(&row.json);
                last_served = Some(Cursor {
                    sort: index.sorts[position],
                    key,
                });
            }
        }
        page.has_more = end < available;
        if query.want_cursor || query.cursor.is_some() {
            // Without anything served the caller resumes from where it was.
            page.next_cursor = last_served.or(query.cursor);
        }
        page
    }
}

fn union<'a>(lists: impl Iterator<Item = &'a Vec<u32>>) -> Vec<u32> {
    let lists: Vec<&Vec<u32>> = lists.collect();
    if lists.len() == 1 {
        return lists[0].clone();
    }
    let mut all: Vec<u32> = lists.into_iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> Table {
        let mut table = Table::default();
        for i in 0..10i64 {
            let item = json!({"user_id": i, "course_id": i % 3,
                "enrollment_date_last_updated": format!("2024-01-01 00:00:{:02}", 10 - i)});
            let key = EntityKind::CourseEnrollments.key_of(&item).expect("key");
            table.insert(key, Row::build(EntityKind::CourseEnrollments, &item));
        }
        table.ensure_index();
        table
    }

    #[test]
    fn pages_follow_update_order() {
        let table = table();
        let page = table.page(&ListQuery {
            page: 1,
            page_size: 4,
            ..ListQuery::default()
        });
        assert_eq!(page.total_count, 10);
        assert!(page.has_more);
        assert!(page.items[0].contains("\"user_id\":9"));
        let last = table.page(&ListQuery {
            page: 3,
            page_size: 4,
            ..ListQuery::default()
        });
        assert_eq!(last.items.len(), 2);
        assert!(!last.has_more);
    }

    #[test]
    fn group_filter_and_cursor() {
        let table = table();
        let mut query = ListQuery {
            page: 1,
            page_size: 2,
            groups: Some(vec![0, 1]),
            want_cursor: true,
            ..ListQuery::default()
        };
        let first = table.page(&query);
        assert_eq!(first.total_count, 7);
        query.cursor = first.next_cursor;
        let second = table.page(&query);
        assert_eq!(second.items.len(), 2);
        assert_ne!(first.items, second.items);
        let encoded = first.next_cursor.expect("cursor").encode();
        assert_eq!(Cursor::decode(&encoded), first.next_cursor);
    }
}
