//! The `learnsync.v1.SyncService` handlers. Each validates its request at the edge, authorizes
//! the caller against the connection, and changes state through the store in one transaction
//! (together with the request's idempotency key, when it has one).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use learnsync_proto::v1 as pb;
use learnsync_proto::v1::sync_service_server::SyncService;
use learnsync_store::model::{self, Area};
use learnsync_store::{
    GenericClient, Store, areas, connections, idempotency, logs, realtime, runs, secrets,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::Principal;
use crate::convert::{self, Violations};
use crate::error::{self, OrStatus as _};

/// The service's state, shared by every call.
#[derive(Clone)]
pub struct Service {
    pub(crate) store: Store,
    pub(crate) cipher: secrets::Cipher,
    pub(crate) min_interval: Duration,
    /// What the connections' URLs may reach.
    pub(crate) upstream: Arc<learnsync_upstream::Policy>,
    /// StreamLogs' open streams per token and the connections' shared log polls.
    pub(crate) log_streams: crate::followers::LogStreams,
    /// The HTTP client SetMapping reads orgs' describes with ([`crate::mapping::http`]).
    pub(crate) org_http: learnsync_upstream::Http,
}

/// Whether `principal` may see connection `connection_id`, given what reading it found: its
/// tenant, or an error (`NotFound` is denied to a tenant, who may not learn which ids exist).
/// Other errors pass through: the caller answers with them. Records the id on the call's span
/// (exported to a tracing backend when one is configured).
fn admit(
    principal: &Principal,
    connection_id: Uuid,
    found: Result<&str, &learnsync_store::Error>,
) -> Result<(), Status> {
    tracing::Span::current().record("connection_id", tracing::field::display(connection_id));
    match found {
        Ok(tenant) if principal.may_see(tenant) => Ok(()),
        Ok(_) => Err(error::connection_denied(&connection_id.to_string())),
        Err(learnsync_store::Error::NotFound { .. }) if principal.tenant().is_some() => {
            Err(error::connection_denied(&connection_id.to_string()))
        }
        Err(_) => Ok(()),
    }
}

fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| error::unauthenticated("missing authorization: Bearer <token> metadata"))
}

/// A request that changes state: its `request_id` makes a retry safe.
trait Mutating: prost::Message + Clone {
    /// The caller's request id.
    fn request_id(&self) -> &String;
    /// The same, to clear it from the request's digest.
    fn request_id_mut(&mut self) -> &mut String;
}

macro_rules! mutating {
    ($($request:ty),* $(,)?) => {$(
        impl Mutating for $request {
            fn request_id(&self) -> &String {
                &self.request_id
            }
            fn request_id_mut(&mut self) -> &mut String {
                &mut self.request_id
            }
        }
    )*};
}

mutating!(
    pb::CreateConnectionRequest,
    pb::UpdateConnectionRequest,
    pb::DeleteConnectionRequest,
    pb::ConfigureRequest,
    pb::StartRequest,
    pb::StopRequest,
    pb::ResynchronizeRequest,
    pb::RotateWebhookSecretRequest,
    pb::SetMappingRequest,
);

/// What an UpdateConnection's mask changes: the stored fields, and each side of the credentials.
struct Masked {
    update: connections::ConnectionUpdate,
    docebo: Option<secrets::DoceboCredentials>,
    salesforce: Option<secrets::SalesforceCredentials>,
}

/// An idempotency key to claim in a transaction.
struct Idempotency<'a> {
    principal: String,
    method: &'static str,
    request_id: &'a str,
    digest: Vec<u8>,
}

