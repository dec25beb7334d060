// Proves that the Docebo simulator can change while a client reads it: page hooks (`/__sim/on_page`)
// that touch, delete or create an item right after a page is served, reproducing the item a
// page-number listing skips when an earlier item moves to the end; and the listing faults: a nested
// listing answering 404 for a parent that exists, and a page without `has_more_data`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, docebo_get, docebo_token};
use learnsync_sim::{
    DoceboConfig, DoceboSim, EntityKind, Faults, GenerateParams, ListFault, PageAction, PageHook,
};
use serde_json::{Value, json};

async fn sim() -> DoceboSim {
    let sim = DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: None,
        ..DoceboConfig::default()
    })
    .await
    .unwrap();
    sim.generate(&GenerateParams {
        seed: 7,
        users: Some(30),
        courses: Some(20),
        learning_plans: Some(2),
        course_enrollments: Some(100),
        learning_plan_enrollments: Some(10),
        session_enrollments: Some(40),
        ..GenerateParams::default()
    });
    sim
}

/// Reads `path` page by page (page-number mode, `sort_by=last_update asc`) and returns each page's
/// course ids.
async fn course_pages(
    http: &reqwest::Client,
    sim: &DoceboSim,
    token: &str,
    page_size: usize,
) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    for page in 1.. {
        let (status, body) = docebo_get(
            http,
            sim,
            token,
            &format!("/learn/v1/courses?sort_by=last_update&sort_by_direction=asc&page={page}&page_size={page_size}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let ids: Vec<i64> = body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id_course"].as_i64().unwrap())
            .collect();
        pages.push(ids);
        if body["data"]["has_more_data"] == false {
            return pages;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_course_touched_between_pages_is_skipped_by_a_page_number_listing() {
    let sim = sim().await;
    let http = client();
    let token = docebo_token(&http, &sim).await;
    let before: Vec<i64> = course_pages(&http, &sim, &token, 5).await.concat();
    assert_eq!(before.len(), 20);

    // After page 1 is served, an admin edits its second course.
    let touched = before[1];
    let response = http
        .post(format!("{}/__sim/on_page", sim.base_url()))
        .json(&json!({"path": "/learn/v1/courses", "page": 1,
                      "action": {"op": "update", "kind": "courses", "key": touched.to_string()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let pages = course_pages(&http, &sim, &token, 5).await;
    assert_eq!(pages[0], before[0..5], "page 1 is served before the change");
    assert_eq!(
        pages[1],
        before[6..11],
        "every later course shifted back by one: page 2 starts one further"
    );
    let read: Vec<i64> = pages.concat();
    assert_eq!(read.len(), 20, "as many items as total_count said");
    assert!(
        !read.contains(&before[5]),
        "the first course of page 2 is never read"
    );
    assert_eq!(read.iter().filter(|&&id| id == touched).count(), 2);
    assert_eq!(
        *read.last().unwrap(),
        touched,
        "the touched course moved to the end"
    );

    // The hook fired once and says so.
    let hooks: Value = http
        .get(format!("{}/__sim/on_page", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hooks[0]["fired"], true);
    assert!(hooks[0].get("error").is_none(), "{hooks}");
    let again: Vec<i64> = course_pages(&http, &sim, &token, 5).await.concat();
    let mut sorted = again.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "a fired hook does not fire again");

    // A deletion after page 2 (Rust API) shifts the rest the same way.
    sim.clear_page_hooks();
    let order = again;
    sim.on_page(PageHook {
        path: "/learn/v1/courses".into(),
        page: 2,
        action: PageAction::Delete {
            kind: EntityKind::Courses,
            key: order[0].to_string(),
        },
        fired: false,
        error: None,
    });
    let pages = course_pages(&http, &sim, &token, 5).await;
    assert_eq!(pages[2], order[11..16]);
    assert!(!pages.concat().contains(&order[10]));
    assert_eq!(sim.items(EntityKind::Courses).len(), 19);
}

#[tokio::test]
async fn hooks_fire_in_page_number_mode_only_and_report_failures() {
    let sim = sim().await;
    let http = client();
    let token = docebo_token(&http, &sim).await;
    let path = "/course/v1/courses/enrollments";
    let enrollment = &sim.items(EntityKind::CourseEnrollments)[0];
    let key = format!("{}-{}", enrollment["user_id"], enrollment["course_id"]);
    for (page, key) in [(1, key.as_str()), (2, "999999-1")] {
        sim.on_page(PageHook {
            path: path.into(),
            page,
            action: PageAction::Update {
                kind: EntityKind::CourseEnrollments,
                key: key.into(),
                patch: json!({"enrollment_score": 99}),
            },
            fired: false,
            error: None,
        });
    }
    // Cursor-mode reads never fire a hook.
    let (status, _) = docebo_get(
        &http,
        &sim,
        &token,
        &format!("{path}?get_cursor=1&page_size=10"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(sim.page_hooks().iter().all(|h| !h.fired));
    // Page-number reads do, after serving the page: the change shows from the next call.
    let (_, body) = docebo_get(&http, &sim, &token, &format!("{path}?page=1&page_size=10")).await;
    assert!(
        body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["enrollment_score"] != 99)
    );
    let hooks = sim.page_hooks();
    assert!(hooks[0].fired && !hooks[1].fired);
    let changed = sim.get(EntityKind::CourseEnrollments, &key).unwrap();
    assert_eq!(changed["enrollment_score"], 99);
    let (_, _) = docebo_get(&http, &sim, &token, &format!("{path}?page=2&page_size=10")).await;
    let hooks = sim.page_hooks();
    assert!(hooks[1].fired);
    assert!(
        hooks[1].error.as_deref().unwrap().contains("not found"),
        "{hooks:?}"
    );

    // A malformed hook is refused.
    let response = http
        .post(format!("{}/__sim/on_page", sim.base_url()))
        .json(&json!({"path": "learn/v1/courses", "page": 0, "action": {"op": "delete", "kind": "courses", "key": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    http.delete(format!("{}/__sim/on_page", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert!(sim.page_hooks().is_empty());
}

#[tokio::test]
async fn nested_listings_answer_404_for_live_parents_and_pages_lose_has_more_data() {
    let sim = sim().await;
    let http = client();
    let token = docebo_token(&http, &sim).await;
    let session = &sim.items(EntityKind::Sessions)[0];
    let course_id = session["course_id"].as_i64().unwrap();
    let session_id = session["id"].as_i64().unwrap();
    let sessions_path = format!("/course/v1/courses/{course_id}/sessions");
    let roster_path = format!("/course/v1/sessions/{session_id}/enrollments");

    let response = http
        .post(format!("{}/__sim/faults", sim.base_url()))
        .json(&json!({
            "not_found_lists": [{"path": sessions_path, "count": 2}, {"path": roster_path, "count": 1}],
            "omit_has_more_data": [{"path": "/learn/v1/courses", "count": 1}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The course and the session exist, yet their listings answer 404 while the fault lasts.
    assert!(
        sim.get(EntityKind::Courses, &course_id.to_string())
            .is_some()
    );
    for _ in 0..2 {
        let (status, body) = docebo_get(&http, &sim, &token, &sessions_path).await;
        assert_eq!(status, 404);
        assert_eq!(body["name"], "Not Found");
        assert_eq!(body["status"], 404);
    }
    let (status, body) = docebo_get(&http, &sim, &token, &sessions_path).await;
    assert_eq!(status, 200);
    assert!(!body["data"]["items"].as_array().unwrap().is_empty());
    let (status, _) = docebo_get(&http, &sim, &token, &roster_path).await;
    assert_eq!(status, 404);
    let (status, _) = docebo_get(&http, &sim, &token, &roster_path).await;
    assert_eq!(status, 200);
    // Other courses' sessions were never affected.
    let (status, _) = docebo_get(&http, &sim, &token, "/course/v1/courses/999999/sessions").await;
    assert_eq!(status, 200);

    // One page of courses comes without has_more_data, the rest of the envelope intact.
    let (status, body) = docebo_get(&http, &sim, &token, "/learn/v1/courses?page_size=5").await;
    assert_eq!(status, 200);
    assert!(body["data"].get("has_more_data").is_none(), "{body}");
    assert_eq!(body["data"]["total_count"], 20);
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 5);
    let (_, body) = docebo_get(&http, &sim, &token, "/learn/v1/courses?page_size=5").await;
    assert_eq!(body["data"]["has_more_data"], true);

    // Without a path, the fault hits the next listing whatever it is (Rust API).
    sim.set_faults(Faults {
        omit_has_more_data: vec![ListFault {
            path: None,
            count: 1,
        }],
        ..Faults::default()
    });
    let (_, body) = docebo_get(&http, &sim, &token, "/manage/v1/user?page_size=5").await;
    assert!(body["data"].get("has_more_data").is_none());
    let (_, body) = docebo_get(&http, &sim, &token, "/manage/v1/user?page_size=5").await;
    assert_eq!(body["data"]["has_more_data"], true);
}
