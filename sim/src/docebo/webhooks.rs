//! Webhook delivery: one ordered queue per registered target, retried with exponential backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::lock;

/// One event to notify: its name (`course.enrollment.created`, ...) and its payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookEvent {
    /// Docebo event name.
    pub event: String,
    /// The event payload (Docebo's `payload` object).
    pub payload: Value,
}

/// Delivery statistics of one registered target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookStats {
    /// Id Docebo puts in `webhook_id`.
    pub webhook_id: u64,
    /// The target URL.
    pub url: String,
    /// Messages queued for it.
    pub messages: u64,
    /// POST attempts made (first tries and retries).
    pub attempts: u64,
    /// Messages acknowledged with a 2xx/3xx within the timeout.
    pub delivered: u64,
    /// Messages given up after the last retry.
    pub abandoned: u64,
}

#[derive(Debug, Default)]
struct Counts {
    messages: AtomicU64,
    attempts: AtomicU64,
    delivered: AtomicU64,
    abandoned: AtomicU64,
}

struct Target {
    id: u64,
    url: String,
    queue: mpsc::UnboundedSender<Value>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub(crate) struct DeliverySettings {
    pub timeout: Duration,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub domain: String,
}

/// The registered targets.
pub(crate) struct Webhooks {
    settings: DeliverySettings,
    client: reqwest::Client,
    targets: std::sync::Mutex<Vec<Target>>,
    next_id: AtomicU64,
    runtime: tokio::runtime::Handle,
}

/// Docebo groups at most this many events in one `payloads` message.
const MAX_GROUP: usize = 25;

impl Webhooks {
    pub fn new(settings: DeliverySettings, runtime: tokio::runtime::Handle) -> Webhooks {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .unwrap_or_default();
        Webhooks {
            settings,
            client,
            targets: std::sync::Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            runtime,
        }
    }

    /// Registers a target; returns its webhook id.
    pub fn register(&self, url: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let task = self.runtime.spawn(deliver_loop(
            self.client.clone(),
            url.clone(),
            receiver,
            counts.clone(),
            self.settings.clone(),
        ));
        lock(&self.targets).push(Target {
            id,
            url,
            queue,
            counts,
            task,
        });
        id
    }

    /// Unregisters every target (pending deliveries are dropped).
    pub fn clear(&self) {
        for target in lock(&self.targets).drain(..) {
            target.task.abort();
        }
    }

    pub fn stats(&self) -> Vec<WebhookStats> {
        lock(&self.targets)
            .iter()
            .map(|target| WebhookStats {
                webhook_id: target.id,
                url: target.url.clone(),
                messages: target.counts.messages.load(Ordering::Relaxed),
                attempts: target.counts.attempts.load(Ordering::Relaxed),
                delivered: target.counts.delivered.load(Ordering::Relaxed),
                abandoned: target.counts.abandoned.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Queues events for every target: consecutive events of the same name travel together in one
    /// `payloads` message of at most 25, a lone event as `payload`.
    pub fn fire(&self, events: Vec<WebhookEvent>) {
        if events.is_empty() {
            return;
        }
        let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
        for event in events {
            match groups.last_mut() {
                Some((name, payloads)) if *name == event.event && payloads.len() < MAX_GROUP => {
                    payloads.push(event.payload)
                }
                _ => groups.push((event.event, vec![event.payload])),
            }
        }
        let batch = groups.len() > 1 || groups.iter().any(|(_, p)| p.len() > 1);
        let targets = lock(&self.targets);
        for target in targets.iter() {
            for (name, payloads) in &groups {
                let mut body = json!({
                    "message_id": uuid::Uuid::new_v4().to_string(),
                    "webhook_id": target.id,
                    "original_domain": self.settings.domain,
                    "event": name,
                    "fired_by_batch_action": batch,
                });
                if payloads.len() == 1 {
                    body["payload"] = payloads[0].clone();
                } else {
                    body["payloads"] = Value::Array(payloads.clone());
                }
                target.counts.messages.fetch_add(1, Ordering::Relaxed);
                let _ = target.queue.send(body);
            }
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.clear();
    }
}

async fn deliver_loop(
    client: reqwest::Client,
    url: String,
    mut receiver: mpsc::UnboundedReceiver<Value>,
    counts: Arc<Counts>,
    settings: DeliverySettings,
) {
    while let Some(body) = receiver.recv().await {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            counts.attempts.fetch_add(1, Ordering::Relaxed);
            let outcome = client.post(&url).json(&body).send().await;
            let ok = matches!(&outcome, Ok(response) if response.status().is_success() || response.status().is_redirection());
            if ok {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let status = outcome.as_ref().ok().map(|r| r.status().as_u16());
            tracing::debug!(%url, attempt, ?status, "webhook delivery failed");
            if attempt >= settings.max_attempts {
                counts.abandoned.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%url, attempt, "webhook delivery abandoned");
                break;
            }
            let backoff = settings
                .retry_base
                .saturating_mul(2u32.saturating_pow(attempt - 1));
            tokio::time::sleep(backoff).await;
        }
    }
}
