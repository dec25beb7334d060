//! Deterministic data-set generation: realistic proportions plus the awkward records real platforms hold.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::table::{EntityKind, Key, Row};
use crate::common::docebo_date;

/// How big a data set to generate. JSON form (control API `POST /__sim/generate`): every field optional.
///
/// Sizes left unset derive from `scale` (default 1.0): `users = 100 * scale`, `courses = 20 * scale`,
/// `learning_plans = 5 * scale`, `course_enrollments = 500 * scale`,
/// `learning_plan_enrollments = 100 * scale`, `session_enrollments = 200 * scale`;
/// `sessions_per_course` defaults to 2 (for classroom and webinar courses only).
/// Courses are about 60% elearning, 25% classroom, 15% webinar.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GenerateParams {
    /// Seed of the generator: the same seed and sizes give the same data set.
    pub seed: u64,
    /// Multiplies the default sizes of every entity left unset.
    pub scale: Option<f64>,
    /// Number of users.
    pub users: Option<usize>,
    /// Number of courses (all three types).
    pub courses: Option<usize>,
    /// Number of learning plans.
    pub learning_plans: Option<usize>,
    /// Sessions per classroom or webinar course.
    pub sessions_per_course: Option<usize>,
    /// Number of course enrollments (capped at users x courses).
    pub course_enrollments: Option<usize>,
    /// Number of learning-plan enrollments (capped at users x learning plans).
    pub learning_plan_enrollments: Option<usize>,
    /// Number of session enrollments, webinar and ILT together (capped at users x sessions).
    pub session_enrollments: Option<usize>,
    /// Set to `false` for a clean data set without deliberately bad records.
    pub bad_records: Option<bool>,
}

/// A deliberately bad record of a generated data set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BadRecord {
    /// The record's key as the control API spells it (`"10007"`, `"10003-104"`).
    pub key: String,
    /// Why Salesforce will refuse it: `first_name_too_long`, `code_too_long`, `unknown_status`,
    /// `missing_user`, `missing_course`, `missing_learning_plan`, or (its parent being bad)
    /// `parent_user_invalid`, `parent_course_invalid`, `parent_learning_plan_invalid`,
    /// `parent_session_invalid`.
    pub reason: String,
}

/// What a data set holds, so tests can compute the expected outcome of a sync.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DatasetSummary {
    /// The seed the data set was generated with.
    pub seed: u64,
    /// Records per entity kind (`users`, `courses`, `learning_plans`, `sessions`,
    /// `course_enrollments`, `learning_plan_enrollments`, `session_enrollments`), live.
    pub counts: BTreeMap<String, usize>,
    /// Courses per `course_type` (`elearning`, `classroom`, `webinar`).
    pub course_types: BTreeMap<String, usize>,
    /// Session enrollments split by session type (`webinar`, `classroom`).
    pub session_enrollment_types: BTreeMap<String, usize>,
    /// Deliberately bad records per entity kind, as generated (a record is listed once, with the first
    /// reason that applies).
    pub bad: BTreeMap<String, Vec<BadRecord>>,
    /// `bad[kind].len()` per kind.
    pub bad_counts: BTreeMap<String, usize>,
    /// Awkward but valid records per kind (non-ASCII names, zero or missing dates), as keys.
    pub awkward_counts: BTreeMap<String, usize>,
}

/// A generated data set: items per kind plus its summary.
pub(crate) struct Dataset {
    pub items: Vec<(EntityKind, Vec<(Key, Row)>)>,
    pub summary: DatasetSummary,
}

