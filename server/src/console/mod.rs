//! The read-only web console, on a listen address of its own: the connections a token may see,
//! each connection's three areas with their jobs' progress, its runs, one run's jobs, and the log
//! (opening on a failed run's first error, filterable by level, followed live).
//!
//! The console changes nothing and reads nothing on its own: every page calls the gRPC handlers
//! in-process (GetStatus, ListConnections, GetConnection, ListRuns, GetRun, StreamLogs), with the
//! signed-in principal in the request's extensions as the auth interceptor puts it there, so it
//! reads state through the same store functions and tenant scoping as the API.
//!
//! Sign-in takes the same bearer tokens in a POST form; the session lives in a signed, `Secure`,
//! `HttpOnly`, `SameSite=Strict` cookie (see [`session`]). Pages are server-rendered HTML; a little
//! plain JavaScript refreshes the live parts by fetching HTML fragments. Assets are embedded,
//! nothing is fetched from elsewhere, and a strict Content-Security-Policy forbids inline script.

mod pages;
mod session;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::StreamExt as _;
use learnsync_proto::v1 as pb;
use learnsync_proto::v1::sync_service_server::SyncService as _;
use maud::Markup;
use tonic::{Code, Request, Status};

use crate::auth::{Principal, Tokens};
use crate::service::Service;

/// The most log events one page or one live refresh shows.
const LOG_PAGE: usize = 500;
/// The most runs one page shows.
const RUNS_PAGE: i32 = 50;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

#[derive(Clone)]
struct Console {
    service: Service,
    tokens: Tokens,
}

/// The console's routes.
pub(crate) fn router(service: Service, tokens: Tokens) -> Router {
    Router::new()
        .route("/", get(connections))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
        .route("/connections/{id}", get(status))
        .route("/connections/{id}/live/status", get(live_status))
        .route("/connections/{id}/runs", get(runs))
        .route("/connections/{id}/runs/{run}", get(run))
        .route("/connections/{id}/live/runs/{run}", get(live_run))
        .route("/connections/{id}/logs", get(logs))
        .route("/connections/{id}/live/logs", get(live_logs))
        .route(
            "/assets/console.css",
            get(|| asset(CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/console.js",
            get(|| asset(JS, "text/javascript; charset=utf-8")),
        )
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Console { service, tokens })
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What a page answers instead of its content.
enum Refusal {
    /// No valid session: pages redirect to sign-in, live fragments answer 401.
    SignIn,
    /// A status from a handler.
    Status(Principal, Status),
}

impl Console {
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        session::from_headers(headers)
            .and_then(|value| session::verify(&self.tokens, &value, now()))
            .ok_or(Refusal::SignIn)
    }

    async fn connection(&self, principal: &Principal, id: &str) -> Result<pb::Connection, Refusal> {
        let request = pb::GetConnectionRequest {
            connection_id: id.to_string(),
        };
        self.service
            .get_connection(as_principal(principal, request))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Refusal::Status(principal.clone(), status))
    }

    async fn run(&self, principal: &Principal, id: &str, run: &str) -> Result<pb::Run, Refusal> {
        let request = pb::GetRunRequest {
            connection_id: id.to_string(),
            run_id: run.to_string(),
        };
        self.service
            .get_run(as_principal(principal, request))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Refusal::Status(principal.clone(), status))
    }

    async fn status(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<pb::GetStatusResponse, Refusal> {
        let request = pb::GetStatusRequest {
            connection_id: id.to_string(),
            areas: Vec::new(),
        };
        self.service
            .get_status(as_principal(principal, request))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Refusal::Status(principal.clone(), status))
    }

    /// Up to [`LOG_PAGE`] events from `from`, without following (the page's script follows).
    async fn events(
        &self,
        principal: &Principal,
        id: &str,
        run: Option<&str>,
        level: pb::LogLevel,
        from: i64,
    ) -> Result<Vec<pb::LogEvent>, Refusal> {
        let request = pb::StreamLogsRequest {
            connection_id: id.to_string(),
            run_id: run.unwrap_or_default().to_string(),
            job_id: String::new(),
            position: Some(pb::stream_logs_request::Position::FromSequence(from)),
            min_level: level as i32,
            follow: false,
        };
        let refuse = |status| Refusal::Status(principal.clone(), status);
        let stream = self
            .service
            .stream_logs(as_principal(principal, request))
            .await
            .map_err(refuse)?
            .into_inner();
        // Dropping the stream after a page ends the handler's reader.
        let events: Vec<Result<pb::LogEvent, Status>> = stream.take(LOG_PAGE).collect().await;
        events.into_iter().collect::<Result<_, _>>().map_err(refuse)
    }
}

