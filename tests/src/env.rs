//! The store-level harness of the worker's tests: a fresh database, both simulators on loopback
//! ports, a connection between them inserted through the store, and real workers running
//! in-process; runs are started and read through the store, not gRPC (the tests of the worker
//! prove the worker, not the server). [`crate::TestSystem`] is the same world behind the gRPC
//! server.
// Test infrastructure: a failed setup step panics with its cause, as a test would.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use learnsync_sim::{DoceboConfig, DoceboSim, GenerateParams, SalesforceConfig, SalesforceSim};
use learnsync_store::connections::{NewConnection, SealedCredentials};
use learnsync_store::model::{Area, LogEvent, LogLevel, Mode, Run, UnenrollmentPolicy};
use learnsync_store::secrets::{
    Cipher, Credentials, DoceboCredentials, DoceboGrant, SalesforceCredentials, SalesforceGrant,
};
use learnsync_store::{Store, areas, connections, logs, runs};
use learnsync_worker::{Settings, Worker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One test's world.
pub struct Env {
    pub store: Store,
    pub cipher: Cipher,
    pub docebo: DoceboSim,
    pub salesforce: SalesforceSim,
    pub connection_id: Uuid,
}

/// How a test's world differs from the default.
pub struct EnvOptions {
    pub docebo: DoceboConfig,
    pub salesforce: SalesforceConfig,
    pub policy: UnenrollmentPolicy,
    /// Use the JWT bearer flow with this private key.
    pub jwt_private_key: Option<String>,
    /// Use Docebo's password grant.
    pub docebo_password_grant: bool,
    /// A Salesforce client secret other than the one the org accepts.
    pub salesforce_secret: Option<String>,
    /// The credentials key (random when unset).
    pub cipher_key: Option<[u8; 32]>,
    /// A Docebo base URL other than the simulator's (a stand-in endpoint).
    pub docebo_url: Option<String>,
    /// A Salesforce login URL other than the simulator's (a stand-in endpoint).
    pub salesforce_url: Option<String>,
    /// The connection's Docebo call budget (default: the simulator's default limit, 1,000).
    pub docebo_calls_per_hour: i32,
}

impl Default for EnvOptions {
    fn default() -> EnvOptions {
        EnvOptions {
            docebo: DoceboConfig::default(),
            salesforce: SalesforceConfig::default(),
            policy: UnenrollmentPolicy::MarkUnenrolled,
            jwt_private_key: None,
            docebo_password_grant: false,
            salesforce_secret: None,
            cipher_key: None,
            docebo_url: None,
            salesforce_url: None,
            docebo_calls_per_hour: 1000,
        }
    }
}

/// A worker running in-process.
pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), learnsync_worker::Error>>,
}

impl RunningWorker {
    /// Kills the worker as a crash would: no hand-back, no cleanup.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Shuts the worker down gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Settings fit for tests: short leases, fast polls and backoffs, and the upstream policy the
/// simulators need (plain http to 127.0.0.1).
pub fn test_settings(worker_id: &str) -> Settings {
    Settings {
        worker_id: worker_id.to_string(),
        concurrency: 4,
        lease: Duration::from_millis(2500),
        heartbeat: Duration::from_millis(300),
        poll_interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        // The Docebo simulator's default bucket holds the hour's allowance: so does the budget
        // (a test of the burst sets both small).
        docebo_burst: 100_000,
        docebo_pause: Duration::from_millis(100),
        salesforce_limit_pause: Duration::from_millis(500),
        call_retry_base: Duration::from_millis(20),
        shutdown_grace: Duration::from_secs(5),
        bulk_poll: Duration::from_millis(20),
        // Also the write grace a takeover waits after a lease runs out.
        http_timeout: Duration::from_secs(5),
        upstream: crate::sim_policy(),
        ..Settings::default()
    }
}

impl Env {
    /// A fresh database, both simulators, a generated platform and a connection.
    pub async fn new(params: GenerateParams) -> Env {
        Env::with(params, EnvOptions::default()).await
    }

