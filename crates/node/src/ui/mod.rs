//! The web dashboard: a page embedded in the binary (`assets/`) and the
//! small JSON API it reads, served on `ui_addr` (off when empty).
//!
//! Every API call goes through the same gRPC handlers as the client port
//! ([`Services`], with the node's [`crate::auth::Auth`]): the browser's
//! `Authorization: Bearer <token>` header becomes the call's metadata, so
//! the token rules are the API's own (state-changing calls need `admin`
//! on the queue), and a refusal is the handler's. Why JSON and not
//! gRPC-Web: ARCHITECTURE.md, "The dashboard".
//!
//! Every answer is JSON; every error is `{"error": {"code", "message"}}`
//! with the gRPC code's name and an HTTP status to match, and the message
//! names the parameter and the bound at fault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::pb;
use crate::pb::admin_server::Admin;
use crate::pb::cluster_server::Cluster;
use crate::service::Services;

/// How often the page polls the node, in milliseconds.
pub const POLL_MS: u64 = 2_000;
/// Polls the page keeps for its rate charts (at [`POLL_MS`], 5 minutes).
pub const HISTORY_POINTS: u64 = 150;
/// Most rows one listing answers (groups, dead letters).
pub const PAGE_MAX: u32 = 100;
/// Rows a listing answers when `limit` is not given.
pub const PAGE_DEFAULT: u32 = 25;
/// Most groups read to rank the top ones by backlog or age; a queue with
/// more is ranked among its first ones in key order (the answer says so).
pub const GROUP_SCAN_MAX: u64 = 5_000;
/// Groups asked for per page while ranking (the core's page bound).
const GROUP_SCAN_PAGE: u32 = 1_000;
/// Largest request body read (a JSON action is a few dozen bytes).
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Most offsets one purge names (the others are refused unread).
pub const PURGE_OFFSETS_MAX: usize = 1_000;
/// Bytes of a dead letter's payload shown (as UTF-8, lossily).
pub const PAYLOAD_PREVIEW_BYTES: usize = 120;
/// Longest query string read.
const QUERY_BYTES_MAX: usize = 4 * 1024;
/// Longest any one API call may take before it answers DEADLINE_EXCEEDED.
pub const CALL_MS_MAX: u64 = 10_000;
/// Longest a follower's dashboard waits for the leader's `Cluster.Status`
/// (for the lag of each node, which only the leader knows).
pub const LEADER_STATUS_MS_MAX: u64 = 2_000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Serves the dashboard on `listener` until `stop` turns true.
/// `services` check every call with the node's auth; `auth` says whether
/// it is on (the page then asks for a token).
pub async fn serve(
    listener: TcpListener,
    services: Services,
    auth: bool,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(services, auth);
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    };
    // With TLS on, the dashboard speaks TLS with the client port's
    // certificate, as the API does; a bearer token never crosses in clear.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = Arc::new(tokio::sync::Semaphore::new(TLS_CONNECTIONS_MAX));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "ui: accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return Ok(()),
        };
        // Past the bound a connection is closed at once.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let (acceptor, app, mut stop) = (acceptor.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let handshake = Duration::from_millis(TLS_HANDSHAKE_MS_MAX);
            let Ok(Ok(stream)) = tokio::time::timeout(handshake, acceptor.accept(stream)).await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stopped(&mut stop) => {}
            }
            drop(permit);
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone); the guard
/// `wait_for` returns is not `Send`, so it is dropped here.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Dashboard connections over TLS served at once; more are closed.
pub const TLS_CONNECTIONS_MAX: usize = 256;
/// How long a TLS handshake on `ui_addr` may take.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 10_000;
/// Pause after a failed accept on `ui_addr`.
const ACCEPT_RETRY_MS: u64 = 100;