impl<'a> Idempotency<'a> {
    /// The key of a request, bound to a digest of the method and the request without its request
    /// id (a retry must be the same request).
    /// The digest is keyed (an HMAC under a key derived from the server's secret key): the
    /// request may carry credentials.
    fn new<M: Mutating>(
        cipher: &secrets::Cipher,
        principal: &Principal,
        method: &'static str,
        request: &'a M,
    ) -> Idempotency<'a> {
        let mut canonical = request.clone();
        canonical.request_id_mut().clear();
        let digest = cipher.request_digest(&[method.as_bytes(), &canonical.encode_to_vec()]);
        Idempotency {
            principal: principal.name(),
            method,
            request_id: request.request_id(),
            digest,
        }
    }

    /// Claims the key; returns the first answer when this is a retry.
    async fn claim<R: prost::Message + Default>(
        &self,
        client: &impl GenericClient,
    ) -> Result<Option<R>, Status> {
        if self.request_id.is_empty() {
            return Ok(None);
        }
        match idempotency::claim(
            client,
            &self.principal,
            self.method,
            self.request_id,
            &self.digest,
        )
        .await
        .or_status()?
        {
            idempotency::Claim::New => Ok(None),
            idempotency::Claim::Replay(bytes) => R::decode(bytes.as_slice())
                .map(Some)
                .map_err(|_| Status::internal("stored answer does not decode")),
        }
    }

    /// Stores the answer.
    async fn complete(
        &self,
        client: &impl GenericClient,
        response: &impl prost::Message,
    ) -> Result<(), Status> {
        if self.request_id.is_empty() {
            return Ok(());
        }
        idempotency::complete(
            client,
            &self.principal,
            self.method,
            self.request_id,
            &response.encode_to_vec(),
        )
        .await
        .or_status()
    }
}

impl Service {
    /// The fields an UpdateConnection's mask names, read and validated from `input` (problems go
    /// to `violations`).
    fn masked_update(
        &self,
        violations: &mut Violations,
        input: &pb::Connection,
        paths: &[String],
    ) -> Masked {
        let mut update = connections::ConnectionUpdate::default();
        let mut docebo = None;
        let mut salesforce = None;
        for path in paths {
            match path.as_str() {
                "display_name" => {
                    update.display_name = Some(convert::display_name(
                        violations,
                        "connection.display_name",
                        &input.display_name,
                    ))
                }
                "docebo" => match &input.docebo {
                    Some(value) => {
                        docebo = Some(convert::docebo_credentials(
                            violations,
                            &self.upstream,
                            "connection.docebo",
                            value,
                        ))
                    }
                    None => {
                        violations.add("connection.docebo", "required when update_mask names it")
                    }
                },
                "salesforce" => match &input.salesforce {
                    Some(value) => {
                        salesforce = Some(convert::salesforce_credentials(
                            violations,
                            &self.upstream,
                            "connection.salesforce",
                            value,
                        ))
                    }
                    None => violations.add(
                        "connection.salesforce",
                        "required when update_mask names it",
                    ),
                },
                "unenrollment_policy" => {
                    update.unenrollment_policy = Some(convert::unenrollment_policy(
                        violations,
                        "connection.unenrollment_policy",
                        input.unenrollment_policy,
                    ))
                }
                "unenrollment_guard" => match &input.unenrollment_guard {
                    Some(guard) => {
                        update.unenrollment_guard = Some(convert::unenrollment_guard(
                            violations,
                            "connection.unenrollment_guard",
                            Some(guard),
                        ))
                    }
                    None => violations.add(
                        "connection.unenrollment_guard",
                        "required when update_mask names it",
                    ),
                },
                "docebo_calls_per_hour" => {
                    update.docebo_calls_per_hour = Some(convert::calls_per_hour(
                        violations,
                        "connection.docebo_calls_per_hour",
                        input.docebo_calls_per_hour,
                    ))
                }
                "tenant" => violations.add("update_mask", "tenant is immutable"),
                other => violations.add(
                    "update_mask",
                    format!(
                        "unknown or read-only field {other:?}: display_name, docebo, salesforce, \
                     unenrollment_policy, docebo_calls_per_hour, unenrollment_guard"
                    ),
                ),
            }
        }
        Masked {
            update,
            docebo,
            salesforce,
        }
    }
    /// Loads a connection the caller may see. For a tenant, an unknown connection and another
    /// tenant's connection get the same answer.
    async fn authorize(
        &self,
        client: &impl GenericClient,
        principal: &Principal,
        connection_id: Uuid,
    ) -> Result<model::Connection, Status> {
        let connection = connections::get(client, connection_id).await;
        admit(
            principal,
            connection_id,
            connection.as_ref().map(|found| found.tenant.as_str()),
        )?;
        connection.or_status()
    }