/// A handler request carrying the principal as the gRPC interceptor would.
fn as_principal<T>(principal: &Principal, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(principal.clone());
    request
}

impl Refusal {
    /// The answer of a full page.
    fn page(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/sign-in").into_response(),
            Refusal::Status(principal, status) => {
                let (code, title, message) = describe(&status);
                (
                    code,
                    html(pages::problem(Some(&principal), title, &message)),
                )
                    .into_response()
            }
        }
    }

    /// The answer of a live fragment: a status the script recognises, and no page.
    fn fragment(self) -> Response {
        match self {
            Refusal::SignIn => (StatusCode::UNAUTHORIZED, "sign in again").into_response(),
            Refusal::Status(_, status) => {
                let (code, _, message) = describe(&status);
                (code, message).into_response()
            }
        }
    }
}

/// The HTTP status, title and message of a handler's status. A tenant's request for another
/// tenant's connection reads exactly like one for a connection that does not exist.
fn describe(status: &Status) -> (StatusCode, &'static str, String) {
    match status.code() {
        Code::PermissionDenied | Code::NotFound => (
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such connection or run, or this token may not see it.".to_string(),
        ),
        Code::InvalidArgument | Code::FailedPrecondition => (
            StatusCode::BAD_REQUEST,
            "Bad request",
            status.message().to_string(),
        ),
        Code::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "Sign in again.".to_string(),
        ),
        Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The server is shutting down or its database is unavailable; try again.".to_string(),
        ),
        _ => {
            tracing::warn!(code = ?status.code(), message = %status.message(), "console page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "The page could not be read; the server's log says why.".to_string(),
            )
        }
    }
}

fn html(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

async fn sign_in_form() -> Response {
    html(pages::sign_in(false))
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(console): State<Console>, Form(form): Form<SignIn>) -> Response {
    let expiry = now() + session::LIFETIME_SECONDS;
    match session::open(&console.tokens, form.token.trim(), expiry) {
        Some((principal, value)) => {
            tracing::info!(principal = %principal.name(), "console session opened");
            (
                [(header::SET_COOKIE, session::set_cookie(&value))],
                Redirect::to("/"),
            )
                .into_response()
        }
        None => {
            tracing::info!("console sign-in refused");
            (StatusCode::UNAUTHORIZED, html(pages::sign_in(true))).into_response()
        }
    }
}

async fn sign_out() -> Response {
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/sign-in"),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct Page {
    page: Option<String>,
}

async fn connections(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<Page>,
) -> Response {
    let principal = match console.principal(&headers) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.page(),
    };
    let request = pb::ListConnectionsRequest {
        page_size: 100,
        page_token: query.page.unwrap_or_default(),
    };
    match console
        .service
        .list_connections(as_principal(&principal, request))
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            let next = (!response.next_page_token.is_empty()).then_some(&response.next_page_token);
            html(pages::connections(
                &principal,
                &response.connections,
                next.map(String::as_str),
            ))
        }
        Err(status) => Refusal::Status(principal, status).page(),
    }
}

async fn status(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let page = async {
        let principal = console.principal(&headers)?;
        let connection = console.connection(&principal, &id).await?;
        let status = console.status(&principal, &id).await?;
        Ok::<_, Refusal>(pages::status(&principal, &connection, &status))
    };
    page.await.map(html).unwrap_or_else(Refusal::page)
}

async fn live_status(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let fragment = async {
        let principal = console.principal(&headers)?;
        let status = console.status(&principal, &id).await?;
        Ok::<_, Refusal>(pages::areas(&id, &status))
    };
    fragment.await.map(html).unwrap_or_else(Refusal::fragment)
}