/// The dashboard's routes over `services`.
pub fn router(services: Services, auth: bool) -> axum::Router {
    let leader = Arc::new(LeaderLink::default());
    axum::Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route(
            "/api/ui",
            get(move |state: State<Services>| ui_bounds(state, auth)),
        )
        .route(
            "/api/cluster",
            get(move |state: State<Services>, headers: HeaderMap| {
                cluster(state, headers, leader.clone())
            }),
        )
        .route("/api/queues", get(queues))
        .route("/api/groups", get(groups))
        .route("/api/groups/pause", post(pause))
        .route("/api/groups/resume", post(resume))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/requeue", post(requeue))
        .route("/api/dead-letters/purge", post(purge))
        .fallback(|| async {
            ApiError::new(Code::NotFound, "no such page or API call").into_response()
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(services)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // The page loads nothing from anywhere else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
        ],
        body,
    )
        .into_response()
}

/// An API error: a gRPC code and a message naming what is wrong.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
}

impl ApiError {
    fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    fn invalid(name: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            Code::InvalidArgument,
            format!("invalid argument `{name}`: {message}"),
        )
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        ApiError::new(status.code(), status.message())
    }
}

/// The HTTP status that says what `code` says.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": crate::metrics::layer::code_name(self.code), "message": self.message}});
        let mut response = (http_status(self.code), body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A JSON answer.
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            self.0.to_string(),
        )
            .into_response()
    }
}

type ApiResult = Result<Json, ApiError>;

/// A gRPC request carrying the browser's `Authorization` header as its
/// metadata (the only header passed on).
fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let mut only = HeaderMap::new();
        only.insert(header::AUTHORIZATION, value.clone());
        *request.metadata_mut() = MetadataMap::from_headers(only);
    }
    request
}

/// Runs one handler call within [`CALL_MS_MAX`].
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(Duration::from_millis(CALL_MS_MAX), call).await {
        Ok(result) => Ok(result?.into_inner()),
        Err(_) => Err(ApiError::new(
            Code::DeadlineExceeded,
            format!("no answer within CALL_MS_MAX = {CALL_MS_MAX} ms; retry"),
        )),
    }
}

/// The query string's parameters, each allowed name at most once; an
/// unknown or repeated name is refused, naming it.
fn query(raw: Option<String>, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > QUERY_BYTES_MAX {
        return Err(ApiError::invalid(
            "query",
            format!(
                "{} bytes, more than QUERY_BYTES_MAX = {QUERY_BYTES_MAX}",
                raw.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name).ok_or_else(|| ApiError::invalid(name, "bad %-escape"))?;
        let value =
            percent_decode(value).ok_or_else(|| ApiError::invalid(&name, "bad %-escape"))?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::invalid(
                &name,
                format!("unknown parameter; this call takes {}", allowed.join(", ")),
            ));
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(ApiError::invalid(&name, "given more than once"));
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A required, non-empty text parameter.
fn required(params: &BTreeMap<String, String>, name: &str) -> Result<String, ApiError> {
    match params.get(name) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(ApiError::invalid(name, "required")),
    }
}

/// `limit`: 1..=[`PAGE_MAX`], [`PAGE_DEFAULT`] when absent.
fn limit(params: &BTreeMap<String, String>) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(PAGE_DEFAULT),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                format!("`{v}` is not a whole number in 1..=PAGE_MAX = {PAGE_MAX}"),
            )),
        },
    }
}