const FIRST_NAMES: &[&str] = &[
    "Jane",
    "John",
    "Aiko",
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "Mia",
    "Ömer",
    "Chloé",
    "Dmitri",
    "Noah",
    "Émilie",
    "Sven",
    "Ngozi",
    "Priya",
    "李",
    "Андрей",
    "Fatima",
    "Liam",
];
const LAST_NAMES: &[&str] = &[
    "Smith",
    "Müller",
    "García",
    "Rossi",
    "Nakamura",
    "Østergaard",
    "Kowalski",
    "O'Brien",
    "Dubois",
    "Wong",
    "Иванов",
    "Silva",
    "Nguyen",
    "Brown",
    "Çelik",
    "王",
];
const TOPICS: &[&str] = &[
    "Sales",
    "Safety",
    "Onboarding",
    "Compliance",
    "Leadership",
    "Product",
    "Support",
    "Finance",
];
const COURSE_STATUSES: &[&str] = &[
    "completed",
    "completed",
    "completed",
    "in_progress",
    "in_progress",
    "subscribed",
    "subscribed",
    "waiting",
    "suspended",
    "overbooking",
    "to_confirm",
];
const LP_STATUSES: &[&str] = &["not_started", "in_progress", "in_progress", "completed"];

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn at(rng: &mut StdRng, within_days: i64) -> DateTime<Utc> {
    base_time() + chrono::Duration::seconds(rng.random_range(0..within_days * 86_400))
}

fn date(time: DateTime<Utc>) -> Value {
    Value::String(docebo_date(time))
}

const ZERO_DATE: &str = "0000-00-00 00:00:00";

/// Turns a generated item into its stored row (every generated item has its key fields).
fn to_row(kind: EntityKind, item: Value) -> (Key, Row) {
    (
        kind.key_of(&item).unwrap_or((0, 0)),
        Row::build(kind, &item),
    )
}

/// Every `1 in 50` record (at least one when a kind has ten or more) is deliberately bad.
fn is_bad(i: usize, count: usize, enabled: bool) -> bool {
    enabled && count >= 10 && i % 50 == 7
}

struct Sizes {
    users: usize,
    courses: usize,
    learning_plans: usize,
    sessions_per_course: usize,
    course_enrollments: usize,
    learning_plan_enrollments: usize,
    session_enrollments: usize,
}

impl GenerateParams {
    fn sizes(&self) -> Sizes {
        let scale = self.scale.unwrap_or(1.0).max(0.0);
        let scaled = |base: f64| (base * scale).round() as usize;
        Sizes {
            users: self.users.unwrap_or_else(|| scaled(100.0)),
            courses: self.courses.unwrap_or_else(|| scaled(20.0)),
            learning_plans: self.learning_plans.unwrap_or_else(|| scaled(5.0)),
            sessions_per_course: self.sessions_per_course.unwrap_or(2),
            course_enrollments: self.course_enrollments.unwrap_or_else(|| scaled(500.0)),
            learning_plan_enrollments: self
                .learning_plan_enrollments
                .unwrap_or_else(|| scaled(100.0)),
            session_enrollments: self.session_enrollments.unwrap_or_else(|| scaled(200.0)),
        }
    }
}

/// Picks `count` distinct `(a, b)` index pairs out of `a_len x b_len`, deterministically.
fn pick_pairs(rng: &mut StdRng, count: usize, a_len: usize, b_len: usize) -> Vec<(usize, usize)> {
    let space = a_len.saturating_mul(b_len);
    let count = count.min(space);
    let mut seen = HashSet::with_capacity(count);
    let mut pairs = Vec::with_capacity(count);
    if count == 0 {
        return pairs;
    }
    if count * 2 > space {
        // Dense: walk the whole space with a random skip so it stays deterministic and terminates.
        for a in 0..a_len {
            for b in 0..b_len {
                if pairs.len() < count && rng.random_range(0..space) < count * 2 {
                    pairs.push((a, b));
                }
            }
        }
        let mut a = 0;
        let mut b = 0;
        let chosen: HashSet<(usize, usize)> = pairs.iter().copied().collect();
        while pairs.len() < count {
            if !chosen.contains(&(a, b)) {
                pairs.push((a, b));
            }
            b += 1;
            if b == b_len {
                b = 0;
                a += 1;
            }
        }
        return pairs;
    }
    while pairs.len() < count {
        let pair = (rng.random_range(0..a_len), rng.random_range(0..b_len));
        if seen.insert(pair) {
            pairs.push(pair);
        }
    }
    pairs
}

struct Bad {
    bad: BTreeMap<String, Vec<BadRecord>>,
    awkward: BTreeMap<String, usize>,
}

impl Bad {
    fn add(&mut self, kind: EntityKind, key: String, reason: &str) {
        self.bad
            .entry(kind.name().to_string())
            .or_default()
            .push(BadRecord {
                key,
                reason: reason.to_string(),
            });
    }