async fn runs(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<Page>,
) -> Response {
    let page = async {
        let principal = console.principal(&headers)?;
        let connection = console.connection(&principal, &id).await?;
        let request = pb::ListRunsRequest {
            connection_id: id.clone(),
            area: pb::Area::Unspecified as i32,
            page_size: RUNS_PAGE,
            page_token: query.page.unwrap_or_default(),
        };
        let response = console
            .service
            .list_runs(as_principal(&principal, request))
            .await
            .map_err(|status| Refusal::Status(principal.clone(), status))?
            .into_inner();
        let next = (!response.next_page_token.is_empty()).then_some(&response.next_page_token);
        Ok::<_, Refusal>(pages::runs(
            &principal,
            &connection,
            &response.runs,
            next.map(String::as_str),
        ))
    };
    page.await.map(html).unwrap_or_else(Refusal::page)
}

async fn run(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, run)): Path<(String, String)>,
) -> Response {
    let page = async {
        let principal = console.principal(&headers)?;
        let connection = console.connection(&principal, &id).await?;
        let run = console.run(&principal, &id, &run).await?;
        Ok::<_, Refusal>(pages::run(&principal, &connection, &run))
    };
    page.await.map(html).unwrap_or_else(Refusal::page)
}

async fn live_run(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, run)): Path<(String, String)>,
) -> Response {
    let fragment = async {
        let principal = console.principal(&headers)?;
        let run = console.run(&principal, &id, &run).await?;
        Ok::<_, Refusal>(pages::run_detail(&id, &run))
    };
    fragment.await.map(html).unwrap_or_else(Refusal::fragment)
}

#[derive(serde::Deserialize)]
struct LogQuery {
    run: Option<String>,
    level: Option<String>,
    from: Option<i64>,
    after: Option<i64>,
}

impl LogQuery {
    fn level(&self) -> Result<pb::LogLevel, Status> {
        match self.level.as_deref().unwrap_or("all") {
            "" | "all" => Ok(pb::LogLevel::Unspecified),
            "debug" => Ok(pb::LogLevel::Debug),
            "info" => Ok(pb::LogLevel::Info),
            "warn" => Ok(pb::LogLevel::Warn),
            "error" => Ok(pb::LogLevel::Error),
            _ => Err(Status::invalid_argument(
                "level must be all, debug, info, warn or error",
            )),
        }
    }

    fn run(&self) -> Option<&str> {
        self.run.as_deref().filter(|run| !run.is_empty())
    }
}

async fn logs(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let page = async {
        let principal = console.principal(&headers)?;
        let refuse = |status| Refusal::Status(principal.clone(), status);
        let level = query.level().map_err(refuse)?;
        let connection = console.connection(&principal, &id).await?;
        let run = match query.run() {
            Some(run) => Some(console.run(&principal, &id, run).await?),
            None => None,
        };
        let from = query.from.unwrap_or(1).max(1);
        let events = console
            .events(&principal, &id, query.run(), level, from)
            .await?;
        let live = format!(
            "/connections/{id}/live/logs?{}",
            pages::log_query(run.as_ref(), level, 1)
        );
        let view = pages::LogView {
            run: run.as_ref(),
            level,
            from,
            live,
        };
        Ok::<_, Refusal>(pages::log(&principal, &connection, &view, &events))
    };
    page.await.map(html).unwrap_or_else(Refusal::page)
}

async fn live_logs(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let fragment = async {
        let principal = console.principal(&headers)?;
        let level = query
            .level()
            .map_err(|status| Refusal::Status(principal.clone(), status))?;
        let after = query.after.unwrap_or(0).max(0);
        let events = console
            .events(&principal, &id, query.run(), level, after + 1)
            .await?;
        let last = events.last().map(|event| event.sequence).unwrap_or(after);
        Ok::<_, Refusal>((last, pages::log_rows(&events, 0)))
    };
    match fragment.await {
        Ok((last, rows)) => {
            let mut response = html(rows);
            if let Ok(value) = HeaderValue::from_str(&last.to_string()) {
                response.headers_mut().insert("x-last-sequence", value);
            }
            response
        }
        Err(refusal) => refusal.fragment(),
    }
}