    fn seal(
        &self,
        id: Uuid,
        credentials: &secrets::Credentials,
    ) -> Result<connections::SealedCredentials, Status> {
        Ok(connections::SealedCredentials {
            sealed: self.cipher.seal(id, credentials).or_status()?,
            key_id: self.cipher.key_id().to_string(),
            docebo_grant: credentials.docebo.grant.name().to_string(),
            salesforce_grant: credentials.salesforce.grant.name().to_string(),
            docebo_platform: credentials.docebo_platform(),
        })
    }

    /// Runs a run-changing action (Start, Stop, Resynchronize) in one transaction with its key.
    async fn run_action<F>(
        &self,
        principal: &Principal,
        connection_id: Uuid,
        key: Idempotency<'_>,
        action: F,
    ) -> Result<pb::Run, Status>
    where
        F: AsyncFnOnce(
            &learnsync_store::Transaction<'_>,
        ) -> Result<model::Run, learnsync_store::Error>,
    {
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        self.authorize(&tx, principal, connection_id).await?;
        if let Some(replay) = key.claim::<pb::Run>(&tx).await? {
            tracing::Span::current().record("run_id", replay.id.as_str());
            return Ok(replay);
        }
        let run = action(&tx).await.or_status()?;
        let response = convert::run_to_proto(&run);
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::Span::current().record("run_id", response.id.as_str());
        Ok(response)
    }
}