    fn awkward(&mut self, kind: EntityKind) {
        *self.awkward.entry(kind.name().to_string()).or_default() += 1;
    }
}

/// Generates a data set; the same parameters always give the same data.
pub(crate) fn generate(params: &GenerateParams) -> Dataset {
    let sizes = params.sizes();
    let bad_enabled = params.bad_records.unwrap_or(true);
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut bad = Bad {
        bad: BTreeMap::new(),
        awkward: BTreeMap::new(),
    };

    // Users.
    let mut users = Vec::with_capacity(sizes.users);
    let mut user_bad = Vec::with_capacity(sizes.users);
    for i in 0..sizes.users {
        let user_id = 10_000 + i as i64;
        let mut first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())].to_string();
        let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())].to_string();
        let is_bad_user = is_bad(i, sizes.users, bad_enabled);
        if is_bad_user {
            first = format!("{first} {}", "Maximilian-Alexander ".repeat(5));
            bad.add(
                EntityKind::Users,
                user_id.to_string(),
                "first_name_too_long",
            );
        } else if !first.is_ascii() || !last.is_ascii() {
            bad.awkward(EntityKind::Users);
        }
        user_bad.push(is_bad_user);
        let created = at(&mut rng, 365);
        let updated = created + chrono::Duration::seconds(rng.random_range(0..200 * 86_400));
        let username = format!("user{user_id}@acme.example");
        let mut uuid_bytes = [0u8; 16];
        rng.fill(&mut uuid_bytes);
        let creation_date = match i % 23 {
            5 => {
                bad.awkward(EntityKind::Users);
                Value::String(ZERO_DATE.into())
            }
            11 => Value::Null,
            _ => date(created),
        };
        users.push(json!({
            "user_id": user_id.to_string(),
            "username": username,
            "first_name": first,
            "last_name": last,
            "email": username,
            "uuid": uuid::Builder::from_random_bytes(uuid_bytes).into_uuid().to_string(),
            "status": if rng.random_bool(0.92) { "1" } else { "0" },
            "level": "6",
            "creation_date": creation_date,
            "last_update": date(updated),
            "expired": if i % 17 == 3 { date(updated + chrono::Duration::days(365)) } else { Value::Null },
            "lang_code": "english",
            "timezone": "UTC",
            "additional_fields": additional_fields(i),
        }));
    }

    // Courses.
    let mut courses = Vec::with_capacity(sizes.courses);
    let mut course_types = Vec::with_capacity(sizes.courses);
    let mut course_bad = Vec::with_capacity(sizes.courses);
    let mut type_counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..sizes.courses {
        let id = 100 + i as i64;
        let course_type = match i % 20 {
            0..=11 => "elearning",
            12..=16 => "classroom",
            _ => "webinar",
        };
        *type_counts.entry(course_type.to_string()).or_default() += 1;
        course_types.push(course_type);
        let topic = TOPICS[rng.random_range(0..TOPICS.len())];
        let is_bad_course = is_bad(i, sizes.courses, bad_enabled);
        let code = if is_bad_course {
            bad.add(EntityKind::Courses, id.to_string(), "code_too_long");
            format!("{}-{id}", "VERY-LONG-COURSE-CODE".repeat(6))
        } else {
            format!("{}-{id}", topic.to_uppercase())
        };
        course_bad.push(is_bad_course);
        let updated = at(&mut rng, 500);
        let start = at(&mut rng, 600);
        let (start_date, end_date) = match i % 7 {
            2 => {
                bad.awkward(EntityKind::Courses);
                (Value::String(ZERO_DATE.into()), Value::Null)
            }
            4 => (Value::Null, Value::Null),
            _ => (date(start), date(start + chrono::Duration::days(30))),
        };
        courses.push(json!({
            "id_course": id,
            "uidCourse": format!("E-{:06X}", rng.random_range(0..0xFF_FFFFu32)),
            "code": code,
            "name": format!("{topic} {} {}", if i % 9 == 1 { "für Einsteiger" } else { "Essentials" }, i),
            "course_type": course_type,
            "language": if i % 5 == 0 { "italian" } else { "english" },
            "credits": (rng.random_range(0..40) as f64) / 4.0,
            "duration": rng.random_range(10..600),
            "start_date": start_date,
            "end_date": end_date,
            "date_last_updated": date(updated),
        }));
    }

    // Learning plans.
    let mut plans = Vec::with_capacity(sizes.learning_plans);
    let mut plan_bad = Vec::with_capacity(sizes.learning_plans);
    for i in 0..sizes.learning_plans {
        let id = 500 + i as i64;
        let is_bad_plan = is_bad(i, sizes.learning_plans, bad_enabled);
        let code = if is_bad_plan {
            bad.add(EntityKind::LearningPlans, id.to_string(), "code_too_long");
            format!("{}-{id}", "LEARNING-PLAN-CODE-".repeat(6))
        } else {
            format!("LP-{id}")
        };
        plan_bad.push(is_bad_plan);
        let created = at(&mut rng, 300);
        let mut uuid_bytes = [0u8; 16];
        rng.fill(&mut uuid_bytes);
        plans.push(json!({
            "learning_plan_id": id,
            "uuid": uuid::Builder::from_random_bytes(uuid_bytes).into_uuid().to_string(),
            "code": code,
            "title": format!("{} path {i}", TOPICS[i % TOPICS.len()]),
            "is_published": i % 4 != 3,
            "credits": (i % 5) as f64,
            "created_on": date(created),
            "updated_on": date(created + chrono::Duration::days(rng.random_range(0..100))),
        }));
    }

    // Sessions of classroom and webinar courses.
    let mut sessions = Vec::new();
    // (session id, course index)
    let mut session_refs: Vec<(i64, usize)> = Vec::new();
    for (course_index, course_type) in course_types.iter().enumerate() {
        if *course_type == "elearning" {
            continue;
        }
        for s in 0..sizes.sessions_per_course {
            let id = 9_000 + session_refs.len() as i64;
            let course_id = 100 + course_index as i64;
            let start = at(&mut rng, 600);
            if course_bad[course_index] {
                bad.add(
                    EntityKind::Sessions,
                    id.to_string(),
                    "parent_course_invalid",
                );
            }
            sessions.push(json!({
                "id": id,
                "course_id": course_id,
                "name": format!("Session {} of course {course_id}", s + 1),
                "start_date": date(start),
                "end_date": date(start + chrono::Duration::hours(3)),
                "updated_on": date(start - chrono::Duration::days(10)),
            }));
            session_refs.push((id, course_index));
        }
    }

    // Course enrollments.
    let pairs = pick_pairs(
        &mut rng,
        sizes.course_enrollments,
        sizes.users,
        sizes.courses,
    );
    let mut course_enrollments = Vec::with_capacity(pairs.len());
    for (n, (user_index, course_index)) in pairs.into_iter().enumerate() {
        let mut user_id = 10_000 + user_index as i64;
        let mut course_id = 100 + course_index as i64;
        let mut status = COURSE_STATUSES[rng.random_range(0..COURSE_STATUSES.len())];
        let mut reason = None;
        if is_bad(n, sizes.course_enrollments, bad_enabled) {
            match (n / 50) % 3 {
                0 => {
                    status = "pending_review";
                    reason = Some("unknown_status");
                }
                1 => {
                    user_id = 900_000 + n as i64;
                    reason = Some("missing_user");
                }
                _ => {
                    course_id = 90_000 + n as i64;
                    reason = Some("missing_course");
                }
            }
        } else if user_bad[user_index] {
            reason = Some("parent_user_invalid");
        } else if course_bad[course_index] {
            reason = Some("parent_course_invalid");
        }
        if let Some(reason) = reason {
            bad.add(
                EntityKind::CourseEnrollments,
                format!("{user_id}-{course_id}"),
                reason,
            );
        }
        let created = at(&mut rng, 500);
        let updated = created + chrono::Duration::seconds(rng.random_range(0..90 * 86_400));
        let completed = status == "completed";
        let validity_end = match n % 13 {
            3 => {
                bad.awkward(EntityKind::CourseEnrollments);
                Value::String(ZERO_DATE.into())
            }
            7 => date(updated + chrono::Duration::days(365)),
            _ => Value::Null,
        };
        // Serialized at once: a million items as JSON values would take gigabytes.
        course_enrollments.push(to_row(EntityKind::CourseEnrollments, json!({
            "user_id": user_id,
            "username": format!("user{user_id}@acme.example"),
            "course_id": course_id,
            "course_code": courses.get(course_index).and_then(|c| c.get("code")).cloned().unwrap_or(Value::Null),
            "course_type": course_types.get(course_index).copied().unwrap_or("elearning"),
            "enrollment_level": if n % 40 == 1 { "tutor" } else { "student" },
            "enrollment_status": status,
            "enrollment_created_at": date(created),
            "enrollment_date_last_updated": date(updated),
            "enrollment_completion_date": if completed { date(updated) } else { Value::String(ZERO_DATE.into()) },
            "enrollment_score": if completed { json!(rng.random_range(40..=100)) } else { json!(0) },
            "enrollment_time_spent": rng.random_range(0..20_000),
            "enrollment_validity_begin_date": Value::Null,
            "enrollment_validity_end_date": validity_end,
        })));
    }

    // Learning-plan enrollments.
    let pairs = pick_pairs(
        &mut rng,
        sizes.learning_plan_enrollments,
        sizes.users,
        sizes.learning_plans,
    );
    let mut plan_enrollments = Vec::with_capacity(pairs.len());
    for (n, (user_index, plan_index)) in pairs.into_iter().enumerate() {
        let mut user_id = 10_000 + user_index as i64;
        let mut plan_id = 500 + plan_index as i64;
        let mut status = LP_STATUSES[rng.random_range(0..LP_STATUSES.len())];
        let mut reason = None;
        if is_bad(n, sizes.learning_plan_enrollments, bad_enabled) {
            match (n / 50) % 3 {
                0 => {
                    status = "archived";
                    reason = Some("unknown_status");
                }
                1 => {
                    user_id = 900_000 + n as i64;
                    reason = Some("missing_user");
                }
                _ => {
                    plan_id = 95_000 + n as i64;
                    reason = Some("missing_learning_plan");
                }
            }
        } else if user_bad[user_index] {
            reason = Some("parent_user_invalid");
        } else if plan_bad[plan_index] {
            reason = Some("parent_learning_plan_invalid");
        }
        if let Some(reason) = reason {
            bad.add(
                EntityKind::LearningPlanEnrollments,
                format!("{user_id}-{plan_id}"),
                reason,
            );
        }
        let created = at(&mut rng, 500);
        let updated = created + chrono::Duration::seconds(rng.random_range(0..60 * 86_400));
        let percent = match status {
            "completed" => 100,
            "not_started" => 0,
            _ => rng.random_range(1..100),
        };
        // Serialized at once: a million items as JSON values would take gigabytes.
        plan_enrollments.push(to_row(EntityKind::LearningPlanEnrollments, json!({
            "learning_plan_id": plan_id,
            "learning_plan_code": plans.get(plan_index).and_then(|p| p.get("code")).cloned().unwrap_or(Value::Null),
            "user_id": user_id,
            "username": format!("user{user_id}@acme.example"),
            "enrollment_status": status,
            "enrollment_completion_percentage": percent,
            "enrollment_created_at": date(created),
            "enrollment_date_last_updated": date(updated),
            "enrollment_completion_date": if status == "completed" { date(updated) } else { Value::Null },
        })));
    }

    // Session enrollments.
    let pairs = pick_pairs(
        &mut rng,
        sizes.session_enrollments,
        sizes.users,
        session_refs.len(),
    );
    let mut session_enrollments = Vec::with_capacity(pairs.len());
    let mut session_types: BTreeMap<String, usize> = BTreeMap::new();
    for (n, (user_index, session_index)) in pairs.into_iter().enumerate() {
        let mut user_id = 10_000 + user_index as i64;
        let (session_id, course_index) = session_refs[session_index];
        let session_type = if course_types[course_index] == "webinar" {
            "webinar"
        } else {
            "classroom"
        };
        *session_types.entry(session_type.to_string()).or_default() += 1;
        let mut status = COURSE_STATUSES[rng.random_range(0..COURSE_STATUSES.len())];
        let mut reason = None;
        if is_bad(n, sizes.session_enrollments, bad_enabled) {
            if (n / 50) % 2 == 0 {
                status = "no_show";
                reason = Some("unknown_status");
            } else {
                user_id = 900_000 + n as i64;
                reason = Some("missing_user");
            }
        } else if user_bad[user_index] {
            reason = Some("parent_user_invalid");
        } else if course_bad[course_index] {
            reason = Some("parent_session_invalid");
        }
        if let Some(reason) = reason {
            bad.add(
                EntityKind::SessionEnrollments,
                format!("{user_id}-{session_id}"),
                reason,
            );
        }
        let enrolled = at(&mut rng, 500);
        let completed = status == "completed";
        let evaluation = if completed {
            if rng.random_bool(0.85) {
                json!("passed")
            } else {
                json!("failed")
            }
        } else {
            Value::Null
        };
        // Serialized at once: a million items as JSON values would take gigabytes.
        session_enrollments.push(to_row(EntityKind::SessionEnrollments, json!({
            "session_id": session_id,
            "user_id": user_id,
            "username": format!("user{user_id}@acme.example"),
            "level": "student",
            "status": status,
            "enrollment_date": date(enrolled),
            "completion_date": if completed { date(enrolled + chrono::Duration::days(3)) } else { Value::Null },
            "attendance": if completed { json!(3.0) } else { json!(0.0) },
            "evaluation_status": evaluation,
            "evaluation_score": if completed { json!(rng.random_range(50..=100)) } else { Value::Null },
        })));
    }

    let bad_counts = bad
        .bad
        .iter()
        .map(|(kind, list)| (kind.clone(), list.len()))
        .collect();
    let rows = |kind: EntityKind, items: Vec<Value>| -> Vec<(Key, Row)> {
        items.into_iter().map(|item| to_row(kind, item)).collect()
    };
    let items = vec![
        (EntityKind::Users, rows(EntityKind::Users, users)),
        (EntityKind::Courses, rows(EntityKind::Courses, courses)),
        (
            EntityKind::LearningPlans,
            rows(EntityKind::LearningPlans, plans),
        ),
        (EntityKind::Sessions, rows(EntityKind::Sessions, sessions)),
        (EntityKind::CourseEnrollments, course_enrollments),
        (EntityKind::LearningPlanEnrollments, plan_enrollments),
        (EntityKind::SessionEnrollments, session_enrollments),
    ];
    let counts = items
        .iter()
        .map(|(kind, list)| (kind.name().to_string(), list.len()))
        .collect();
    Dataset {
        items,
        summary: DatasetSummary {
            seed: params.seed,
            counts,
            course_types: type_counts,
            session_enrollment_types: session_types,
            bad: bad.bad,
            bad_counts,
            awkward_counts: bad.awkward,
        },
    }
}

