// Proves the Docebo simulator's OAuth2 grants, list envelope, paging, cursor, filters, errors, rate limit, faults and control API over real HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{client, docebo_get, docebo_token};
use learnsync_sim::{DoceboConfig, DoceboSim, EntityKind, FailNext, Faults, GenerateParams};
use serde_json::{Value, json};

async fn sim() -> DoceboSim {
    DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: None,
        ..DoceboConfig::default()
    })
    .await
    .unwrap()
}

fn small() -> GenerateParams {
    GenerateParams {
        seed: 42,
        users: Some(60),
        courses: Some(20),
        learning_plans: Some(5),
        course_enrollments: Some(300),
        learning_plan_enrollments: Some(50),
        session_enrollments: Some(80),
        ..GenerateParams::default()
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DoceboSim>();
    assert_send_sync::<learnsync_sim::SalesforceSim>();
}

#[tokio::test]
async fn oauth_grants_and_failures() {
    let sim = sim().await;
    let http = client();
    let url = format!("{}/oauth2/token", sim.base_url());
    let config = sim.config().clone();

    let body: Value = http
        .post(&url)
        .form(&[
            ("grant_type", "password"),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("username", &config.username),
            ("password", &config.password),
            ("scope", "api"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(access.len(), 40);
    assert!(access.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "api");
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh.len(), 40);

    let refreshed = http
        .post(&url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("refresh_token", &refresh),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let refreshed: Value = refreshed.json().await.unwrap();
    assert_ne!(refreshed["access_token"], body["access_token"]);

    // A refresh token is single-use.
    let reused = http
        .post(&url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("refresh_token", &refresh),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 400);
    assert_eq!(
        reused.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    let bad_secret = http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &config.client_id),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_secret.status(), 401);
    let error: Value = bad_secret.json().await.unwrap();
    assert_eq!(error["error"], "invalid_client");
    assert!(error["error_description"].is_string());

    let bad_password = http
        .post(&url)
        .form(&[
            ("grant_type", "password"),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("username", &config.username),
            ("password", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_password.status(), 400);
    assert_eq!(
        bad_password.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    let bad_grant = http
        .post(&url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_grant.status(), 400);
    assert_eq!(
        bad_grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn unknown_and_expired_tokens_get_401() {
    let sim = sim().await;
    let http = client();
    let (status, body) = docebo_get(
        &http,
        &sim,
        "0123456789abcdef0123456789abcdef01234567",
        "/manage/v1/user",
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["name"], "Unauthorized");
    assert_eq!(body["status"], 401);
    assert_eq!(body["code"], 0);
    assert!(body["message"].is_string());

    let token = docebo_token(&http, &sim).await;
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 200);
    // An hour and a bit later the token has expired.
    sim.set_clock_offset(3601);
    let (status, body) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 401);
    assert_eq!(body["status"], 401);

    // Token expiry after N calls (fault).
    sim.set_clock_offset(0);
    let token = docebo_token(&http, &sim).await;
    sim.set_faults(Faults {
        expire_tokens_after_calls: Some(2),
        ..Faults::default()
    });
    for _ in 0..2 {
        let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
        assert_eq!(status, 200);
    }
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn envelope_paging_and_empty_page() {
    let sim = sim().await;
    let summary = sim.generate(&small());
    let http = client();
    let token = docebo_token(&http, &sim).await;
    let users = summary.counts["users"];
    assert_eq!(users, 60);

    let (status, body) =
        docebo_get(&http, &sim, &token, "/manage/v1/user?page=1&page_size=25").await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["_links"], json!([]));
    let data = &body["data"];
    assert_eq!(data["count"], 25);
    assert_eq!(data["items"].as_array().unwrap().len(), 25);
    assert_eq!(data["has_more_data"], true);
    assert_eq!(data["current_page"], 1);
    assert_eq!(data["current_page_size"], 25);
    assert_eq!(data["total_page_count"], 3);
    assert_eq!(data["total_count"], 60);
    assert!(data.get("cursor").is_none());
    // User lists send ids as strings.
    assert!(data["items"][0]["user_id"].is_string());

    let mut seen = std::collections::HashSet::new();
    let mut last_update = String::new();
    for page in 1..=3 {
        let (_, body) = docebo_get(
            &http,
            &sim,
            &token,
            &format!("/manage/v1/user?page={page}&page_size=25"),
        )
        .await;
        for item in body["data"]["items"].as_array().unwrap() {
            assert!(seen.insert(item["user_id"].as_str().unwrap().to_string()));
            let updated = item["last_update"].as_str().unwrap().to_string();
            assert_eq!(updated.len(), 19, "YYYY-MM-DD HH:MM:SS");
            assert!(updated >= last_update, "sorted by last update");
            last_update = updated;
        }
        assert_eq!(body["data"]["has_more_data"], page < 3);
    }
    assert_eq!(seen.len(), users);
    let (_, body) = docebo_get(&http, &sim, &token, "/manage/v1/user?page=4&page_size=25").await;
    assert_eq!(body["data"]["items"], json!([]));
    assert_eq!(body["data"]["has_more_data"], false);

    // page_size above the maximum is clamped; the default is 10.
    let (_, body) = docebo_get(&http, &sim, &token, "/manage/v1/user?page_size=5000").await;
    assert_eq!(body["data"]["current_page_size"], 200);
    let (_, body) = docebo_get(&http, &sim, &token, "/learn/v1/courses").await;
    assert_eq!(body["data"]["count"], 10);
    assert!(body["data"]["items"][0]["id_course"].is_number());

    // Descending order.
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/learn/v1/courses?sort_by=last_update&sort_by_direction=desc&page_size=200",
    )
    .await;
    let dates: Vec<&str> = body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["date_last_updated"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]));

    // Bad parameters use the error body.
    let (status, body) = docebo_get(&http, &sim, &token, "/manage/v1/user?page=abc").await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], 400);
    assert_eq!(body["name"], "Bad Request");
}

#[tokio::test]
async fn array_filters_updated_from_and_cursor() {
    let sim = sim().await;
    sim.generate(&small());
    let http = client();
    let token = docebo_token(&http, &sim).await;

    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?course_id[]=100&course_id[]=101&page_size=200",
    )
    .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items
            .iter()
            .all(|i| i["course_id"] == 100 || i["course_id"] == 101)
    );
    assert_eq!(
        body["data"]["total_count"].as_u64().unwrap() as usize,
        items.len()
    );
    let expected = sim
        .items(EntityKind::CourseEnrollments)
        .iter()
        .filter(|i| i["course_id"] == 100 || i["course_id"] == 101)
        .count();
    assert_eq!(items.len(), expected);

    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?user_id%5B%5D=10001&page_size=200",
    )
    .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert!(items.iter().all(|i| i["user_id"] == 10001));

    // updated_from keeps only items changed at or after the time.
    let all = sim.items(EntityKind::CourseEnrollments);
    let middle = all[all.len() / 2]["enrollment_date_last_updated"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        &format!(
            "/course/v1/courses/enrollments?page_size=200&updated_from={}",
            middle.replace(' ', "%20")
        ),
    )
    .await;
    let expected = all
        .iter()
        .filter(|i| i["enrollment_date_last_updated"].as_str().unwrap() >= middle.as_str())
        .count();
    assert_eq!(
        body["data"]["total_count"].as_u64().unwrap() as usize,
        expected
    );
    assert!(
        body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["enrollment_date_last_updated"].as_str().unwrap() >= middle.as_str())
    );

    // Cursor mode reads everything exactly once, even while data changes.
    let mut cursor: Option<String> = None;
    let mut keys = std::collections::HashSet::new();
    let mut seen_items = 0;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/course/v1/courses/enrollments?get_cursor=1&page_size=100".to_string(),
            Some(c) => {
                format!("/course/v1/courses/enrollments?get_cursor=1&page_size=100&cursor={c}")
            }
        };
        let (status, body) = docebo_get(&http, &sim, &token, &path).await;
        assert_eq!(status, 200);
        for item in body["data"]["items"].as_array().unwrap() {
            keys.insert(format!("{}-{}", item["user_id"], item["course_id"]));
            seen_items += 1;
        }
        if pages == 0 {
            // A change during the read moves the record to the end: it is seen again there, once.
            let first = &all[0];
            let key = format!("{}-{}", first["user_id"], first["course_id"]);
            sim.update(
                EntityKind::CourseEnrollments,
                &key,
                json!({"enrollment_score": 99}),
            )
            .unwrap();
        }
        pages += 1;
        cursor = body["data"]["cursor"].as_str().map(str::to_string);
        assert!(cursor.is_some());
        if body["data"]["has_more_data"] == false {
            break;
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(keys.len(), all.len());
    assert_eq!(
        seen_items,
        all.len() + 1,
        "the changed record is read once more, at the end"
    );

    let (status, _) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?cursor=%%%",
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn sessions_rosters_and_learning_plans() {
    let sim = sim().await;
    let summary = sim.generate(&small());
    let http = client();
    let token = docebo_token(&http, &sim).await;
    let sessions = sim.items(EntityKind::Sessions);
    assert_eq!(sessions.len(), summary.counts["sessions"]);
    let course_id = sessions[0]["course_id"].as_i64().unwrap();
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        &format!("/course/v1/courses/{course_id}/sessions?page_size=200"),
    )
    .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "two sessions per classroom/webinar course");
    assert!(items.iter().all(|s| s["course_id"] == course_id));

    let roster_total: usize = {
        let mut total = 0;
        for session in &sessions {
            let id = session["id"].as_i64().unwrap();
            let (_, body) = docebo_get(
                &http,
                &sim,
                &token,
                &format!("/course/v1/sessions/{id}/enrollments?page_size=200"),
            )
            .await;
            total += body["data"]["total_count"].as_u64().unwrap() as usize;
        }
        total
    };
    assert_eq!(roster_total, summary.counts["session_enrollments"]);
    assert_eq!(
        summary.session_enrollment_types.values().sum::<usize>(),
        summary.counts["session_enrollments"]
    );

    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/learningplan/v1/learningplans?page_size=200",
    )
    .await;
    assert_eq!(body["data"]["total_count"], 5);
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/learningplan/v1/learningplans/enrollments?learning_plan_id[]=500&page_size=200",
    )
    .await;
    assert!(
        body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["learning_plan_id"] == 500)
    );
}