/// The trace id a new run gets: the trace of the call's span when spans are exported (the caller's
/// `traceparent`, or the trace the call started), so the run, its jobs and the call are one trace
/// in the tracing backend; else the caller's `traceparent`, when it has one.
fn run_trace_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    learnsync_telemetry::current_trace_id().or_else(|| convert::traceparent_trace_id(metadata))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SyncService for Service {
    async fn create_connection(
        &self,
        request: Request<pb::CreateConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let Some(input) = request.connection.as_ref() else {
            return Err(error::invalid_field("connection", "required"));
        };
        // Authorized before the credentials are read (keys parsed, URLs checked).
        let tenant = match (&principal, input.tenant.trim()) {
            (Principal::Operator, "") => "default".to_string(),
            (Principal::Operator, tenant) => tenant.to_string(),
            (Principal::Tenant(own), "") => own.clone(),
            (Principal::Tenant(own), tenant) if tenant == own => own.clone(),
            (Principal::Tenant(_), _) => {
                return Err(error::permission_denied(
                    learnsync_store::ErrorCode::TenantMismatch,
                    "a tenant token can create connections only for its own tenant",
                ));
            }
        };
        let display_name = convert::display_name(
            &mut violations,
            "connection.display_name",
            &input.display_name,
        );
        let docebo = match &input.docebo {
            Some(docebo) => Some(convert::docebo_credentials(
                &mut violations,
                &self.upstream,
                "connection.docebo",
                docebo,
            )),
            None => {
                violations.add("connection.docebo", "required");
                None
            }
        };
        let salesforce = match &input.salesforce {
            Some(salesforce) => Some(convert::salesforce_credentials(
                &mut violations,
                &self.upstream,
                "connection.salesforce",
                salesforce,
            )),
            None => {
                violations.add("connection.salesforce", "required");
                None
            }
        };
        let calls = convert::calls_per_hour(
            &mut violations,
            "connection.docebo_calls_per_hour",
            input.docebo_calls_per_hour,
        );
        let policy = convert::unenrollment_policy(
            &mut violations,
            "connection.unenrollment_policy",
            input.unenrollment_policy,
        );
        let guard = convert::unenrollment_guard(
            &mut violations,
            "connection.unenrollment_guard",
            input.unenrollment_guard.as_ref(),
        );
        if tenant.chars().count() > 100 {
            violations.add("connection.tenant", "at most 100 characters");
        }
        violations.check()?;
        let (Some(docebo), Some(salesforce)) = (docebo, salesforce) else {
            return Err(Status::internal("validated credentials missing"));
        };
        let credentials = secrets::Credentials { docebo, salesforce };
        let key = Idempotency::new(&self.cipher, &principal, "CreateConnection", &request);
        let id = Uuid::new_v4();
        let new = connections::NewConnection {
            id,
            tenant,
            display_name,
            credentials: self.seal(id, &credentials)?,
            docebo_calls_per_hour: calls,
            unenrollment_policy: policy,
            unenrollment_guard: guard,
        };
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        if let Some(replay) = key.claim::<pb::Connection>(&tx).await? {
            return Ok(Response::new(replay));
        }
        let connection = connections::insert(&tx, &new).await.or_status()?;
        let response = convert::connection_to_proto(&connection);
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::info!(connection_id = %id, tenant = %connection.tenant, "connection created");
        Ok(Response::new(response))
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        let id = convert::connection_id(&request.get_ref().connection_id)?;
        let conn = self.store.conn().await.or_status()?;
        let connection = self.authorize(&conn, &principal, id).await?;
        Ok(Response::new(convert::connection_to_proto(&connection)))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let limit = convert::page_size(&mut violations, request.page_size);
        let after = convert::parse_page_token(&mut violations, &request.page_token);
        violations.check()?;
        let conn = self.store.conn().await.or_status()?;
        let mut page = connections::list(&conn, principal.tenant(), after, limit + 1)
            .await
            .or_status()?;
        let next_page_token =
            convert::next_page_token(&mut page, limit, |last| (last.create_time, last.id));
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: page.iter().map(convert::connection_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_connection(
        &self,
        request: Request<pb::UpdateConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let Some(input) = request.connection.as_ref() else {
            return Err(error::invalid_field("connection", "required"));
        };
        let id = convert::parse_id(&mut violations, "connection.id", &input.id);
        let paths = request
            .update_mask
            .as_ref()
            .map(|mask| mask.paths.clone())
            .unwrap_or_default();
        // Every field of a connection fits in far fewer paths.
        convert::at_most("update_mask.paths", &paths, 32)?;
        if paths.is_empty() {
            violations.add("update_mask", "required: the fields to change");
        }
        violations.check()?;
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        // Authorized before the fields are read: reading them parses keys and checks URLs, work
        // a caller who may not change this connection must not get out of the server.
        self.authorize(&tx, &principal, id).await?;
        let mut violations = Violations::default();
        let Masked {
            mut update,
            docebo,
            salesforce,
        } = self.masked_update(&mut violations, input, &paths);
        violations.check()?;
        let key = Idempotency::new(&self.cipher, &principal, "UpdateConnection", &request);
        if let Some(replay) = key.claim::<pb::Connection>(&tx).await? {
            return Ok(Response::new(replay));
        }
        if docebo.is_some() || salesforce.is_some() {
            // Replacing one side keeps the other: open what is stored and reseal the whole, under
            // the row's lock (a concurrent update of the other side waits, then reads this one's).
            let (sealed, _) = connections::lock_credentials(&tx, id).await.or_status()?;
            let mut credentials = self.cipher.open(id, &sealed).or_status()?;
            if let Some(docebo) = docebo {
                credentials.docebo = docebo;
            }
            if let Some(salesforce) = salesforce {
                credentials.salesforce = salesforce;
            }
            update.credentials = Some(self.seal(id, &credentials)?);
        }
        let connection = connections::update(&tx, id, &update).await.or_status()?;
        let response = convert::connection_to_proto(&connection);
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::info!(connection_id = %id, fields = ?paths, "connection updated");
        Ok(Response::new(response))
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        violations.check()?;
        let key = Idempotency::new(&self.cipher, &principal, "DeleteConnection", &request);
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        // A retry after the deletion finds no connection: answer from the key first.
        if let Some(replay) = key.claim::<pb::DeleteConnectionResponse>(&tx).await? {
            return Ok(Response::new(replay));
        }
        self.authorize(&tx, &principal, id).await?;
        connections::delete(&tx, id).await.or_status()?;
        let response = pb::DeleteConnectionResponse {
            connection_id: id.to_string(),
        };
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::info!(connection_id = %id, "connection deleted");
        Ok(Response::new(response))
    }

    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::AreaConfig>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let Some(config) = request.config.as_ref() else {
            violations.add("config", "required");
            violations.check()?;
            return Err(Status::internal("unreachable"));
        };
        let area = convert::area(&mut violations, "config.area", config.area);
        let mode = match pb::Mode::try_from(config.mode) {
            Ok(pb::Mode::Manual) => model::Mode::Manual,
            Ok(pb::Mode::Realtime) => model::Mode::Realtime,
            _ => {
                violations.add("config.mode", "required: MODE_MANUAL or MODE_REALTIME");
                model::Mode::Manual
            }
        };
        let min = self.min_interval.as_secs().max(1) as i64;
        let budget = " (the minimum protects the docebo call budget)";
        let interval_seconds = convert::seconds(
            &mut violations,
            "config.interval",
            config.interval.as_ref(),
            (min, 900, 86_400),
            budget,
        );
        let full_interval_seconds = convert::seconds(
            &mut violations,
            "config.full_comparison_interval",
            config.full_comparison_interval.as_ref(),
            (min, 86_400, 30 * 86_400),
            budget,
        );
        convert::at_most(
            "config.course_category_ids",
            &config.course_category_ids,
            MAX_COURSE_CATEGORIES,
        )?;
        if area != Area::Courses && !config.course_category_ids.is_empty() {
            violations.add(
                "config.course_category_ids",
                "only AREA_COURSES takes course categories",
            );
        }
        if config.course_category_ids.iter().any(|id| *id <= 0) {
            violations.add("config.course_category_ids", "category ids are positive");
        }
        violations.check()?;
        let settings = areas::AreaSettings {
            enabled: config.enabled,
            mode,
            interval_seconds,
            course_category_ids: config.course_category_ids.clone(),
            full_interval_seconds,
        };
        let key = Idempotency::new(&self.cipher, &principal, "Configure", &request);
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        self.authorize(&tx, &principal, id).await?;
        if let Some(replay) = key.claim::<pb::AreaConfig>(&tx).await? {
            return Ok(Response::new(replay));
        }
        areas::lock(&tx, id, area).await.or_status()?;
        let stored = areas::configure(&tx, id, area, &settings)
            .await
            .or_status()?;
        let response = convert::area_config_to_proto(area, Some(&stored));
        logs::append(
            &tx,
            id,
            &[
                model::NewLogEvent::new(model::LogLevel::Info, format!("{area} area configured"))
                    .field("enabled", settings.enabled)
                    .field("mode", mode.as_str())
                    .field("interval_seconds", interval_seconds),
            ],
        )
        .await
        .or_status()?;
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::info!(connection_id = %id, %area, enabled = settings.enabled, mode = %mode, "area configured");
        Ok(Response::new(response))
    }

    async fn start(&self, request: Request<pb::StartRequest>) -> Result<Response<pb::Run>, Status> {
        let principal = principal(&request)?;
        let trace_id = run_trace_id(request.metadata());
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let area = convert::area(&mut violations, "area", request.area);
        let timeframe =
            convert::timeframe(&mut violations, "timeframe", request.timeframe.as_ref());
        violations.check()?;
        let key = Idempotency::new(&self.cipher, &principal, "Start", &request);
        let run = self
            .run_action(&principal, id, key, async |tx| {
                runs::start(tx, id, area, timeframe, trace_id.clone()).await
            })
            .await?;
        tracing::info!(connection_id = %id, %area, run_id = %run.id, trace_id = %run.trace_id, "run started");
        Ok(Response::new(run))
    }

    async fn stop(&self, request: Request<pb::StopRequest>) -> Result<Response<pb::Run>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let area = convert::area(&mut violations, "area", request.area);
        violations.check()?;
        let key = Idempotency::new(&self.cipher, &principal, "Stop", &request);
        let run = self
            .run_action(&principal, id, key, async |tx| {
                runs::stop(tx, id, area).await
            })
            .await?;
        tracing::info!(connection_id = %id, %area, run_id = %run.id, "run stop requested");
        Ok(Response::new(run))
    }

    async fn resynchronize(
        &self,
        request: Request<pb::ResynchronizeRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let principal = principal(&request)?;
        let trace_id = run_trace_id(request.metadata());
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let area = convert::area(&mut violations, "area", request.area);
        let timeframe =
            convert::timeframe(&mut violations, "timeframe", request.timeframe.as_ref());
        violations.check()?;
        let options = runs::ResyncOptions {
            rewrite_unchanged: request.rewrite_unchanged,
            check_only: request.check_only,
            confirm_unenrollments: request.confirm_unenrollments,
        };
        let key = Idempotency::new(&self.cipher, &principal, "Resynchronize", &request);
        let run = self
            .run_action(&principal, id, key, async |tx| {
                runs::resynchronize(tx, id, area, timeframe, options, trace_id.clone()).await
            })
            .await?;
        tracing::info!(connection_id = %id, %area, run_id = %run.id, trace_id = %run.trace_id, "resynchronization started");
        Ok(Response::new(run))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        // Three areas exist: a few repeats are harmless, millions are an attack.
        convert::at_most("areas", &request.areas, 16)?;
        let mut violations = Violations::default();
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let mut wanted: Vec<Area> = request
            .areas
            .iter()
            .enumerate()
            .map(|(index, value)| {
                convert::area(&mut violations, &format!("areas[{index}]"), *value)
            })
            .collect();
        violations.check()?;
        if wanted.is_empty() {
            wanted = Area::ALL.to_vec();
        }
        wanted.sort();
        wanted.dedup();
        // One statement: the authorization facts and everything shown, in one snapshot.
        let conn = self.store.conn().await.or_status()?;
        let status = runs::status(&conn, id).await;
        admit(
            &principal,
            id,
            status.as_ref().map(|status| status.tenant.as_str()),
        )?;
        let runs::ConnectionStatus {
            configs,
            mut latest,
            imported,
            ..
        } = status.or_status()?;
        let statuses = wanted
            .into_iter()
            .map(|area| {
                let config = configs.iter().find(|c| c.area == area);
                let runs = latest.remove(&area).unwrap_or_default();
                let first_error_sequence = runs
                    .last
                    .as_ref()
                    .filter(|run| {
                        matches!(
                            run.state,
                            model::RunState::Failed | model::RunState::SucceededWithErrors
                        )
                    })
                    .and_then(|run| run.first_error_sequence)
                    .unwrap_or(0);
                pb::AreaStatus {
                    area: convert::area_to_proto(area) as i32,
                    configured: config.is_some(),
                    config: Some(convert::area_config_to_proto(area, config)),
                    active_run: runs.active.as_ref().map(convert::run_to_proto),
                    last_run: runs.last.as_ref().map(convert::run_to_proto),
                    last_success_time: config
                        .and_then(|c| c.last_success_time)
                        .map(convert::to_timestamp),
                    records_imported: imported.get(&area).copied().unwrap_or(0),
                    first_error_sequence,
                    next_run_time: config
                        .filter(|c| c.enabled && c.mode == model::Mode::Realtime)
                        .and_then(|c| c.next_run_time)
                        .map(convert::to_timestamp),
                    unenrollments_tracked: area == Area::Enrollments
                        && config.is_some_and(|c| c.first_success_time.is_some()),
                    next_full_comparison_time: config
                        .filter(|c| c.enabled && c.mode == model::Mode::Realtime)
                        .and_then(|c| c.next_full_time)
                        .map(convert::to_timestamp),
                }
            })
            .collect();
        Ok(Response::new(pb::GetStatusResponse {
            connection_id: id.to_string(),
            areas: statuses,
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let run_id = convert::parse_id(&mut violations, "run_id", &request.run_id);
        violations.check()?;
        let conn = self.store.conn().await.or_status()?;
        self.authorize(&conn, &principal, id).await?;
        let run = runs::get(&conn, id, run_id).await.or_status()?;
        Ok(Response::new(convert::run_to_proto(&run)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let area = if request.area == pb::Area::Unspecified as i32 {
            None
        } else {
            Some(convert::area(&mut violations, "area", request.area))
        };
        let limit = convert::page_size(&mut violations, request.page_size);
        let after = convert::parse_page_token(&mut violations, &request.page_token);
        violations.check()?;
        let conn = self.store.conn().await.or_status()?;
        self.authorize(&conn, &principal, id).await?;
        let mut page = runs::list(&conn, id, area, after, limit + 1)
            .await
            .or_status()?;
        let next_page_token =
            convert::next_page_token(&mut page, limit, |last| (last.create_time, last.id));
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.iter().map(convert::run_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let principal = principal(&request)?;
        let id = convert::connection_id(&request.get_ref().connection_id)?;
        let conn = self.store.conn().await.or_status()?;
        self.authorize(&conn, &principal, id).await?;
        let generation = realtime::webhook_generation(&conn, id)
            .await
            .or_status()?
            .ok_or_else(|| {
                error::not_found(
                    learnsync_store::Resource::Connection,
                    &format!("connection {id}"),
                )
            })?;
        Ok(Response::new(pb::WebhookEndpoint {
            path: crate::webhooks::path(&self.cipher, id, generation),
            generation,
        }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        violations.check()?;
        let key = Idempotency::new(&self.cipher, &principal, "RotateWebhookSecret", &request);
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        self.authorize(&tx, &principal, id).await?;
        if let Some(replay) = key.claim::<pb::RotateWebhookSecretResponse>(&tx).await? {
            return Ok(Response::new(replay));
        }
        let generation = realtime::rotate_webhook(&tx, id).await.or_status()?;
        let response = pb::RotateWebhookSecretResponse { generation };
        logs::append(
            &tx,
            id,
            &[
                model::NewLogEvent::new(model::LogLevel::Info, "webhook secret rotated")
                    .field("generation", generation),
            ],
        )
        .await
        .or_status()?;
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::info!(connection_id = %id, generation, "webhook secret rotated");
        Ok(Response::new(response))
    }

    type StreamLogsStream = LogStream;

    async fn get_mapping(
        &self,
        request: Request<pb::GetMappingRequest>,
    ) -> Result<Response<pb::Mapping>, Status> {
        let principal = principal(&request)?;
        let id = convert::connection_id(&request.get_ref().connection_id)?;
        let conn = self.store.conn().await.or_status()?;
        self.authorize(&conn, &principal, id).await?;
        let stored = learnsync_store::mappings::current(&conn, id)
            .await
            .or_status()?;
        Ok(Response::new(crate::mapping::to_proto(stored.as_ref())?))
    }

    async fn set_mapping(
        &self,
        request: Request<pb::SetMappingRequest>,
    ) -> Result<Response<pb::Mapping>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        convert::request_id(&mut violations, &request.request_id);
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        violations.check()?;
        let mapping = crate::mapping::read_request(request.mapping.as_ref())?;
        let key = Idempotency::new(&self.cipher, &principal, "SetMapping", &request);
        let mut conn = self.store.conn().await.or_status()?;
        let tx = conn.transaction().await.or_status()?;
        self.authorize(&tx, &principal, id).await?;
        if let Some(replay) = key.claim::<pb::Mapping>(&tx).await? {
            return Ok(Response::new(replay));
        }
        // The key's row stays locked while the org is asked: a concurrent retry waits for the
        // answer instead of asking again.
        let (sealed, _) = connections::sealed_credentials(&tx, id).await.or_status()?;
        let credentials = self.cipher.open(id, &sealed).or_status()?;
        crate::mapping::check_against_org(self.org_http.clone(), credentials.salesforce, &mapping)
            .await?;
        let stored = if request.check_only {
            learnsync_store::mappings::current(&tx, id)
                .await
                .or_status()?
        } else {
            Some(
                learnsync_store::mappings::add(&tx, id, &mapping.to_document())
                    .await
                    .or_status()?,
            )
        };
        let response = crate::mapping::answer(&mapping, stored.as_ref())?;
        key.complete(&tx, &response).await?;
        tx.commit().await.or_status()?;
        tracing::info!(
            connection_id = %id,
            version = response.version,
            check_only = request.check_only,
            "mapping set"
        );
        Ok(Response::new(response))
    }

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let id = convert::parse_id(&mut violations, "connection_id", &request.connection_id);
        let run_id = (!request.run_id.is_empty())
            .then(|| convert::parse_id(&mut violations, "run_id", &request.run_id));
        let job_id = (!request.job_id.is_empty())
            .then(|| convert::parse_id(&mut violations, "job_id", &request.job_id));
        if job_id.is_some() && run_id.is_none() {
            violations.add("run_id", "required with job_id");
        }
        let min_level = convert::min_level(&mut violations, request.min_level);
        let from_first_error = matches!(
            request.position,
            Some(pb::stream_logs_request::Position::FromFirstError(true))
        );
        if from_first_error && run_id.is_none() {
            violations.add("run_id", "required with from_first_error");
        }
        let mut from = match request.position {
            Some(pb::stream_logs_request::Position::FromSequence(sequence)) if sequence < 0 => {
                violations.add("from_sequence", "must not be negative");
                1
            }
            Some(pb::stream_logs_request::Position::FromSequence(sequence)) => sequence.max(1),
            _ => 1,
        };
        violations.check()?;
        // Counted before any database work: a token over its limit costs nothing more.
        let permit = self.log_streams.admit(&principal.name())?;
        let conn = self.store.conn().await.or_status()?;
        self.authorize(&conn, &principal, id).await?;
        if let Some(run_id) = run_id {
            let run = runs::get(&conn, id, run_id).await.or_status()?;
            if let Some(job_id) = job_id
                && !run.jobs.iter().any(|job| job.id == job_id)
            {
                return Err(error::not_found(
                    learnsync_store::Resource::Job,
                    &format!("job {job_id} of run {run_id}"),
                ));
            }
            if from_first_error {
                match run.first_error_sequence {
                    Some(sequence) => from = sequence,
                    None => {
                        return Err(error::failed_precondition(
                            learnsync_store::ErrorCode::RunHasNoError,
                            &format!("connections/{id}/runs/{run_id}"),
                            "the run has no error event to start from",
                        ));
                    }
                }
            }
        }
        drop(conn);
        let filter = logs::LogFilter {
            connection_id: id,
            run_id,
            job_id,
            min_level,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        self.log_streams
            .spawn(permit, filter, from, request.follow, sender);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// Most course categories an area's filter may name.
const MAX_COURSE_CATEGORIES: usize = 1000;