/// The JSON body of an action, as `T`; a body that is not is refused
/// naming what was expected.
fn body<T: for<'de> Deserialize<'de>>(
    bytes: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|e| {
        ApiError::invalid(
            "body",
            format!("cannot be read ({e}); at most BODY_BYTES_MAX = {BODY_BYTES_MAX} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("expected JSON {shape}: {e}")))
}

/// The page's bounds, so the page never hard-codes them.
async fn ui_bounds(State(services): State<Services>, auth: bool) -> Json {
    Json(json!({
        "node_id": services.node.id,
        "poll_ms": POLL_MS,
        "history_points": HISTORY_POINTS,
        "page_max": PAGE_MAX,
        "page_default": PAGE_DEFAULT,
        "group_scan_max": GROUP_SCAN_MAX,
        "auth": auth,
    }))
}

/// A channel to the leader's client port, kept while the leader stays.
#[derive(Debug, Default)]
struct LeaderLink {
    channel: Mutex<Option<(String, tonic::transport::Channel)>>,
}

impl LeaderLink {
    /// `Cluster.Status` from the leader at `addr`, with the browser's
    /// token, within [`LEADER_STATUS_MS_MAX`]; None if it does not answer.
    async fn status(&self, addr: &str, headers: &HeaderMap) -> Option<pb::StatusResponse> {
        let channel = {
            let mut kept = self.channel.lock().ok()?;
            match &*kept {
                Some((a, c)) if a == addr => c.clone(),
                _ => {
                    let limit = Duration::from_millis(LEADER_STATUS_MS_MAX);
                    let c = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .ok()?
                        .connect_timeout(limit)
                        .timeout(limit)
                        .connect_lazy();
                    *kept = Some((addr.to_string(), c.clone()));
                    c
                }
            }
        };
        let mut client = pb::cluster_client::ClusterClient::new(channel);
        let call = client.status(request(headers, pb::StatusRequest { read: None }));
        match tokio::time::timeout(Duration::from_millis(LEADER_STATUS_MS_MAX), call).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }
}

/// `Cluster.Status` of this node. Each node's matched index and lag are
/// the leader's: on a follower they come from the leader's own status
/// (`lag_from` says which node's they are; null when it did not answer).
async fn cluster(
    State(services): State<Services>,
    headers: HeaderMap,
    leader: Arc<LeaderLink>,
) -> ApiResult {
    let s = bounded(services.status(request(&headers, pb::StatusRequest { read: None }))).await?;
    let leader_client_addr = s
        .members
        .iter()
        .find(|m| Some(m.id) == s.leader_id)
        .map(|m| m.client_addr.clone());
    let mut progress: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut lag_from = None;
    if s.leader_id == Some(s.node_id) {
        lag_from = Some(s.node_id);
        progress.extend(s.members.iter().map(|m| (m.id, (m.matched_index, m.lag))));
    } else if let (Some(id), Some(addr)) = (s.leader_id, &leader_client_addr) {
        if let Some(l) = leader.status(addr, &headers).await {
            if l.leader_id == Some(l.node_id) && l.node_id == id {
                lag_from = Some(id);
                progress.extend(l.members.iter().map(|m| (m.id, (m.matched_index, m.lag))));
            }
        }
    }
    Ok(Json(json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "leader_client_addr": leader_client_addr,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "state_digest": s.state_digest,
        "vote_guarded": s.vote_guarded,
        "lag_from": lag_from,
        "members": s.members.iter().map(|m| {
            let (matched, lag) = progress.get(&m.id).copied().unzip();
            json!({
                "id": m.id,
                "peer_addr": m.peer_addr,
                "client_addr": m.client_addr,
                "role": m.role,
                "matched_index": matched,
                "lag": lag,
            })
        }).collect::<Vec<_>>(),
    })))
}

/// `ListQueues`, with each queue's running totals (enqueued, acked, ...)
/// from this node's applied state, as `/metrics` shows them: the page
/// turns successive totals into rates.
async fn queues(
    State(services): State<Services>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = query(raw, &["stale"])?;
    let stale = match params.get("stale").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::invalid(
                "stale",
                format!("`{v}` is not true or false"),
            ))
        }
    };
    let listed = bounded(services.list_queues(request(
        &headers,
        pb::ListQueuesRequest {
            read: Some(pb::ReadOptions { stale }),
        },
    )))
    .await?;
    let totals: BTreeMap<String, lockstep_core::Counters> = services
        .node
        .state
        .read(|s| s.list_queues())
        .map(|qs| qs.into_iter().map(|q| (q.name, q.stats.counters)).collect())
        .unwrap_or_default();
    let queues: Vec<Value> = listed
        .queues
        .into_iter()
        .map(|q| {
            let s = q.stats.unwrap_or_default();
            let c = totals.get(&q.name).cloned().unwrap_or_default();
            json!({
                "name": q.name,
                "ready": s.ready,
                "delayed": s.delayed,
                "leased": s.leased,
                "dead": s.dead,
                "bytes": s.bytes,
                "ack_floor": s.ack_floor,
                "next_offset": s.next_offset,
                "oldest_ready_age_ms": s.oldest_ready_age_ms,
                "groups": s.groups,
                "totals": {
                    "enqueued": c.enqueued,
                    "delivered": c.delivered,
                    "redelivered": c.redelivered,
                    "acked": c.acked,
                    "nacked": c.nacked,
                    "expired": c.expired,
                    "dead_lettered": c.dead_lettered,
                },
            })
        })
        .collect();
    Ok(Json(
        json!({ "node_id": services.node.id, "queues": queues }),
    ))
}

