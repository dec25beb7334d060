//! Docebo calls by what they read, from the simulator's counters: where learnsync and the
//! baseline differ (`compare`) and what a full sync spends (`sync`).

use std::collections::BTreeMap;

/// The families a call falls in, with the counter keys (method and route template) they sum.
const FAMILIES: &[(&str, &[&str])] = &[
    ("tokens", &["POST /oauth2/token"]),
    ("course list", &["GET /learn/v1/courses"]),
    ("sessions", &["GET /course/v1/courses/{course_id}/sessions"]),
    (
        "rosters",
        &["GET /course/v1/sessions/{session_id}/enrollments"],
    ),
];

/// The calls of each family, and the rest as `other lists`, in one line.
pub fn by_family(counters: &BTreeMap<String, u64>) -> String {
    let mut parts = Vec::new();
    let mut counted = 0;
    for (family, keys) in FAMILIES {
        let calls: u64 = keys
            .iter()
            .map(|key| counters.get(*key).copied().unwrap_or(0))
            .sum();
        counted += calls;
        parts.push(format!("{family} {calls}"));
    }
    let total: u64 = counters.values().sum();
    parts.push(format!("other lists {}", total - counted));
    parts.join(", ")
}