    /// The same, with options.
    pub async fn with(params: GenerateParams, options: EnvOptions) -> Env {
        let EnvOptions {
            docebo,
            salesforce,
            policy,
            jwt_private_key,
            docebo_password_grant,
            salesforce_secret,
            cipher_key,
            docebo_url,
            salesforce_url,
            docebo_calls_per_hour,
        } = options;
        crate::init_tracing();
        let database_url = learnsync_store::testing::fresh_database().await.unwrap();
        let store = Store::connect(&learnsync_store::Options {
            database_url,
            max_connections: 24,
        })
        .unwrap();
        let docebo = DoceboSim::start(docebo).await.unwrap();
        docebo.generate(&params);
        let salesforce = SalesforceSim::start(salesforce).await.unwrap();
        let cipher = cipher_key.map_or_else(Cipher::random, |key| Cipher::new(&key));
        let connection_id = Uuid::new_v4();
        let credentials = Credentials {
            docebo: DoceboCredentials {
                base_url: docebo_url.unwrap_or_else(|| docebo.base_url().to_string()),
                client_id: docebo.config().client_id.clone(),
                client_secret: docebo.config().client_secret.clone(),
                grant: if docebo_password_grant {
                    DoceboGrant::Password {
                        username: docebo.config().username.clone(),
                        password: docebo.config().password.clone(),
                    }
                } else {
                    DoceboGrant::ClientCredentials
                },
            },
            salesforce: SalesforceCredentials {
                login_url: salesforce_url.unwrap_or_else(|| salesforce.base_url().to_string()),
                client_id: salesforce.config().client_id.clone(),
                grant: match jwt_private_key {
                    Some(private_key_pem) => SalesforceGrant::JwtBearer {
                        username: salesforce.config().username.clone(),
                        private_key_pem,
                        audience: "https://login.salesforce.com".into(),
                    },
                    None => SalesforceGrant::ClientCredentials {
                        client_secret: salesforce_secret
                            .unwrap_or_else(|| salesforce.config().client_secret.clone()),
                    },
                },
            },
        };
        let conn = store.conn().await.unwrap();
        connections::insert(
            &conn,
            &NewConnection {
                id: connection_id,
                tenant: "acme".into(),
                display_name: "acme".into(),
                credentials: SealedCredentials {
                    sealed: cipher.seal(connection_id, &credentials).unwrap(),
                    key_id: cipher.key_id().to_string(),
                    docebo_grant: credentials.docebo.grant.name().to_string(),
                    salesforce_grant: credentials.salesforce.grant.name().to_string(),
                    docebo_platform: credentials.docebo_platform(),
                },
                docebo_calls_per_hour,
                unenrollment_policy: policy,
                unenrollment_guard: Default::default(),
            },
        )
        .await
        .unwrap();
        for area in [Area::Users, Area::Courses] {
            configure(&conn, connection_id, area).await;
        }
        Env {
            store,
            cipher,
            docebo,
            salesforce,
            connection_id,
        }
    }

    /// Starts a worker in-process.
    pub fn spawn_worker(&self, settings: Settings) -> RunningWorker {
        let worker = Worker::new(settings, self.store.clone(), self.cipher.clone()).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker { shutdown, task }
    }