/// `ListGroups`: with `sort=key` (the default) one page in key order from
/// `after`; with `sort=backlog` or `sort=age`, the top `limit` of the
/// first [`GROUP_SCAN_MAX`] groups that match.
async fn groups(
    State(services): State<Services>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = query(
        raw,
        &["queue", "prefix", "status", "sort", "after", "limit"],
    )?;
    let queue = required(&params, "queue")?;
    let limit = limit(&params)?;
    let status = match params.get("status").map(String::as_str).unwrap_or("any") {
        "any" => pb::GroupStatus::Any,
        "leased" => pb::GroupStatus::Leased,
        "paused" => pb::GroupStatus::Paused,
        "waiting" => pb::GroupStatus::Waiting,
        v => {
            return Err(ApiError::invalid(
                "status",
                format!("`{v}` is not one of any, leased, paused, waiting"),
            ))
        }
    };
    let sort = params.get("sort").map(String::as_str).unwrap_or("key");
    if !["key", "backlog", "age"].contains(&sort) {
        return Err(ApiError::invalid(
            "sort",
            format!("`{sort}` is not one of key, backlog, age"),
        ));
    }
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let list = |after: String, limit: u32| {
        services.list_groups(request(
            &headers,
            pb::ListGroupsRequest {
                subscription: String::new(),
                queue: queue.clone(),
                key_prefix: prefix.clone(),
                status: status as i32,
                after,
                limit,
                read: None,
            },
        ))
    };
    if sort == "key" {
        let after = params.get("after").cloned().unwrap_or_default();
        let page = bounded(list(after, limit)).await?;
        return Ok(Json(json!({
            "groups": page.groups.iter().map(group_json).collect::<Vec<_>>(),
            "next_after": page.next_after,
            "scanned": page.groups.len(),
            "truncated": false,
        })));
    }
    if params.contains_key("after") {
        return Err(ApiError::invalid(
            "after",
            "only with sort=key (a ranking has no pages)",
        ));
    }
    let mut all: Vec<pb::GroupInfo> = Vec::new();
    let mut after = String::new();
    let mut truncated = false;
    // Bounded: at most GROUP_SCAN_MAX / GROUP_SCAN_PAGE + 1 pages.
    loop {
        let left = GROUP_SCAN_MAX.saturating_sub(all.len() as u64);
        if left == 0 {
            truncated = true;
            break;
        }
        let page = bounded(list(after, GROUP_SCAN_PAGE.min(left as u32))).await?;
        all.extend(page.groups);
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    let scanned = all.len();
    if sort == "backlog" {
        all.sort_by(|a, b| b.backlog.cmp(&a.backlog).then(a.key.cmp(&b.key)));
    } else {
        all.sort_by(|a, b| b.head_age_ms.cmp(&a.head_age_ms).then(a.key.cmp(&b.key)));
    }
    all.truncate(limit as usize);
    Ok(Json(json!({
        "groups": all.iter().map(group_json).collect::<Vec<_>>(),
        "next_after": "",
        "scanned": scanned,
        "truncated": truncated,
    })))
}

fn group_json(g: &pb::GroupInfo) -> Value {
    json!({
        "key": g.key,
        "backlog": g.backlog,
        "head_offset": g.head_offset,
        "head_age_ms": g.head_age_ms,
        "lease_holder": g.lease_holder,
        "attempts": g.attempts,
        "paused": g.paused,
        "parked_reason": g.parked_reason,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupAction {
    queue: String,
    group: String,
}

const GROUP_SHAPE: &str = r#"{"queue": "<name>", "group": "<key>"}"#;

async fn pause(
    State(services): State<Services>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let a: GroupAction = body(bytes, GROUP_SHAPE)?;
    bounded(services.pause_group(request(
        &headers,
        pb::PauseGroupRequest {
            subscription: String::new(),
            queue: a.queue,
            group: a.group,
            session: None,
        },
    )))
    .await?;
    Ok(Json(json!({"paused": true})))
}

async fn resume(
    State(services): State<Services>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let a: GroupAction = body(bytes, GROUP_SHAPE)?;
    bounded(services.resume_group(request(
        &headers,
        pb::ResumeGroupRequest {
            subscription: String::new(),
            queue: a.queue,
            group: a.group,
            session: None,
        },
    )))
    .await?;
    Ok(Json(json!({"resumed": true})))
}

/// `ListDeadLetters`: one page from `after`, each with its reason, its
/// attempt history and the start of its payload.
async fn dead_letters(
    State(services): State<Services>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = query(raw, &["queue", "after", "limit"])?;
    let queue = required(&params, "queue")?;
    let limit = limit(&params)?;
    let after = match params.get("after") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid("after", format!("`{v}` is not an offset")))?,
        ),
    };
    let page = bounded(services.list_dead_letters(request(
        &headers,
        pb::ListDeadLettersRequest {
            subscription: String::new(),
            queue,
            after,
            limit,
            read: None,
        },
    )))
    .await?;
    let rows: Vec<Value> = page
        .dead_letters
        .iter()
        .map(|d| {
            let shown = &d.payload[..d.payload.len().min(PAYLOAD_PREVIEW_BYTES)];
            json!({
                "offset": d.offset,
                "id": d.id,
                "group": d.group,
                "attempts": d.attempts,
                "reason": d.reason,
                "enqueued_ms": d.enqueued_ms,
                "dead_ms": d.dead_ms,
                "payload_bytes": d.payload.len(),
                "payload_preview": String::from_utf8_lossy(shown),
                "history": d.history.iter().map(|a| json!({
                    "attempt": a.attempt,
                    "fence": a.fence,
                    "at_ms": a.at_ms,
                    "outcome": a.outcome,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        "dead_letters": rows,
        "next_after": page.next_after,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueAction {
    queue: String,
    offset: u64,
}

async fn requeue(
    State(services): State<Services>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let a: RequeueAction = body(bytes, r#"{"queue": "<name>", "offset": <offset>}"#)?;
    let r = bounded(services.requeue_dead_letter(request(
        &headers,
        pb::RequeueDeadLetterRequest {
            subscription: String::new(),
            queue: a.queue,
            offset: a.offset,
            session: None,
        },
    )))
    .await?;
    Ok(Json(json!({"offset": r.offset})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeAction {
    queue: String,
    /// Empty: every dead letter of the queue; the page asks first.
    offsets: Vec<u64>,
}

async fn purge(
    State(services): State<Services>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let a: PurgeAction = body(
        bytes,
        r#"{"queue": "<name>", "offsets": [<offset>, ...] (empty: all)}"#,
    )?;
    if a.offsets.len() > PURGE_OFFSETS_MAX {
        return Err(ApiError::invalid(
            "offsets",
            format!(
                "{} offsets, more than PURGE_OFFSETS_MAX = {PURGE_OFFSETS_MAX}",
                a.offsets.len()
            ),
        ));
    }
    let r = bounded(services.purge_dead_letters(request(
        &headers,
        pb::PurgeDeadLettersRequest {
            subscription: String::new(),
            queue: a.queue,
            offsets: a.offsets,
            session: None,
        },
    )))
    .await?;
    Ok(Json(json!({"purged": r.count})))
}
