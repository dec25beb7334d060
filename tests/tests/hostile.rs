//! Proves that hostile input cannot make large work, grow the server or starve other callers:
//! thousands of fuzzed requests on every method (random and mutated protobuf bodies, valid and
//! invalid tokens) against the server binary get no INTERNAL or UNKNOWN answer and leave its
//! memory flat; so does a flood of random method names (one metrics label, not one per name);
//! oversized repeated fields and messages are refused before anything reads them; a token holds
//! a bounded number of log streams, whose followers share one poll per connection and still see
//! every event in order; a starved database pool sheds calls with RESOURCE_EXHAUSTED.
//! Memory is read from `/proc/<pid>/status` (VmRSS) of the server process; the figures are
//! printed (`-- --nocapture`) and recorded in BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::TestServer;

/// The `method` labels of `learnsync_grpc_requests_total` in a scrape, with their counts summed.
fn method_labels(scrape: &str) -> std::collections::BTreeMap<String, u64> {
    let mut labels = std::collections::BTreeMap::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("learnsync_grpc_requests_total{") else {
            continue;
        };
        let Some(start) = rest.find("method=\"") else {
            continue;
        };
        let method = &rest[start + 8..];
        let method = &method[..method.find('"').unwrap()];
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap_or(0);
        *labels.entry(method.to_string()).or_insert(0) += count;
    }
    labels
}

