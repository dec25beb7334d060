//! One long-lived LISTEN connection per process, fanned out to every task that waits for a
//! NOTIFY. It lives outside the pool (a pooled connection, or PgBouncer in transaction mode, would
//! lose its LISTEN). NOTIFY is only a wake-up: every consumer also polls, so a notification lost
//! while the connection reconnects costs latency, never correctness.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A notification received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The channel; empty for the synthetic notification sent after a reconnect (anything may have
    /// been missed: re-check).
    pub channel: String,
    /// The payload.
    pub payload: String,
}

/// Starts listening on `channels` and returns the sender that fans notifications out (subscribe to
/// it). The task reconnects with backoff until `shutdown` is cancelled.
pub fn spawn(
    database_url: String,
    channels: &[&str],
    shutdown: CancellationToken,
) -> broadcast::Sender<Notification> {
    let (sender, _) = broadcast::channel(1024);
    let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    let task_sender = sender.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = listen_once(&database_url, &channels, &task_sender) => outcome,
            };
            if let Err(error) = outcome {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "listen connection lost");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    sender
}

async fn listen_once(
    database_url: &str,
    channels: &[String],
    sender: &broadcast::Sender<Notification>,
) -> crate::Result<()> {
    // With the TLS the URL asks for, as the pool's connections.
    let (client, mut connection) = crate::tls::connect(database_url).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = async {
        for channel in channels {
            client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await?;
        }
        Ok::<_, crate::Error>(())
    };
    // The connection must be polled while the LISTEN statements run.
    let mut listen = std::pin::pin!(listen);
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            }
        }
    }
    // Tell consumers to re-check: anything sent while we were not listening was missed.
    let _ = sender.send(Notification {
        channel: String::new(),
        payload: String::new(),
    });
    while let Some(message) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(notification) = message? {
            let _ = sender.send(Notification {
                channel: notification.channel().to_string(),
                payload: notification.payload().to_string(),
            });
        }
    }
    Ok(())
}