#[tokio::test]
async fn generated_data_is_deterministic_with_awkward_records() {
    let sim = sim().await;
    let first = sim.generate(&small());
    let items_first = sim.items(EntityKind::CourseEnrollments);
    let second = sim.generate(&small());
    assert_eq!(first, second);
    assert_eq!(items_first, sim.items(EntityKind::CourseEnrollments));
    assert_eq!(first.course_types.len(), 3);
    for kind in [
        "users",
        "courses",
        "course_enrollments",
        "learning_plan_enrollments",
        "session_enrollments",
    ] {
        assert!(
            first.bad_counts.get(kind).copied().unwrap_or(0) > 0,
            "{kind} has bad records"
        );
        assert_eq!(first.bad_counts[kind], first.bad[kind].len());
    }
    let reasons: Vec<&str> = first.bad["course_enrollments"]
        .iter()
        .map(|b| b.reason.as_str())
        .collect();
    for reason in [
        "unknown_status",
        "missing_user",
        "missing_course",
        "parent_user_invalid",
    ] {
        assert!(reasons.contains(&reason), "{reason} in {reasons:?}");
    }
    let users = sim.items(EntityKind::Users);
    assert!(
        users
            .iter()
            .any(|u| u["first_name"].as_str().unwrap().chars().count() > 80)
    );
    assert!(
        users
            .iter()
            .any(|u| !u["last_name"].as_str().unwrap().is_ascii())
    );
    assert!(
        users
            .iter()
            .any(|u| u["creation_date"] == "0000-00-00 00:00:00")
    );
    assert!(users.iter().any(|u| u["creation_date"].is_null()));
    let courses = sim.items(EntityKind::Courses);
    assert!(
        courses
            .iter()
            .any(|c| c["code"].as_str().unwrap().len() > 100)
    );
    let bad_user = &first.bad["users"][0];
    assert_eq!(bad_user.reason, "first_name_too_long");

    // The same summary comes from the control API.
    let http = client();
    let summary: Value = http
        .get(format!("{}/__sim/summary", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["counts"]["users"], 60);
    assert_eq!(summary["bad_counts"]["users"], first.bad_counts["users"]);
    // A different seed gives different data.
    let third = sim.generate(&GenerateParams {
        seed: 43,
        ..small()
    });
    assert_eq!(third.counts, first.counts);
    assert_ne!(items_first, sim.items(EntityKind::CourseEnrollments));
}

#[tokio::test]
async fn leaky_bucket_rate_limit_and_overload() {
    let sim = DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: Some(5),
        ..DoceboConfig::default()
    })
    .await
    .unwrap();
    let http = client();
    let token = docebo_token(&http, &sim).await;
    for _ in 0..5 {
        let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
        assert_eq!(status, 200);
    }
    let (status, body) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 429);
    assert_eq!(body["status"], 429);
    // Turning the limit off (benchmarks) lets calls through again.
    sim.set_rate_limit(None);
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 200);

    // 503 burst, then normal again.
    sim.set_faults(Faults {
        fail_next: Some(FailNext {
            status: 503,
            count: 2,
        }),
        ..Faults::default()
    });
    for _ in 0..2 {
        let (status, body) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], 503);
    }
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 200);

    // Faults over the control API: a share of 1.0 fails everything with 429.
    let response = http
        .post(format!("{}/__sim/faults", sim.base_url()))
        .json(&json!({"fail_share": {"status": 429, "share": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 429);
    http.delete(format!("{}/__sim/faults", sim.base_url()))
        .send()
        .await
        .unwrap();

    // Latency.
    sim.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let (status, _) = docebo_get(&http, &sim, &token, "/manage/v1/user").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn malformed_items_fault() {
    let sim = sim().await;
    sim.generate(&small());
    let http = client();
    let token = docebo_token(&http, &sim).await;
    sim.set_faults(Faults {
        malformed_pages: 1,
        ..Faults::default()
    });
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?page_size=5",
    )
    .await;
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[5]["user_id"], "abc");
    assert!(items[5].get("course_id").is_none());
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?page_size=5",
    )
    .await;
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn control_api_changes_records_and_counts_calls() {
    let sim = sim().await;
    let http = client();
    let base = sim.base_url().to_string();
    let summary: Value = http
        .post(format!("{base}/__sim/generate"))
        .json(&json!({"seed": 1, "users": 10, "courses": 4, "learning_plans": 1, "course_enrollments": 20, "learning_plan_enrollments": 5, "session_enrollments": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["counts"]["course_enrollments"], 20);
    let token = docebo_token(&http, &sim).await;

    let created = http
        .post(format!("{base}/__sim/records/course_enrollments"))
        .json(&json!({"user_id": 10000, "username": "u", "course_id": 555, "enrollment_status": "subscribed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert!(created["enrollment_date_last_updated"].is_string());
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?course_id[]=555",
    )
    .await;
    assert_eq!(body["data"]["total_count"], 1);

    sim.set_clock_offset(86_400);
    // The old token expired with the clock jump.
    let token = docebo_token(&http, &sim).await;
    let updated = http
        .patch(format!("{base}/__sim/records/course_enrollments/10000-555"))
        .json(&json!({"enrollment_status": "completed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["enrollment_status"], "completed");
    assert!(
        updated["enrollment_date_last_updated"].as_str().unwrap()
            > created["enrollment_date_last_updated"].as_str().unwrap()
    );
    assert_eq!(
        updated["enrollment_completion_date"],
        updated["enrollment_date_last_updated"]
    );

    let deleted = http
        .delete(format!("{base}/__sim/records/course_enrollments/10000-555"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let (_, body) = docebo_get(
        &http,
        &sim,
        &token,
        "/course/v1/courses/enrollments?course_id[]=555",
    )
    .await;
    assert_eq!(body["data"]["total_count"], 0);
    let missing = http
        .delete(format!("{base}/__sim/records/course_enrollments/10000-555"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let counters: Value = http
        .get(format!("{base}/__sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["GET /course/v1/courses/enrollments"], 2);
    assert_eq!(counters["POST /oauth2/token"], 2);
    assert_eq!(sim.counters()["GET /course/v1/courses/enrollments"], 2);

    let reset = http
        .post(format!("{base}/__sim/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(sim.summary().counts["course_enrollments"], 0);
    assert!(sim.counters().is_empty());
}
