//! What each job kind means, in one table: its Docebo listing (flat, or courses → sessions →
//! roster), the entity it writes, its record key, whether it unenrolls, and how webhooks announce
//! its records. Code reads [`JobKind::spec`] instead of matching on kinds.

use super::{Area, JobKind};

impl JobKind {
    /// What the kind means: its Docebo listing, its entity, its keys, its webhooks.
    pub fn spec(self) -> &'static KindSpec {
        match self {
            JobKind::Users => &USERS,
            JobKind::Courses => &COURSES,
            JobKind::LearningPlans => &LEARNING_PLANS,
            JobKind::Sessions => &SESSIONS,
            JobKind::CourseEnrollments => &COURSE_ENROLLMENTS,
            JobKind::LearningPlanEnrollments => &LEARNING_PLAN_ENROLLMENTS,
            JobKind::WebinarSessionEnrollments => &WEBINAR_SESSION_ENROLLMENTS,
            JobKind::IltSessionEnrollments => &ILT_SESSION_ENROLLMENTS,
        }
    }
}

/// Job kinds travel in JSON (a webhook run's targets) by their SQL name.
impl serde::Serialize for JobKind {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for JobKind {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<JobKind, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        JobKind::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// The Docebo entities a sync reads, each mapped to one Salesforce object (the names of
/// `mapping.json`'s entities). Both session-enrollment kinds write one entity.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// Users.
    Users,
    /// Courses.
    Courses,
    /// Learning plans.
    LearningPlans,
    /// ILT and webinar sessions.
    Sessions,
    /// Course enrollments.
    CourseEnrollments,
    /// Learning-plan enrollments.
    LearningPlanEnrollments,
    /// Webinar and ILT session enrollments.
    SessionEnrollments,
}

/// The Docebo listing every course (and every nested listing) starts from.
pub const COURSES_PATH: &str = "/learn/v1/courses";

/// How a job kind's records are listed in Docebo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// One endpoint, read page by page.
    Flat {
        /// The endpoint, under the platform's base URL.
        path: &'static str,
        /// Whether to ask for cursor mode (`get_cursor=1`): pages stay consistent while data
        /// changes, which proves the listing complete for the unenrollment comparison. Docebo
        /// documents it for course enrollments; learning-plan enrollments ask too, and a listing
        /// whose answers carry no cursor is read by page number and not proven complete (so it
        /// unenrolls nothing), never trusted.
        uses_cursor: bool,
        /// Whether the courses area's category filter applies to its items.
        by_category: bool,
    },
    /// Every course (whatever its change time: a session may change without its course), then
    /// `/course/v1/courses/{id}/sessions` of the courses of the given types, and with `roster`
    /// each session's `/course/v1/sessions/{id}/enrollments`.
    Nested {
        /// The course types (lowercase `course_type`) whose sessions are read.
        course_types: &'static [&'static str],
        /// The context field that carries the course type down to each item.
        type_field: &'static str,
        /// Whether the leaves are the sessions' rosters.
        roster: bool,
    },
}

impl Listing {
    /// How many levels the listing has (courses → sessions → roster).
    pub fn depth(self) -> usize {
        match self {
            Listing::Flat { .. } => 1,
            Listing::Nested { roster: false, .. } => 2,
            Listing::Nested { roster: true, .. } => 3,
        }
    }

    /// Whether the leaves are session rosters.
    pub fn reads_rosters(self) -> bool {
        matches!(self, Listing::Nested { roster: true, .. })
    }
}

/// Which ids of a webhook run's targets name a kind's parents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookParents {
    /// Courses (course enrollments).
    Courses,
    /// Learning plans (learning-plan enrollments).
    LearningPlans,
    /// Sessions (both session-enrollment kinds: Docebo names session events "ilt" whatever the
    /// course type).
    Sessions,
}

/// How Docebo's webhooks announce a kind's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookSpec {
    /// The event names' prefix (`course.enrollment` for `course.enrollment.created`, ...).
    pub event_prefix: &'static str,
    /// The payload field holding the parent's id (the key is `{user_id}-{parent}`).
    pub parent_field: &'static str,
    /// Which target ids the parents go to.
    pub parents: WebhookParents,
    /// The flat listing's filter that limits it to those parents, when it has one.
    pub listing_filter: Option<&'static str>,
}

/// What a job kind means, in one place: the code reads this instead of matching on kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindSpec {
    /// The kind described.
    pub kind: JobKind,
    /// The area whose runs hold it.
    pub area: Area,
    /// The entity (the Salesforce object of the mapping) it writes.
    pub entity: Entity,
    /// Its Docebo listing.
    pub listing: Listing,
    /// The key template of its records, made of numeric ids (as the default mapping's `key`).
    pub key: &'static str,
    /// Whether records gone from Docebo are unenrolled in Salesforce. The scope of the comparison
    /// is the kind itself: the ledger's records of the object that this kind wrote (the two
    /// session-enrollment kinds share an object).
    pub unenrolls: bool,
    /// How webhooks announce its records (none: webhooks do not name them).
    pub webhook: Option<WebhookSpec>,
}

const USERS: KindSpec = KindSpec {
    kind: JobKind::Users,
    area: Area::Users,
    entity: Entity::Users,
    listing: Listing::Flat {
        path: "/manage/v1/user",
        uses_cursor: false,
        by_category: false,
    },
    key: "{user_id}",
    unenrolls: false,
    webhook: None,
};

