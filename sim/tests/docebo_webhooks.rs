// Proves Docebo webhooks: enrollment changes POST the matching events (single payload or grouped payloads of at most 25), retried with backoff when the target fails or is slow.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use learnsync_sim::{DoceboConfig, DoceboSim, EntityKind, WebhookStats};
use serde_json::{Value, json};

/// A webhook target that records bodies; it fails the first `fail_first` calls with 500 and sleeps
/// `delay_first` on the first call.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
    calls: Arc<AtomicU32>,
    fail_first: u32,
    delay_first: Duration,
}

async fn receive(
    State(receiver): State<Receiver>,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    let call = receiver.calls.fetch_add(1, Ordering::SeqCst);
    if call == 0 && !receiver.delay_first.is_zero() {
        tokio::time::sleep(receiver.delay_first).await;
    }
    if call < receiver.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    receiver.bodies.lock().unwrap().push(body);
    StatusCode::OK
}

async fn start_receiver(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

async fn sim() -> DoceboSim {
    sim_with_timeout(Duration::from_secs(5)).await
}

async fn sim_with_timeout(timeout: Duration) -> DoceboSim {
    DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: None,
        webhook_timeout: timeout,
        webhook_retry_base: Duration::from_millis(20),
        webhook_max_attempts: 5,
        ..DoceboConfig::default()
    })
    .await
    .unwrap()
}

async fn wait_for(receiver: &Receiver, count: usize) -> Vec<Value> {
    for _ in 0..1000 {
        let bodies = receiver.bodies.lock().unwrap().clone();
        if bodies.len() >= count {
            return bodies;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "webhooks did not arrive: {:?}",
        receiver.bodies.lock().unwrap()
    );
}

/// The statistics of the first target once it counts `delivered` deliveries: the receiver records
/// a body before it answers, so the sender learns of the delivery a moment after the body arrives.
async fn stats_once_delivered(sim: &DoceboSim, delivered: u64) -> WebhookStats {
    for _ in 0..1000 {
        let stats = sim.webhook_stats();
        if stats[0].delivered >= delivered {
            return stats[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("deliveries were not counted: {:?}", sim.webhook_stats());
}

#[tokio::test]
async fn enrollment_lifecycle_fires_events() {
    let sim = sim().await;
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    let http = reqwest::Client::new();
    let registered: Value = http
        .post(format!("{}/__sim/webhooks", sim.base_url()))
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook_id = registered["webhook_id"].as_u64().unwrap();

    sim.create(
        EntityKind::CourseEnrollments,
        json!({"user_id": 12301, "username": "jane@acme.example", "course_id": 55, "enrollment_level": "student",
               "enrollment_status": "subscribed", "enrollment_created_at": "2024-03-13 14:58:26"}),
    )
    .unwrap();
    sim.update(
        EntityKind::CourseEnrollments,
        "12301-55",
        json!({"enrollment_score": 50}),
    )
    .unwrap();
    sim.update(
        EntityKind::CourseEnrollments,
        "12301-55",
        json!({"enrollment_status": "completed"}),
    )
    .unwrap();
    sim.delete(EntityKind::CourseEnrollments, "12301-55")
        .unwrap();

    let bodies = wait_for(&receiver, 4).await;
    let events: Vec<&str> = bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "course.enrollment.created",
            "course.enrollment.updated",
            "course.enrollment.completed",
            "course.enrollment.deleted"
        ]
    );
    for body in &bodies {
        assert_eq!(body["webhook_id"], webhook_id);
        assert_eq!(body["original_domain"], "acme.docebosaas.com");
        assert_eq!(body["fired_by_batch_action"], false);
        assert!(body["message_id"].is_string());
        assert_eq!(body["payload"]["user_id"], 12301);
        assert_eq!(body["payload"]["course_id"], 55);
        assert_eq!(body["payload"]["username"], "jane@acme.example");
        assert!(body["payload"]["fired_at"].is_string());
        assert!(body.get("payloads").is_none());
    }
    assert_eq!(bodies[0]["payload"]["level"], "student");
    assert_eq!(
        bodies[0]["payload"]["enrollment_date"],
        "2024-03-13 14:58:26"
    );
    assert_eq!(bodies[2]["payload"]["status"], "completed");
    assert!(bodies[2]["payload"]["completion_date"].is_string());
    let ids: std::collections::HashSet<&str> = bodies
        .iter()
        .map(|b| b["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "each message has its own id");

    // Learning-plan, session and user variants.
    sim.create(
        EntityKind::LearningPlanEnrollments,
        json!({"user_id": 1, "learning_plan_id": 500, "enrollment_status": "in_progress"}),
    )
    .unwrap();
    sim.create(
        EntityKind::Sessions,
        json!({"id": 9000, "course_id": 77, "name": "S"}),
    )
    .unwrap();
    sim.create(
        EntityKind::SessionEnrollments,
        json!({"user_id": 1, "session_id": 9000, "status": "subscribed"}),
    )
    .unwrap();
    sim.delete(EntityKind::SessionEnrollments, "1-9000")
        .unwrap();
    sim.create(
        EntityKind::Users,
        json!({"user_id": "1", "username": "one"}),
    )
    .unwrap();
    sim.delete(EntityKind::Users, "1").unwrap();
    let bodies = wait_for(&receiver, 8).await;
    let events: Vec<&str> = bodies[4..]
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "learningplan.enrollment.created",
            "ilt.session.enrollment.created",
            "ilt.session.enrollment.deleted",
            "user.deleted"
        ]
    );
    assert_eq!(bodies[5]["payload"]["course_id"], 77);
    assert_eq!(bodies[5]["payload"]["session_id"], 9000);
    assert_eq!(stats_once_delivered(&sim, 8).await.delivered, 8);
}

#[tokio::test]
async fn batch_changes_are_grouped_by_25() {
    let sim = sim().await;
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    sim.register_webhook(&url);
    let items: Vec<Value> = (0..30)
        .map(|i| json!({"user_id": 100 + i, "course_id": 5, "enrollment_status": "subscribed"}))
        .collect();
    // Through the control API, an array creates in one batch.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/__sim/records/course_enrollments",
            sim.base_url()
        ))
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let bodies = wait_for(&receiver, 2).await;
    assert_eq!(bodies[0]["payloads"].as_array().unwrap().len(), 25);
    assert_eq!(bodies[1]["payloads"].as_array().unwrap().len(), 5);
    assert_eq!(bodies[0]["fired_by_batch_action"], true);
    assert!(bodies[0].get("payload").is_none());
    assert_eq!(bodies[0]["event"], "course.enrollment.created");
}