#[tokio::test]
async fn a_flood_of_unknown_method_names_adds_one_metrics_label() {
    let server = TestServer::start().await.unwrap();
    let channel = tonic::transport::Channel::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let flood = 2_000;
    for i in 0..flood {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(format!(
            "/learnsync.v1.SyncService/NoSuchMethod{i:05}"
        ))
        .unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let answer = grpc.unary(tonic::Request::new(()), path, codec).await;
        let status = answer.unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unimplemented | tonic::Code::Unauthenticated
            ),
            "{status:?}"
        );
    }
    let scrape = reqwest::get(format!("{}/metrics", server.metrics_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = method_labels(&scrape);
    assert_eq!(
        labels
            .get(learnsync_server::metrics::UNKNOWN_METHOD)
            .copied(),
        Some(flood),
        "{labels:?}"
    );
    assert!(
        labels
            .keys()
            .all(|method| method == "unknown" || method.starts_with("/")),
        "{labels:?}"
    );
    assert!(
        !labels.keys().any(|method| method.contains("NoSuchMethod")),
        "{labels:?}"
    );
}

#[tokio::test]
async fn oversized_repeated_fields_and_messages_are_refused_before_any_work() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let connection = client
        .create_connection(learnsync_client::pb::CreateConnectionRequest {
            connection: Some(learnsync_e2e::sample_connection(
                "acme",
                "https://acme.docebosaas.com",
                "https://acme.my.salesforce.com",
            )),
            request_id: String::new(),
        })
        .await
        .unwrap();

    // A hundred thousand invalid area values: one violation for the field, not one per value.
    let request = learnsync_client::pb::GetStatusRequest {
        connection_id: connection.id.clone(),
        areas: vec![99; 100_000],
    };
    let status = client.raw().get_status(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(learnsync_e2e::details::fields(&status), vec!["areas"]);
    assert!(status.message().contains("at most 16"), "{status:?}");

    // Sixteen invalid values are validated, each named.
    let request = learnsync_client::pb::GetStatusRequest {
        connection_id: "not-a-uuid".into(),
        areas: vec![99; 16],
    };
    let status = client.raw().get_status(request).await.unwrap_err();
    let fields = learnsync_e2e::details::fields(&status);
    assert_eq!(fields.len(), 17, "{fields:?}");
    assert_eq!(fields[0], "connection_id");
    assert_eq!(fields[16], "areas[15]");

    // A message over the server's limit is refused by the transport, not decoded.
    let request = learnsync_client::pb::GetStatusRequest {
        connection_id: connection.id.clone(),
        areas: vec![1; learnsync_server::MAX_REQUEST_BYTES + 1],
    };
    let status = client.raw().get_status(request).await.unwrap_err();
    assert!(
        !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
        "{status:?}"
    );
    assert_ne!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The server still answers.
    let status = client.get_status(&connection.id, &[]).await.unwrap();
    assert_eq!(status.connection_id, connection.id);
}

// ---------------------------------------------------------------------------------------------
// The server as a separate process, its memory, and a client that sends raw bytes.
// ---------------------------------------------------------------------------------------------

mod process {
    use std::path::PathBuf;
    use std::time::Duration;

    use learnsync_e2e::tokens;

    /// The `learnsync-server` binary of this build, beside the test binaries (target/<profile>/).
    fn binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
        let path = dir.join("learnsync-server");
        assert!(
            path.exists(),
            "{} is not built: run `cargo build -p learnsync-server` first (scripts/test.sh does)",
            path.display()
        );
        path
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// A `learnsync-server` process on a fresh database of its own, killed when dropped.
    pub struct ServerProcess {
        child: tokio::process::Child,
        /// `http://127.0.0.1:<port>` of gRPC.
        pub endpoint: String,
        /// `http://127.0.0.1:<port>` of the metrics.
        pub metrics_base: String,
        /// The database the server uses.
        pub database_url: String,
    }

    impl ServerProcess {
        /// Starts the binary with the harness's tokens and `extra` environment, and waits until it
        /// answers.
        pub async fn start(extra: &[(&str, &str)]) -> ServerProcess {
            learnsync_e2e::init_tracing();
            let database_url = learnsync_store::testing::fresh_database().await.unwrap();
            let (grpc, metrics) = (free_port(), free_port());
            let tokens = format!(
                "operator={},tenant:acme={},tenant:globex={}",
                tokens::OPERATOR,
                tokens::ACME,
                tokens::GLOBEX
            );
            let mut command = tokio::process::Command::new(binary());
            command
                .env("DATABASE_URL", &database_url)
                .env("LEARNSYNC_LISTEN", format!("127.0.0.1:{grpc}"))
                .env("LEARNSYNC_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
                .env("LEARNSYNC_TOKENS", tokens)
                .env(
                    "LEARNSYNC_SECRET_KEY",
                    hex::encode(rand::random::<[u8; 32]>()),
                )
                .env(learnsync_upstream::ENV, learnsync_e2e::SIM_UPSTREAM_ALLOW)
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            for (name, value) in extra {
                command.env(name, value);
            }
            let child = command.spawn().unwrap();
            let server = ServerProcess {
                child,
                endpoint: format!("http://127.0.0.1:{grpc}"),
                metrics_base: format!("http://127.0.0.1:{metrics}"),
                database_url,
            };
            server.wait_ready().await;
            server
        }

        async fn wait_ready(&self) {
            for _ in 0..300 {
                if let Ok(mut client) =
                    learnsync_client::Client::connect(&self.endpoint, tokens::OPERATOR).await
                    && client.list_connections(1, "").await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the server process did not answer within 30 s");
        }

        /// The process's resident memory (VmRSS), in KiB.
        pub fn rss_kib(&self) -> u64 {
            let pid = self.child.id().unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }

        /// Whether the process still runs.
        pub fn alive(&mut self) -> bool {
            matches!(self.child.try_wait(), Ok(None))
        }
    }
}

/// A codec that sends and receives message bytes as they are: the fuzzer's bodies need not be
/// valid messages.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let remaining = prost::bytes::Buf::remaining(src);
        Ok(Some(
            prost::bytes::Buf::copy_to_bytes(src, remaining).to_vec(),
        ))
    }
}

/// Every method learnsync serves, as `(path, server_streaming)`, from the API's descriptors.
fn methods() -> Vec<(String, bool)> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(learnsync_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("learnsync"))
    {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    assert!(methods.len() >= 15, "{methods:?}");
    methods
}

/// Sends one call with a raw body; returns the code of its answer (a stream's first error, or OK).
async fn raw_call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &str,
    streaming: bool,
    token: Option<&str>,
    body: Vec<u8>,
) -> tonic::Code {
    use std::time::Duration;
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(30));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path.to_string()).unwrap();
    if !streaming {
        return match grpc.unary(request, path, Raw).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
    }
    let mut stream = match grpc.server_streaming(request, path, Raw).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status.code(),
    };
    // A few messages, then hang up (a following stream would wait for more).
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Err(status)) => return status.code(),
            Ok(Ok(None)) | Err(_) => break,
        }
    }
    tonic::Code::Ok
}