/// A user's additional fields, as Docebo lists them with a user (`id`, `title`, `type`, `value`):
/// a dropdown, a text field, a date and a yes/no, derived from the user's index (the random
/// stream stays as it was), some left empty.
fn additional_fields(index: usize) -> Value {
    const REGIONS: [&str; 3] = ["EMEA", "AMER", "APAC"];
    let region = REGIONS[index % REGIONS.len()];
    let cost_centre = if index % 7 == 6 {
        Value::Null
    } else {
        Value::String(format!("CC-{:03}", 100 + index % 40))
    };
    let hired = chrono::NaiveDate::from_ymd_opt(2015, 1, 1)
        .map(|start| start + chrono::Duration::days((index * 37 % 3650) as i64))
        .map(|date| date.format("%Y-%m-%d").to_string());
    json!([
        {"id": 1, "title": "Region", "type": "dropdown", "value": region},
        {"id": 2, "title": "Cost centre", "type": "textfield", "value": cost_centre},
        {"id": 3, "title": "Hire date", "type": "date", "value": hired},
        {"id": 4, "title": "Manager", "type": "yesno", "value": if index.is_multiple_of(5) { "1" } else { "0" }},
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_has_bad_records() {
        let params = GenerateParams {
            seed: 7,
            ..GenerateParams::default()
        };
        let first = generate(&params);
        let second = generate(&params);
        assert_eq!(first.summary, second.summary);
        assert_eq!(first.items[4].1, second.items[4].1);
        assert_eq!(first.summary.counts["users"], 100);
        assert!(first.summary.bad_counts["course_enrollments"] > 0);
        assert!(first.summary.bad_counts["users"] > 0);
    }
}