#[tokio::test]
async fn failing_target_is_retried_with_backoff() {
    let sim = sim().await;
    let receiver = Receiver {
        fail_first: 2,
        ..Receiver::default()
    };
    let url = start_receiver(receiver.clone()).await;
    sim.register_webhook(&url);
    let started = std::time::Instant::now();
    sim.create(
        EntityKind::CourseEnrollments,
        json!({"user_id": 1, "course_id": 2, "enrollment_status": "subscribed"}),
    )
    .unwrap();
    let bodies = wait_for(&receiver, 1).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 3);
    // Backoff 20 ms then 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(60));
    let stats = stats_once_delivered(&sim, 1).await;
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.delivered, 1);
}

#[tokio::test]
async fn slow_target_counts_as_failure() {
    let sim = sim_with_timeout(Duration::from_millis(500)).await;
    let receiver = Receiver {
        delay_first: Duration::from_millis(1500),
        ..Receiver::default()
    };
    let url = start_receiver(receiver.clone()).await;
    sim.register_webhook(&url);
    sim.create(
        EntityKind::CourseEnrollments,
        json!({"user_id": 1, "course_id": 2, "enrollment_status": "subscribed"}),
    )
    .unwrap();
    // The first delivery times out (the sender hangs up, so the receiver never finishes it) and is
    // sent again.
    let bodies = wait_for(&receiver, 1).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 2);
    let stats = stats_once_delivered(&sim, 1).await;
    assert_eq!(stats.attempts, 2);
    assert_eq!(stats.delivered, 1);
}

#[tokio::test]
async fn dead_target_is_abandoned_after_max_attempts() {
    let sim = sim().await;
    let receiver = Receiver {
        fail_first: 100,
        ..Receiver::default()
    };
    let url = start_receiver(receiver.clone()).await;
    sim.register_webhook(&url);
    sim.create(
        EntityKind::CourseEnrollments,
        json!({"user_id": 1, "course_id": 2}),
    )
    .unwrap();
    for _ in 0..1000 {
        if sim.webhook_stats()[0].abandoned == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sim.webhook_stats();
    assert_eq!(stats[0].abandoned, 1);
    assert_eq!(stats[0].attempts, 5);
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 5);
}