mod fuzz {
    use learnsync_client::pb;
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint};
    use rand::Rng as _;
    use rand::rngs::StdRng;

    /// Valid requests to mutate, aimed at real connections.
    pub fn seeds(connections: &[String]) -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        for id in connections {
            let mut connection = learnsync_e2e::sample_connection(
                "fuzz",
                "http://127.0.0.1:9/docebo",
                "http://127.0.0.1:9/salesforce",
            );
            seeds.push(
                pb::CreateConnectionRequest {
                    connection: Some(connection.clone()),
                    request_id: uuid::Uuid::new_v4().to_string(),
                }
                .encode_to_vec(),
            );
            connection.id = id.clone();
            seeds.push(
                pb::UpdateConnectionRequest {
                    connection: Some(connection),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into(), "docebo".into()],
                    }),
                    request_id: String::new(),
                }
                .encode_to_vec(),
            );
            seeds.push(
                pb::ConfigureRequest {
                    connection_id: id.clone(),
                    config: Some(pb::AreaConfig {
                        area: pb::Area::Users as i32,
                        enabled: true,
                        mode: pb::Mode::Manual as i32,
                        course_category_ids: vec![1, 2, 3],
                        ..Default::default()
                    }),
                    request_id: String::new(),
                }
                .encode_to_vec(),
            );
            seeds.push(
                pb::StartRequest {
                    connection_id: id.clone(),
                    area: pb::Area::Users as i32,
                    ..Default::default()
                }
                .encode_to_vec(),
            );
            seeds.push(
                pb::GetStatusRequest {
                    connection_id: id.clone(),
                    areas: vec![1, 2, 3],
                }
                .encode_to_vec(),
            );
            seeds.push(
                pb::StreamLogsRequest {
                    connection_id: id.clone(),
                    follow: true,
                    min_level: 2,
                    ..Default::default()
                }
                .encode_to_vec(),
            );
            seeds.push(
                pb::ListRunsRequest {
                    connection_id: id.clone(),
                    page_size: 5,
                    ..Default::default()
                }
                .encode_to_vec(),
            );
        }
        seeds
    }

    fn varint(rng: &mut StdRng) -> u64 {
        match rng.random_range(0..6) {
            0 => 0,
            1 => rng.random_range(1..5),
            2 => u64::MAX,
            3 => (-1i64) as u64,
            4 => rng.random_range(0..1_000_000),
            _ => rng.random(),
        }
    }

    fn text(rng: &mut StdRng, connections: &[String]) -> Vec<u8> {
        match rng.random_range(0..6) {
            0 => connections[rng.random_range(0..connections.len())]
                .clone()
                .into_bytes(),
            1 => uuid::Uuid::new_v4().to_string().into_bytes(),
            2 => b"http://10.0.0.1/x".to_vec(),
            3 => "é\u{0}\u{1b}[31m"
                .repeat(rng.random_range(1..50))
                .into_bytes(),
            4 => vec![0xff, 0xfe, 0x80],
            _ => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        }
    }

    /// A body in protobuf's wire format with random fields and values, nested up to `depth`.
    pub fn structured(rng: &mut StdRng, connections: &[String], depth: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.random_range(0..7) {
            let tag = rng.random_range(1..=12);
            match rng.random_range(0..5) {
                0 | 1 => {
                    encode_key(tag, WireType::Varint, &mut out);
                    encode_varint(varint(rng), &mut out);
                }
                2 => {
                    let payload = if depth < 3 && rng.random_bool(0.5) {
                        structured(rng, connections, depth + 1)
                    } else {
                        text(rng, connections)
                    };
                    encode_key(tag, WireType::LengthDelimited, &mut out);
                    encode_varint(payload.len() as u64, &mut out);
                    out.extend(payload);
                }
                3 => {
                    encode_key(tag, WireType::ThirtyTwoBit, &mut out);
                    out.extend(rng.random::<[u8; 4]>());
                }
                _ => {
                    encode_key(tag, WireType::SixtyFourBit, &mut out);
                    out.extend(rng.random::<[u8; 8]>());
                }
            }
        }
        out
    }

    /// A seed with a few random edits: bytes flipped, cut, inserted or repeated.
    pub fn mutated(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
        let mut body = seed.to_vec();
        for _ in 0..rng.random_range(1..5) {
            if body.is_empty() {
                body.push(rng.random());
                continue;
            }
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..4) {
                0 => body[at] ^= 1 << rng.random_range(0..8),
                1 => body.truncate(at),
                2 => {
                    let junk: Vec<u8> =
                        (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                    body.splice(at..at, junk);
                }
                _ => {
                    let end = (at + rng.random_range(1..32)).min(body.len());
                    let part = body[at..end].to_vec();
                    body.splice(at..at, part);
                }
            }
        }
        body
    }

    /// One request's body: random bytes, a random well-formed message, or a mutated seed.
    pub fn body(rng: &mut StdRng, seeds: &[Vec<u8>], connections: &[String]) -> Vec<u8> {
        match rng.random_range(0..10) {
            0 | 1 => (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect(),
            2..=5 => structured(rng, connections, 0),
            6 => seeds[rng.random_range(0..seeds.len())].clone(),
            _ => {
                let seed = rng.random_range(0..seeds.len());
                mutated(rng, &seeds[seed])
            }
        }
    }

    /// Whose token a call carries: the operator, a tenant, a wrong token or none.
    pub fn token(rng: &mut StdRng) -> Option<&'static str> {
        use learnsync_e2e::tokens;
        match rng.random_range(0..10) {
            0..=2 => Some(tokens::OPERATOR),
            3..=5 => Some(tokens::ACME),
            6 => Some(tokens::GLOBEX),
            7 | 8 => Some("not-a-token-of-this-server-000"),
            _ => None,
        }
    }
}

