//! The guarded client over real HTTP: a name that resolves to a refused address never connects
//! (the check is on the resolved address, at connect time, so DNS rebinding cannot pass it), an
//! operator's exception admits it, redirects are answered as they are, and a body over its cap
//! stops reading at the cap.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use learnsync_upstream::{BodyError, Class, Http, Policy, Refusal, read_capped, refusal_of};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A tiny HTTP/1.1 server on 127.0.0.1: `/redirect` answers 302, `/endless` streams a body that
/// never ends, anything else `ok`. Counts the connections it accepts.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let read = socket.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..read]).to_string();
                if head.starts_with("GET /redirect") {
                    let _ = socket
                        .write_all(b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/x\r\ncontent-length: 0\r\n\r\n")
                        .await;
                } else if head.starts_with("GET /endless") {
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                    while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                } else {
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (address, accepted)
}

/// DNS as a rebinding attacker would answer it: every name is 127.0.0.1.
struct Rebinding;

impl Resolve for Rebinding {
    fn resolve(&self, _name: Name) -> Resolving {
        Box::pin(async {
            let addresses: Addrs =
                Box::new(vec![SocketAddr::from(([127, 0, 0, 1], 0))].into_iter());
            Ok(addresses)
        })
    }
}

fn http(policy: &str) -> Http {
    Http::with_resolver(
        policy.parse::<Policy>().unwrap(),
        Duration::from_secs(10),
        Arc::new(Rebinding),
    )
    .unwrap()
}

#[tokio::test]
async fn a_name_resolving_to_a_refused_address_never_connects() {
    let (address, accepted) = server().await;
    let url = format!("http://rebind.example:{}/", address.port());
    let error = http("http")
        .request(reqwest::Method::GET, &url)
        .unwrap()
        .send()
        .await
        .unwrap_err();
    let refusal = refusal_of(&error).expect("the policy's refusal");
    assert!(
        matches!(
            refusal,
            Refusal::Address {
                class: Class::Loopback,
                ..
            }
        ),
        "{refusal:?}"
    );
    assert_eq!(
        refusal.to_string(),
        "rebind.example resolves to a loopback address, which this service does not allow"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a refused address was connected to"
    );

    // The operator admits the address (or the name): the same request goes through.
    for policy in ["http,127.0.0.1", "http,127.0.0.0/8", "http,*.example"] {
        let answer = http(policy)
            .request(reqwest::Method::GET, &url)
            .unwrap()
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{policy}");
    }
    // An address literal is refused before any request is built.
    let literal = format!("http://127.0.0.1:{}/", address.port());
    assert!(
        http("http")
            .request(reqwest::Method::GET, &literal)
            .is_err()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn redirects_are_answered_not_followed_and_bodies_stop_at_their_cap() {
    let (address, accepted) = server().await;
    let http = http("http,127.0.0.1");
    let base = format!("http://127.0.0.1:{}", address.port());
    let answer = http
        .request(reqwest::Method::GET, &format!("{base}/redirect"))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 302);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let endless = http
        .request(reqwest::Method::GET, &format!("{base}/endless"))
        .unwrap()
        .send()
        .await
        .unwrap();
    let error = read_capped(endless, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, BodyError::TooLarge { cap } if cap == 1 << 20),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the answer is larger than 1 MiB: not read"
    );
}