const COURSES: KindSpec = KindSpec {
    kind: JobKind::Courses,
    area: Area::Courses,
    entity: Entity::Courses,
    listing: Listing::Flat {
        path: COURSES_PATH,
        uses_cursor: false,
        by_category: true,
    },
    key: "{id_course}",
    unenrolls: false,
    webhook: None,
};

const LEARNING_PLANS: KindSpec = KindSpec {
    kind: JobKind::LearningPlans,
    area: Area::Courses,
    entity: Entity::LearningPlans,
    listing: Listing::Flat {
        path: "/learningplan/v1/learningplans",
        uses_cursor: false,
        by_category: false,
    },
    key: "{learning_plan_id}",
    unenrolls: false,
    webhook: None,
};

const SESSIONS: KindSpec = KindSpec {
    kind: JobKind::Sessions,
    area: Area::Courses,
    entity: Entity::Sessions,
    listing: Listing::Nested {
        course_types: &["classroom", "webinar"],
        type_field: "_course_type",
        roster: false,
    },
    key: "{id}",
    unenrolls: false,
    webhook: None,
};

const COURSE_ENROLLMENTS: KindSpec = KindSpec {
    kind: JobKind::CourseEnrollments,
    area: Area::Enrollments,
    entity: Entity::CourseEnrollments,
    listing: Listing::Flat {
        path: "/course/v1/courses/enrollments",
        uses_cursor: true,
        by_category: false,
    },
    key: "{user_id}-{course_id}",
    unenrolls: true,
    webhook: Some(WebhookSpec {
        event_prefix: "course.enrollment",
        parent_field: "course_id",
        parents: WebhookParents::Courses,
        listing_filter: Some("course_id[]"),
    }),
};

const LEARNING_PLAN_ENROLLMENTS: KindSpec = KindSpec {
    kind: JobKind::LearningPlanEnrollments,
    area: Area::Enrollments,
    entity: Entity::LearningPlanEnrollments,
    listing: Listing::Flat {
        path: "/learningplan/v1/learningplans/enrollments",
        uses_cursor: true,
        by_category: false,
    },
    key: "{user_id}-{learning_plan_id}",
    unenrolls: true,
    webhook: Some(WebhookSpec {
        event_prefix: "learningplan.enrollment",
        parent_field: "learning_plan_id",
        parents: WebhookParents::LearningPlans,
        listing_filter: Some("learning_plan_id[]"),
    }),
};

const WEBINAR_SESSION_ENROLLMENTS: KindSpec = KindSpec {
    kind: JobKind::WebinarSessionEnrollments,
    area: Area::Enrollments,
    entity: Entity::SessionEnrollments,
    listing: Listing::Nested {
        course_types: &["webinar"],
        type_field: "_session_type",
        roster: true,
    },
    key: "{user_id}-{_session_id}",
    unenrolls: true,
    webhook: Some(WebhookSpec {
        event_prefix: "webinar.session.enrollment",
        parent_field: "session_id",
        parents: WebhookParents::Sessions,
        listing_filter: None,
    }),
};

const ILT_SESSION_ENROLLMENTS: KindSpec = KindSpec {
    kind: JobKind::IltSessionEnrollments,
    area: Area::Enrollments,
    entity: Entity::SessionEnrollments,
    listing: Listing::Nested {
        course_types: &["classroom"],
        type_field: "_session_type",
        roster: true,
    },
    key: "{user_id}-{_session_id}",
    unenrolls: true,
    webhook: Some(WebhookSpec {
        event_prefix: "ilt.session.enrollment",
        parent_field: "session_id",
        parents: WebhookParents::Sessions,
        listing_filter: None,
    }),
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_kind_is_described_once_and_belongs_to_its_area() {
        for kind in JobKind::ALL {
            let spec = kind.spec();
            assert_eq!(spec.kind, *kind);
            assert!(spec.area.jobs().iter().any(|(job, _)| job == kind));
            // Unenrollment is an enrollment matter, and webhooks name only enrollments.
            assert_eq!(spec.unenrolls, spec.area == Area::Enrollments);
            assert_eq!(spec.webhook.is_some(), spec.area == Area::Enrollments);
        }
    }

    #[test]
    fn job_kinds_travel_in_json_by_their_sql_name() {
        let value = serde_json::to_value(JobKind::IltSessionEnrollments).unwrap();
        assert_eq!(value, "ilt_session_enrollments");
        let back: JobKind = serde_json::from_value(value).unwrap();
        assert_eq!(back, JobKind::IltSessionEnrollments);
        assert!(serde_json::from_value::<JobKind>("nope".into()).is_err());
    }

    #[test]
    fn nested_listings_count_their_levels() {
        assert_eq!(JobKind::Users.spec().listing.depth(), 1);
        assert_eq!(JobKind::Sessions.spec().listing.depth(), 2);
        assert_eq!(JobKind::WebinarSessionEnrollments.spec().listing.depth(), 3);
        assert!(
            JobKind::IltSessionEnrollments
                .spec()
                .listing
                .reads_rosters()
        );
        assert!(!JobKind::Sessions.spec().listing.reads_rosters());
    }
}