/// Memory growth allowed between the end of warm-up and the end of a flood. Before metrics
/// labelled only known methods, 20,000 random names grew the server by 33 MB; a leak of even a
/// few hundred bytes a request shows above this over the floods below.
const FLAT_KIB: u64 = 8 * 1024;

/// Sends `count` fuzzed calls from 8 concurrent callers; returns the number of answers by code
/// and of calls by method path, and the calls that got INTERNAL or UNKNOWN.
async fn fuzz_calls(
    server: &process::ServerProcess,
    connections: &[String],
    seed: u64,
    count: usize,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    use rand::{Rng as _, SeedableRng as _};
    let channel = tonic::transport::Channel::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let methods = std::sync::Arc::new(methods());
    let seeds = std::sync::Arc::new(fuzz::seeds(connections));
    let connections = std::sync::Arc::new(connections.to_vec());
    let lanes = 8;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (methods, seeds, connections) = (methods.clone(), seeds.clone(), connections.clone());
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + lane);
            let mut codes = std::collections::BTreeMap::<String, usize>::new();
            let mut bad = Vec::new();
            for _ in 0..count / lanes as usize {
                let (path, streaming) = &methods[rng.random_range(0..methods.len())];
                let body = fuzz::body(&mut rng, &seeds, &connections);
                let token = fuzz::token(&mut rng);
                let code = raw_call(&mut grpc, path, *streaming, token, body.clone()).await;
                *codes.entry(format!("{code:?}")).or_default() += 1;
                // Calls per method too, under the method's path.
                *codes.entry(path.clone()).or_default() += 1;
                if matches!(code, tonic::Code::Internal | tonic::Code::Unknown) {
                    bad.push(format!("{code:?} {path} {}", hex::encode(&body)));
                }
            }
            (codes, bad)
        }));
    }
    let mut codes = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for task in tasks {
        let (lane_codes, lane_bad) = task.await.unwrap();
        for (code, n) in lane_codes {
            *codes.entry(code).or_default() += n;
        }
        bad.extend(lane_bad);
    }
    (codes, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_on_every_method_get_no_internal_answer_and_leave_memory_flat() {
    let mut server = process::ServerProcess::start(&[]).await;
    let mut operator =
        learnsync_client::Client::connect(&server.endpoint, learnsync_e2e::tokens::OPERATOR)
            .await
            .unwrap();
    let mut acme = learnsync_client::Client::connect(&server.endpoint, learnsync_e2e::tokens::ACME)
        .await
        .unwrap();
    let connections = vec![
        learnsync_e2e::create_sample(&mut operator, "operator's")
            .await
            .unwrap(),
        learnsync_e2e::create_sample(&mut acme, "acme's")
            .await
            .unwrap(),
    ];
    let (warm_codes, warm_bad) = fuzz_calls(&server, &connections, 1, 1_000).await;
    let before = server.rss_kib();
    let (codes, bad) = fuzz_calls(&server, &connections, 2, 6_000).await;
    let after = server.rss_kib();
    println!(
        "fuzz: 1,000 warm-up calls then 6,000 calls on {} methods; server VmRSS {before} KiB \
         after warm-up, {after} KiB after ({:+} KiB); answers {codes:?}",
        methods().len(),
        after as i64 - before as i64
    );
    assert!(
        warm_bad.is_empty() && bad.is_empty(),
        "{warm_bad:#?} {bad:#?} {warm_codes:?}"
    );
    assert!(server.alive(), "the server process ended");
    assert!(
        codes.get("Ok").copied().unwrap_or(0) > 0
            && codes.get("InvalidArgument").copied().unwrap_or(0) > 0,
        "the fuzz reached the handlers: {codes:?}"
    );
    for (path, _) in methods() {
        let calls = codes.get(&path).copied().unwrap_or(0);
        assert!(calls >= 200, "{path} got {calls} fuzzed calls");
    }
    assert!(
        after <= before + FLAT_KIB,
        "server memory grew from {before} KiB to {after} KiB"
    );
    // It still serves its callers (the fuzz may have deleted or changed the connections above).
    let id = learnsync_e2e::create_sample(&mut acme, "after")
        .await
        .unwrap();
    let status = acme.get_status(&id, &[]).await.unwrap();
    assert_eq!(status.connection_id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_method_names_leaves_the_server_process_memory_flat() {
    use rand::{Rng as _, SeedableRng as _};
    let mut server = process::ServerProcess::start(&[]).await;
    let channel = tonic::transport::Channel::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let flood = |seed: u64, count: usize| {
        let channel = channel.clone();
        async move {
            let mut tasks = Vec::new();
            for lane in 0..8u64 {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + lane);
                    for _ in 0..count / 8 {
                        let name: String = (0..rng.random_range(1..40))
                            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
                            .collect();
                        let path = match rng.random_range(0..3) {
                            0 => format!("/learnsync.v1.SyncService/{name}"),
                            1 => format!("/{name}.Service/{name}"),
                            _ => format!("/{name}"),
                        };
                        let token = fuzz::token(&mut rng);
                        let code =
                            raw_call(&mut grpc, &path, rng.random_bool(0.2), token, vec![]).await;
                        assert!(
                            matches!(
                                code,
                                tonic::Code::Unimplemented | tonic::Code::Unauthenticated
                            ),
                            "{path}: {code:?}"
                        );
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    flood(1, 2_000).await;
    let before = server.rss_kib();
    flood(2, 16_000).await;
    let after = server.rss_kib();
    println!(
        "method flood: 2,000 warm-up calls then 16,000 calls to random method names; server \
         VmRSS {before} KiB after warm-up, {after} KiB after ({:+} KiB)",
        after as i64 - before as i64
    );
    assert!(server.alive(), "the server process ended");
    assert!(
        after <= before + FLAT_KIB,
        "server memory grew from {before} KiB to {after} KiB"
    );
    let scrape = reqwest::get(format!("{}/metrics", server.metrics_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = method_labels(&scrape);
    assert_eq!(
        labels
            .get(learnsync_server::metrics::UNKNOWN_METHOD)
            .copied(),
        Some(18_000),
        "{labels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holds_a_bounded_number_of_log_streams_and_a_closed_one_frees_its_place() {
    use learnsync_client::pb;
    use learnsync_e2e::tokens;
    let database_url = learnsync_store::testing::fresh_database().await.unwrap();
    let server = TestServer::start_with(
        &database_url,
        learnsync_store::secrets::Cipher::random(),
        |options| options.max_log_streams = 3,
    )
    .await
    .unwrap();
    let mut acme = server.client(tokens::ACME).await.unwrap();
    let mut globex = server.client(tokens::GLOBEX).await.unwrap();
    let acme_id = learnsync_e2e::create_sample(&mut acme, "acme")
        .await
        .unwrap();
    let globex_id = learnsync_e2e::create_sample(&mut globex, "globex")
        .await
        .unwrap();
    let follow = |id: &str| pb::StreamLogsRequest {
        connection_id: id.to_string(),
        follow: true,
        ..Default::default()
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(acme.stream_logs(follow(&acme_id)).await.unwrap());
    }
    let refused = acme.stream_logs(follow(&acme_id)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("3 open log streams"),
        "{refused:?}"
    );
    assert_eq!(
        learnsync_e2e::details::reason(&refused).unwrap().0,
        "TOO_MANY_LOG_STREAMS"
    );
    // Another tenant's streams are its own.
    let _globex_stream = globex.stream_logs(follow(&globex_id)).await.unwrap();
    // A stream the caller closes frees its place.
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..50 {
        match acme.stream_logs(follow(&acme_id)).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        reopened.is_some(),
        "the closed stream's place was not freed"
    );
    server.stop().await.unwrap();
}

/// Collects a following stream's sequence numbers until `last`, after not reading for `pause`
/// ms (a follower that does not read falls behind the shared poll's broadcast).
fn follow_until(
    mut stream: tonic::Streaming<learnsync_client::pb::LogEvent>,
    last: i64,
    pause: u64,
) -> tokio::task::JoinHandle<Vec<i64>> {
    use futures::StreamExt as _;
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        let mut seen = Vec::new();
        while seen.last().is_none_or(|s| *s < last) {
            let event = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
                .await
                .expect("events keep coming")
                .unwrap()
                .unwrap();
            seen.push(event.sequence);
        }
        seen
    })
}

/// A following stream opened on small HTTP/2 windows: it cannot buffer the log, so a reader
/// that pauses makes its follower fall behind the broadcast and catch up from Postgres.
async fn narrow_stream(
    endpoint: &str,
    request: learnsync_client::pb::StreamLogsRequest,
) -> tonic::Streaming<learnsync_client::pb::LogEvent> {
    let narrow = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .initial_stream_window_size(Some(8 << 10))
        .initial_connection_window_size(Some(8 << 10))
        .connect()
        .await
        .unwrap();
    let mut client = learnsync_client::pb::sync_service_client::SyncServiceClient::new(narrow);
    let mut request = tonic::Request::new(request);
    let bearer = format!("Bearer {}", learnsync_e2e::tokens::OPERATOR);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    client.stream_logs(request).await.unwrap().into_inner()
}

/// Appends events 1 to `total` to a connection's log in batches of varying size; every fifth
/// is a warning, the rest debug.
fn write_log(
    store: learnsync_store::Store,
    connection: uuid::Uuid,
    total: i64,
) -> tokio::task::JoinHandle<()> {
    use learnsync_store::model::{LogLevel, NewLogEvent};
    tokio::spawn(async move {
        let (mut next, mut size) = (1, 1);
        while next <= total {
            let batch: Vec<NewLogEvent> = (next..(next + size).min(total + 1))
                .map(|sequence| {
                    let level = if sequence % 5 == 0 {
                        LogLevel::Warn
                    } else {
                        LogLevel::Debug
                    };
                    NewLogEvent::new(level, format!("event {sequence}"))
                })
                .collect();
            let conn = store.conn().await.unwrap();
            let given = learnsync_store::logs::append(&conn, connection, &batch)
                .await
                .unwrap();
            next = given.last().unwrap() + 1;
            size = size % 97 + 13;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_sharing_a_connections_poll_see_every_event_in_order() {
    use learnsync_client::pb;
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = learnsync_e2e::create_sample(&mut client, "acme")
        .await
        .unwrap();
    let request = |min_level: i32| pb::StreamLogsRequest {
        connection_id: id.clone(),
        follow: true,
        min_level,
        ..Default::default()
    };
    let total: i64 = 3_000;
    // (every how many events a follower selects, the follower)
    let mut followers = Vec::new();
    for _ in 0..2 {
        let stream = client.stream_logs(request(0)).await.unwrap();
        followers.push((1, follow_until(stream, total, 0)));
    }
    let slow = narrow_stream(&server.endpoint, request(0)).await;
    followers.push((1, follow_until(slow, total, 3_000)));
    // Warnings only: every fifth event.
    let warnings = client.stream_logs(request(3)).await.unwrap();
    followers.push((5, follow_until(warnings, total, 0)));
    let writer = write_log(server.store.clone(), id.parse().unwrap(), total);
    // One joins while events flow: it catches up, then takes the shared poll's events.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let late = client.stream_logs(request(0)).await.unwrap();
    followers.push((1, follow_until(late, total, 0)));
    writer.await.unwrap();
    for (step, follower) in followers {
        let seen = follower.await.unwrap();
        let expected: Vec<i64> = (1..=total).filter(|s| s % step == 0).collect();
        assert_eq!(seen.len(), expected.len(), "every selected event, once");
        assert_eq!(seen, expected, "gapless and in order");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_database_pool_sheds_calls_with_resource_exhausted_and_recovers() {
    use learnsync_e2e::tokens;
    use learnsync_store::GenericClient as _;
    use tonic_types::StatusExt as _;
    let server = process::ServerProcess::start(&[
        ("LEARNSYNC_DB_POOL_SIZE", "2"),
        ("LEARNSYNC_DB_ACQUIRE_WAIT", "300ms"),
    ])
    .await;
    let mut client = learnsync_client::Client::connect(&server.endpoint, tokens::OPERATOR)
        .await
        .unwrap();
    let id = learnsync_e2e::create_sample(&mut client, "acme")
        .await
        .unwrap();
    // A session of its own holds the runs table: every call that reads runs waits, holding its
    // pooled connection, until the pool has none left.
    let store = learnsync_store::Store::connect(&learnsync_store::Options {
        database_url: server.database_url.clone(),
        max_connections: 2,
    })
    .unwrap();
    let mut holder = store.conn().await.unwrap();
    let lock = holder.transaction().await.unwrap();
    learnsync_store::testing::lock_runs(&lock).await.unwrap();
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let mut client = client.clone();
        let id = id.clone();
        waiting.push(tokio::spawn(
            async move { client.get_status(&id, &[]).await },
        ));
    }
    let observer = store.conn().await.unwrap();
    for _ in 0..100 {
        if learnsync_store::testing::lock_waiters(&observer)
            .await
            .unwrap()
            >= 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        learnsync_store::testing::lock_waiters(&observer)
            .await
            .unwrap()
            >= 2,
        "both pooled connections wait on the lock"
    );
    let shed = client.get_connection(&id).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert_eq!(
        learnsync_e2e::details::reason(&shed).unwrap().0,
        "SERVER_BUSY"
    );
    assert!(shed.get_details_retry_info().is_some(), "{shed:?}");
    assert!(shed.message().contains("retry later"), "{shed:?}");
    lock.rollback().await.unwrap();
    for call in waiting {
        match call.await.unwrap() {
            Ok(status) => assert_eq!(status.connection_id, id),
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
        }
    }
    // Once the pool has room again, calls are served.
    let connection = client.get_connection(&id).await.unwrap();
    assert_eq!(connection.id, id);
    drop(observer);
    drop(holder);
}

/// Serves `router` on 127.0.0.1, port 0; returns `http://<address>`.
async fn serve_upstream(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// A Docebo stand-in: its token endpoint answers, and every other request gets `page`.
fn docebo_standin<H, T>(page: H) -> axum::Router
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    axum::Router::new()
        .route(
            "/oauth2/token",
            axum::routing::post(|| async {
                axum::Json(serde_json::json!({"access_token": "token", "expires_in": 3600}))
            }),
        )
        .fallback(page)
}

/// A Docebo whose pages are not JSON, cut off mid-record; returns its base URL.
async fn malformed_docebo() -> String {
    serve_upstream(docebo_standin(axum::routing::any(|| async {
        (
            [("content-type", "application/json")],
            "{\"data\": {\"items\": [{\"user_id\": 1, \"username\": \"\u{0}",
        )
    })))
    .await
}

/// A Docebo whose pages never end; returns its base URL.
async fn endless_docebo() -> String {
    serve_upstream(docebo_standin(axum::routing::any(|| async {
        let chunk = axum::body::Bytes::from(vec![b'['; 64 << 10]);
        let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from_stream(stream))
            .unwrap()
    })))
    .await
}

/// Waits (polling GetRun, at most 60 s) until a run has ended.
async fn wait_run(
    client: &mut learnsync_client::Client,
    connection: &str,
    run: &str,
) -> learnsync_client::pb::Run {
    use learnsync_client::pb::RunState;
    for _ in 0..600 {
        let run = client.get_run(connection, run).await.unwrap();
        let active = [RunState::Queued, RunState::Running, RunState::Stopping]
            .iter()
            .any(|state| *state as i32 == run.state);
        if !active {
            return run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("run {run} did not end in 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstreams_fail_their_own_jobs_and_another_tenants_jobs_on_the_same_worker_complete()
 {
    use learnsync_client::pb;
    use learnsync_e2e::{TestSystem, manual, tokens};
    let params = learnsync_sim::GenerateParams {
        seed: 11,
        users: Some(30),
        bad_records: Some(false),
        ..Default::default()
    };
    // One worker: every tenant's jobs below run on it.
    let system = TestSystem::start(&params, 1, |_| {}).await.unwrap();
    let malformed = malformed_docebo().await;
    let endless = endless_docebo().await;
    let mut acme = system.server.client(tokens::ACME).await.unwrap();
    let mut hostile = Vec::new();
    for (name, url) in [("malformed", &malformed), ("endless", &endless)] {
        let mut connection =
            learnsync_e2e::sim_connection(name, &system.docebo, &system.salesforce);
        connection.docebo.as_mut().unwrap().base_url = url.clone();
        let created = acme
            .create_connection(pb::CreateConnectionRequest {
                connection: Some(connection),
                request_id: String::new(),
            })
            .await
            .unwrap();
        acme.configure(&created.id, manual(pb::Area::Users))
            .await
            .unwrap();
        let run = acme
            .start(&created.id, pb::Area::Users, None)
            .await
            .unwrap();
        hostile.push((name, created.id, run.id));
    }
    let mut operator = system.client().await.unwrap();
    let good = &system.connection_id;
    operator
        .configure(good, manual(pb::Area::Users))
        .await
        .unwrap();
    let users = operator.start(good, pb::Area::Users, None).await.unwrap();

    let users = wait_run(&mut operator, good, &users.id).await;
    assert_eq!(users.state, pb::RunState::Succeeded as i32, "{users:#?}");
    for (name, connection, run) in &hostile {
        let run = wait_run(&mut acme, connection, run).await;
        assert_eq!(run.state, pb::RunState::Failed as i32, "{name}: {run:#?}");
        let error = &run.jobs[0].error_message;
        match *name {
            "malformed" => assert!(error.contains("not JSON"), "{error}"),
            _ => assert_eq!(error, "docebo answer larger than 16 MiB: not read"),
        }
        assert!(
            error.len() < 300 && !error.chars().any(char::is_control),
            "{error:?}"
        );
    }
    // The worker is alive after them: it runs the good tenant's next area.
    let courses = system.first_sync(manual(pb::Area::Courses)).await.unwrap();
    assert_eq!(
        courses.state,
        pb::RunState::Succeeded as i32,
        "{courses:#?}"
    );
    system.stop().await.unwrap();
}