    /// Start (the first synchronization of an area), as the server does it.
    pub async fn start(
        &self,
        area: Area,
        timeframe: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    ) -> Run {
        let mut conn = self.store.conn().await.unwrap();
        if area == Area::Enrollments {
            configure(&conn, self.connection_id, area).await;
        }
        let tx = conn.transaction().await.unwrap();
        let run = runs::start(&tx, self.connection_id, area, timeframe, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        run
    }

    /// Resynchronize, as the server does it.
    pub async fn resynchronize(&self, area: Area, rewrite_unchanged: bool) -> Run {
        let options = runs::ResyncOptions {
            rewrite_unchanged,
            ..runs::ResyncOptions::default()
        };
        self.resynchronize_with(area, options).await
    }

    /// Resynchronize with options (a check, confirmed unenrollments), as the server does it.
    pub async fn resynchronize_with(&self, area: Area, options: runs::ResyncOptions) -> Run {
        let mut conn = self.store.conn().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        let run = runs::resynchronize(&tx, self.connection_id, area, (None, None), options, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        run
    }

    /// Stop, as the server does it.
    pub async fn stop(&self, area: Area) -> Run {
        let mut conn = self.store.conn().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        let run = runs::stop(&tx, self.connection_id, area).await.unwrap();
        tx.commit().await.unwrap();
        run
    }

    /// Reads a run.
    pub async fn run(&self, run_id: Uuid) -> Run {
        let conn = self.store.conn().await.unwrap();
        runs::get(&conn, self.connection_id, run_id).await.unwrap()
    }

    /// Waits (polling, with a deadline) until a run is final.
    pub async fn wait_final(&self, run_id: Uuid, deadline: Duration) -> Run {
        let until = Instant::now() + deadline;
        loop {
            let run = self.run(run_id).await;
            if !run.state.is_active() {
                return run;
            }
            assert!(
                Instant::now() < until,
                "run did not end in {deadline:?}: {run:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a condition on the run holds.
    pub async fn wait_until(
        &self,
        run_id: Uuid,
        deadline: Duration,
        what: &str,
        check: impl Fn(&Run) -> bool,
    ) -> Run {
        let until = Instant::now() + deadline;
        loop {
            let run = self.run(run_id).await;
            if check(&run) {
                return run;
            }
            assert!(
                Instant::now() < until,
                "{what} did not happen in {deadline:?}: {run:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log event of a run.
    pub async fn run_log(&self, run_id: Uuid) -> Vec<LogEvent> {
        let conn = self.store.conn().await.unwrap();
        let filter = logs::LogFilter {
            connection_id: self.connection_id,
            run_id: Some(run_id),
            job_id: None,
            min_level: None,
        };
        logs::read(&conn, &filter, 0, 1_000_000).await.unwrap()
    }

    /// The record keys of the error events of a run.
    pub async fn error_keys(&self, run_id: Uuid) -> BTreeSet<String> {
        self.run_log(run_id)
            .await
            .into_iter()
            .filter(|event| event.level == LogLevel::Error)
            .filter_map(|event| event.record_key)
            .collect()
    }

    /// The external ids Salesforce holds for an object (asserting none is there twice).
    pub fn salesforce_keys(&self, object: &str, external_id: &str) -> BTreeSet<String> {
        let records = self.salesforce.records(object).unwrap();
        let keys: Vec<String> = records
            .iter()
            .map(|record| record[external_id].as_str().unwrap().to_string())
            .collect();
        let unique: BTreeSet<String> = keys.iter().cloned().collect();
        assert_eq!(unique.len(), keys.len(), "{object} holds duplicates");
        unique
    }

    /// The keys Docebo holds for a kind, minus the deliberately bad ones.
    pub fn docebo_good_keys(&self, kind: &str) -> BTreeSet<String> {
        let all = self.docebo_keys(kind);
        let bad = self.docebo_bad_keys(kind);
        all.difference(&bad).cloned().collect()
    }

    /// The keys Docebo holds for a kind.
    pub fn docebo_keys(&self, kind: &str) -> BTreeSet<String> {
        let kind = learnsync_sim::EntityKind::from_name(kind).unwrap();
        self.docebo
            .items(kind)
            .iter()
            .map(|item| docebo_key(kind, item))
            .collect()
    }

    /// The keys of the deliberately bad records of a kind.
    pub fn docebo_bad_keys(&self, kind: &str) -> BTreeSet<String> {
        self.docebo
            .summary()
            .bad
            .get(kind)
            .map(|bad| bad.iter().map(|record| record.key.clone()).collect())
            .unwrap_or_default()
    }
}

fn id(item: &serde_json::Value, field: &str) -> i64 {
    match &item[field] {
        serde_json::Value::Number(number) => number.as_i64().unwrap(),
        serde_json::Value::String(text) => text.parse().unwrap(),
        other => panic!("no id in {field}: {other}"),
    }
}

/// The key a Docebo item has in Salesforce.
pub fn docebo_key(kind: learnsync_sim::EntityKind, item: &serde_json::Value) -> String {
    use learnsync_sim::EntityKind::*;
    match kind {
        Users => id(item, "user_id").to_string(),
        Courses => id(item, "id_course").to_string(),
        LearningPlans => id(item, "learning_plan_id").to_string(),
        Sessions => id(item, "id").to_string(),
        CourseEnrollments => format!("{}-{}", id(item, "user_id"), id(item, "course_id")),
        LearningPlanEnrollments => {
            format!("{}-{}", id(item, "user_id"), id(item, "learning_plan_id"))
        }
        SessionEnrollments => format!("{}-{}", id(item, "user_id"), id(item, "session_id")),
    }
}

/// Configures an area enabled and manual.
pub async fn configure(conn: &learnsync_store::Conn, connection_id: Uuid, area: Area) {
    areas::configure(
        conn,
        connection_id,
        area,
        &areas::AreaSettings {
            enabled: true,
            mode: Mode::Manual,
            interval_seconds: 900,
            course_category_ids: Vec::new(),
            full_interval_seconds: 86_400,
        },
    )
    .await
    .unwrap();
}

/// An incremental run of an area from exactly its watermark (no overlap), as the scheduler makes
/// one, run to its end with the worker(s) already running; returns the final run.
pub async fn incremental(env: &Env, area: Area) -> Run {
    let mut conn = env.store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let config = areas::lock(&tx, env.connection_id, area)
        .await
        .unwrap()
        .unwrap();
    let request = runs::RunRequest::incremental(config.watermark, chrono::Duration::zero());
    let run = runs::create(&tx, env.connection_id, area, &request)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    env.wait_final(run.id, Duration::from_secs(60)).await
}

/// Runs an area to its end with the given worker(s) already running; returns the final run.
pub async fn sync_area(env: &Env, area: Area) -> Run {
    let run = env.start(area, (None, None)).await;
    env.wait_final(run.id, Duration::from_secs(60)).await
}
