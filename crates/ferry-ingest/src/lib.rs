//! ferry's gRPC ingest: stage "accept" of the pipeline.
//!
//! [`MessagesService`] implements `ferry.v1.Messages`: it converts wire types to domain types
//! (`ferry_proto::convert`), hands them to the [`Coordinator`], and maps every failure through the
//! one error table (`ferry_model::ErrorCode`) to a gRPC status. [`serve`] runs it on a bound
//! listener together with `grpc.health.v1.Health` and server reflection; [`serve_accepted`] runs
//! the same services over connections accepted elsewhere (the TLS streams of `[tls]`).
//!
//! Auth ([`serve_with_auth`]): every call on the port passes [`AccessLayer`], which looks its gRPC
//! path up in the one access table (`ferry_auth::access`: deny by default, anything not named
//! needs role `admin`). Health and reflection are open, for probes and tools; every
//! `ferry.v1.Messages` RPC needs metadata `authorization: Bearer TOKEN` (the tokens of
//! `POST /v1/users/login`, see `ferry-auth`): UNAUTHENTICATED without a valid one,
//! PERMISSION_DENIED (1005) when the role is too low. Each RPC checks its role again
//! ([`required_role`]).
//!
//! Tenancy: a user with `senders` may `Send`/`SendBatch` only as those numbers (an omitted sender
//! is the node's `default_sender`; PERMISSION_DENIED, 1005, field `sender`; in a batch, that
//! message's result), `GetMessage` answers a message of another sender exactly like an unknown id
//! (NOT_FOUND, 1006: it does not reveal that the message exists), and `WatchStatuses` yields only
//! events of its senders (every status event carries its sender). Admins are unrestricted.
//!
//! Bounds ([`decode`], [`GrpcConfig`]): `Send`/`SendBatch` bytes are checked (size, shape,
//! protobuf validity) and charged to an in-flight memory budget before tonic decodes them; the
//! port caps its connections (in all and per source address) and pings idle ones.
//!
//! Invariants: this crate never touches storage (it only awaits the coordinator), and it answers a
//! send only with what the coordinator returned after the durable write. No request it refuses
//! before the coordinator goes uncounted in `ferry_messages_rejected_total`, and no call runs
//! without passing the access layer.

pub mod config;
mod conn;
pub mod decode;
pub mod headers;
pub mod watch;

pub use config::GrpcConfig;

use std::future::Future;

use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

use ferry_auth::access::{Access, Endpoint};
use ferry_auth::{Auth, Principal, Role};
use ferry_coordinator::{Accepted, AfterHold, Coordinator, MessageView, SendCommand, telemetry};
use ferry_model::message::OutboundMessage;
use ferry_model::{ApiError, ErrorCode, MessageStatus};
use ferry_proto::v1::messages_server::{Messages, MessagesServer};
use ferry_proto::v1::{self, send_result};
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::conn::Conn;

/// Most messages in one `SendBatch` (also checked on the wire before decoding: [`decode`]).
pub const MAX_BATCH: usize = ferry_proto::wire::MAX_BATCH;

/// Metadata key carrying the ferry error code on every error status.
pub const ERROR_CODE_METADATA: &str = "ferry-error-code";
/// Metadata key carrying the field path on error statuses about a field.
pub const ERROR_FIELD_METADATA: &str = "ferry-error-field";

pub struct MessagesService {
    coordinator: Arc<Coordinator>,
    /// Becomes true when the server stops accepting: open `WatchStatuses` streams end then, so a
    /// graceful shutdown does not wait for clients that would watch forever.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Re-checks the token of open `WatchStatuses` streams (see [`WATCH_REAUTH_EVERY`]).
    auth: Arc<Auth>,
}

impl MessagesService {
    pub fn new(coordinator: Arc<Coordinator>, stopping: tokio::sync::watch::Receiver<bool>, auth: Arc<Auth>) -> Self {
        MessagesService { coordinator, stopping, auth }
    }
}

/// How often an open `WatchStatuses` stream re-checks its caller's token: a stream outlives the
/// call that opened it, so a logout, a deleted user or an expired token ends it (UNAUTHENTICATED)
/// within this long instead of never.
pub const WATCH_REAUTH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Maps a client-facing error to a gRPC status: the message names the code, field and
/// expectation; the code and field are also in metadata, and the status details hold the
/// encoded `ferry.v1.Error`.
pub fn status_from(e: &ApiError) -> Status {
    let code = tonic::Code::from_i32(e.code.grpc_code() as i32);
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(ERROR_CODE_METADATA, MetadataValue::from(e.code.code()));
    if !e.field.is_empty()
        && let Ok(v) = MetadataValue::try_from(e.field.as_str())
    {
        metadata.insert(ERROR_FIELD_METADATA, v);
    }
    let details = prost::Message::encode_to_vec(&v1::Error::from(e));
    Status::with_details_and_metadata(code, e.to_string(), details.into(), metadata)
}

/// The role an RPC of `ferry.v1.Messages` (by its proto method name, e.g. `Send`) needs, from the
/// access table (open or unnamed RPCs: as the table says, i.e. `admin` when unnamed).
pub fn required_role(rpc: &str) -> Role {
    match ferry_auth::access::required_access(Endpoint::Grpc(&format!("/ferry.v1.Messages/{rpc}"))) {
        Access::Token(role) => role,
        Access::Open => Role::User,
    }
}

/// The tower layer in front of every service on the gRPC port: looks the call's path up in the
/// access table and refuses (UNAUTHENTICATED / PERMISSION_DENIED, with `ferry-error-code`) what
/// the caller's token does not allow; otherwise hands the caller ([`Principal`]) to the RPC in the
/// request's extensions.
#[derive(Clone)]
pub struct AccessLayer {
    auth: Arc<Auth>,
}

impl AccessLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        AccessLayer { auth }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService { inner, auth: self.auth.clone() }
    }
}

/// See [`AccessLayer`].
#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let needed = ferry_auth::access::required_access(Endpoint::Grpc(request.uri().path()));
        if let Access::Token(role) = needed {
            let header = request.headers().get("authorization").map(|v| v.to_str().unwrap_or("\u{fffd}"));
            match self.auth.authorize(header, role) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(e) => return Either::Right(std::future::ready(Ok(status_from(&e.api_error()).into_http()))),
            }
        }
        Either::Left(self.inner.call(request))
    }
}

/// The caller the access layer put in the request.
fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| status_from(&ApiError::new(ErrorCode::Unauthenticated, "", "no authenticated caller")))
}

/// Refuses with PERMISSION_DENIED unless the caller's role allows `rpc` ([`required_role`]).
fn check_role<T>(request: &Request<T>, rpc: &str) -> Result<(), Status> {
    role_allows(request.extensions().get::<Principal>(), rpc, required_role(rpc))
}

fn role_allows(caller: Option<&Principal>, rpc: &str, needed: Role) -> Result<(), Status> {
    match caller {
        Some(p) if p.role.allows(needed) => Ok(()),
        Some(p) => Err(status_from(&ApiError::new(
            ErrorCode::AccessDenied,
            "",
            format!("user `{}` has role `{}`; {rpc} needs role `{}`", p.username, p.role.as_str(), needed.as_str()),
        ))),
        None => Err(status_from(&ApiError::new(ErrorCode::Unauthenticated, "", "no authenticated caller"))),
    }
}

fn command_from(request: v1::SendRequest) -> Result<SendCommand, ApiError> {
    let idempotency_key = Some(request.idempotency_key.clone()).filter(|k| !k.is_empty());
    let sender = Some(request.sender.clone()).filter(|s| !s.is_empty());
    let message = OutboundMessage::try_from(request)?;
    Ok(SendCommand { message, idempotency_key, sender })
}

fn response_from(a: Accepted) -> v1::SendResponse {
    v1::SendResponse {
        message_id: a.message_id.into_string(),
        wa_id: a.wa_id.as_str().to_owned(),
        message_status: if a.held { MessageStatus::HeldForQualityAssessment } else { MessageStatus::Accepted }
            .as_str()
            .into(),
        idempotent_replay: a.idempotent_replay,
    }
}

fn record_from(m: MessageView) -> v1::MessageRecord {
    v1::MessageRecord {
        message_id: m.message_id.into_string(),
        to: m.wa_id.as_str().to_owned(),
        shard: m.shard.0 as u32,
        status: m.status.as_str().to_owned(),
        accepted_at_ms: m.accepted_at_ms,
        expires_at_ms: m.expires_at_ms,
        updated_at_ms: m.updated_at_ms,
        error: m.error.map(|e| v1::Error { code: e.code, title: e.title, field: String::new(), details: e.details }),
        r#type: m.message_type,
        sender: m.sender,
        biz_opaque_callback_data: m.biz_opaque_callback_data,
        upstream_message_id: m.upstream_message_id,
        history: m
            .history
            .into_iter()
            .map(|(status, timestamp_ms)| v1::StatusChange { status: status.as_str().to_owned(), timestamp_ms })
            .collect(),
    }
}

#[tonic::async_trait]
impl Messages for MessagesService {
    type WatchStatusesStream = tokio_stream::wrappers::ReceiverStream<Result<v1::StatusEvent, Status>>;

    async fn watch_statuses(
        &self,
        request: Request<v1::WatchStatusesRequest>,
    ) -> Result<Response<Self::WatchStatusesStream>, Status> {
        check_role(&request, "WatchStatuses")?;
        let principal = caller(&request)?;
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let watch = watch::Watch::new(&self.coordinator, request.into_inner(), principal.senders.as_deref())
            .map_err(|e| status_from(&e))?;
        // Counted until the stream's task ends (the client went away, the token was revoked, the
        // server stops).
        let slot = self.auth.open_watch_stream(&principal).map_err(|e| status_from(&e))?;
        let mut events = watch.start(self.stopping.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let auth = self.auth.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut recheck = tokio::time::interval(WATCH_REAUTH_EVERY);
            recheck.tick().await; // the first tick is now: the access layer just checked
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => {
                            if tx.send(event).await.is_err() {
                                return; // the client went away
                            }
                        }
                        None => return,
                    },
                    _ = tx.closed() => return, // the client went away
                    _ = recheck.tick() => {
                        let needed = required_role("WatchStatuses");
                        match auth.authorize(authorization.as_deref(), needed) {
                            Err(e) => {
                                let _ = tx.send(Err(status_from(&e.api_error()))).await;
                                return;
                            }
                            Ok(now) if now.senders != principal.senders => {
                                let e = ApiError::new(
                                    ErrorCode::AccessDenied,
                                    "",
                                    format!(
                                        "the senders of user `{}` changed: watch again (resume from the last \
                                         cursor) to follow the new list",
                                        principal.username
                                    ),
                                );
                                let _ = tx.send(Err(status_from(&e))).await;
                                return;
                            }
                            Ok(_) => {}
                        }
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn send(&self, request: Request<v1::SendRequest>) -> Result<Response<v1::SendResponse>, Status> {
        check_role(&request, "Send")?;
        let principal = caller(&request)?;
        let request = request.into_inner();
        let command =
            self.auth.check_sender(&principal, Some(&request.sender)).and_then(|()| command_from(request)).map_err(
                |e| {
                    telemetry::note_rejected(&e);
                    status_from(&e)
                },
            )?;
        match self.coordinator.send(command).await {
            Ok(a) => Ok(Response::new(response_from(a))),
            Err(e) => Err(status_from(&e)),
        }
    }

    async fn send_batch(
        &self,
        request: Request<v1::SendBatchRequest>,
    ) -> Result<Response<v1::SendBatchResponse>, Status> {
        check_role(&request, "SendBatch")?;
        let principal = caller(&request)?;
        let messages = request.into_inner().messages;
        if messages.is_empty() || messages.len() > MAX_BATCH {
            let e = ApiError::invalid(
                "messages",
                format_args!("between 1 and {MAX_BATCH} messages in one batch, got {}", messages.len()),
            );
            telemetry::note_rejected(&e);
            return Err(status_from(&e));
        }
        let n = messages.len();
        let mut results: Vec<Option<v1::SendResult>> = vec![None; n];
        let mut commands = Vec::with_capacity(n);
        let mut command_index = Vec::with_capacity(n);
        for (i, m) in messages.into_iter().enumerate() {
            match self.auth.check_sender(&principal, Some(&m.sender)).and_then(|()| command_from(m)) {
                Ok(c) => {
                    commands.push(c);
                    command_index.push(i);
                }
                Err(e) => {
                    telemetry::note_rejected(&e);
                    results[i] = Some(error_result(&e));
                }
            }
        }
        let outcomes = self.coordinator.send_many(commands).await;
        for (i, outcome) in command_index.into_iter().zip(outcomes) {
            results[i] = Some(match outcome {
                Ok(a) => v1::SendResult { outcome: Some(send_result::Outcome::Accepted(response_from(a))) },
                Err(e) => error_result(&e),
            });
        }
        Ok(Response::new(v1::SendBatchResponse {
            results: results.into_iter().map(|r| r.expect("every message has a result")).collect(),
        }))
    }

    async fn resolve_held(
        &self,
        request: Request<v1::ResolveHeldRequest>,
    ) -> Result<Response<v1::ResolveHeldResponse>, Status> {
        check_role(&request, "ResolveHeld")?;
        let request = request.into_inner();
        let action = match v1::HeldAction::try_from(request.action) {
            Ok(v1::HeldAction::Release) => AfterHold::Release,
            Ok(v1::HeldAction::Drop) => AfterHold::Drop,
            _ => {
                let e = ApiError::invalid(
                    "action",
                    format_args!("HELD_ACTION_RELEASE (1) or HELD_ACTION_DROP (2), got {}", request.action),
                );
                return Err(status_from(&e));
            }
        };
        let counts =
            self.coordinator.resolve_held(&request.template_name, action).await.map_err(|e| status_from(&e))?;
        Ok(Response::new(v1::ResolveHeldResponse {
            released: counts.released,
            dropped: counts.dropped,
            expired: counts.expired,
        }))
    }

    async fn get_message(
        &self,
        request: Request<v1::GetMessageRequest>,
    ) -> Result<Response<v1::MessageRecord>, Status> {
        check_role(&request, "GetMessage")?;
        let principal = caller(&request)?;
        let id = request.into_inner().message_id;
        if id.is_empty() {
            return Err(status_from(&ApiError::missing("message_id")));
        }
        // A point read may touch disk: keep it off the async workers.
        let coordinator = self.coordinator.clone();
        let unknown = unknown_message(&id);
        let found = tokio::task::spawn_blocking(move || coordinator.get_message(&id))
            .await
            .map_err(|e| status_from(&ApiError::new(ErrorCode::Internal, "", e.to_string())))?;
        match found {
            // Another sender's message is answered exactly like an id that does not exist.
            Ok(m) if !principal.may_read(&m.sender) => Err(status_from(&unknown)),
            Ok(m) => Ok(Response::new(record_from(m))),
            Err(e) => Err(status_from(&e)),
        }
    }
}

/// The answer to `GetMessage` of an id that does not exist on this node (the coordinator's words):
/// also the answer for a message the caller may not read.
fn unknown_message(message_id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, "message_id", format!("no message with id `{message_id}` on this node"))
}

fn error_result(e: &ApiError) -> v1::SendResult {
    v1::SendResult { outcome: Some(send_result::Outcome::Error(v1::Error::from(e))) }
}

/// Serves `ferry.v1.Messages`, `grpc.health.v1.Health` and reflection on `listener` until
/// `shutdown` resolves; then stops accepting and finishes in-flight calls.
///
/// Health: `ferry.v1.Messages` (and the server as a whole, service `""`) report `SERVING` while
/// the node accepts and `NOT_SERVING` from the moment `shutdown` resolves (the drain). No auth: for in-process tests; `ferry serve` uses
/// [`serve_with_auth`].
pub async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with_auth(listener, coordinator, Arc::new(Auth::disabled()), GrpcConfig::default(), shutdown).await
}

/// [`serve`] with every call checked by `auth` ([`AccessLayer`]) and the connection limits of
/// `limits` (`[grpc]`).
///
/// Cancel-safety: not cancel-safe (dropping it stops the server without draining).
pub async fn serve_with_auth(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    auth: Arc<Auth>,
    limits: GrpcConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let caps = ferry_http::limits::ConnectionCaps::new(limits.max_connections, limits.max_connections_per_address);
    let preface_timeout = std::time::Duration::from_secs(limits.read_timeout_secs);
    let incoming = futures_util::stream::unfold(listener, move |listener| {
        let caps = caps.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        // Over a cap: closed at once.
                        let Some(slot) = caps.admit(peer.ip()) else { continue };
                        // No Nagle: an answer is one small frame, and delaying it for the client's
                        // delayed ACK costs ~40 ms per call at low concurrency.
                        let _ = stream.set_nodelay(true);
                        let info = tonic::transport::server::Connected::connect_info(&stream);
                        let conn = Conn::new(stream, info, slot, preface_timeout);
                        return Some((Ok::<_, std::io::Error>(conn), listener));
                    }
                    Err(e) => {
                        // E.g. out of file descriptors: do not spin.
                        tracing::warn!(error = %e, "grpc accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    serve_incoming(incoming, coordinator, auth, limits, shutdown).await
}

/// [`serve_with_auth`] over connections accepted elsewhere, e.g. TLS streams whose handshake is done
/// (`ferry_http::tls::accept`, `[tls]`). Ends when `shutdown` resolves.
///
/// Cancel-safety: not cancel-safe (dropping it stops the server without draining).
pub async fn serve_accepted<IO>(
    accepted: tokio::sync::mpsc::Receiver<(IO, std::net::SocketAddr)>,
    coordinator: Arc<Coordinator>,
    auth: Arc<Auth>,
    limits: GrpcConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt;
    let caps = ferry_http::limits::ConnectionCaps::new(limits.max_connections, limits.max_connections_per_address);
    let preface_timeout = std::time::Duration::from_secs(limits.read_timeout_secs);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted).filter_map(move |(io, peer)| {
        // Over a cap: closed at once (dropped).
        let slot = caps.admit(peer.ip())?;
        let info = tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(peer) };
        Some(Ok::<_, std::io::Error>(Conn::new(io, info, slot, preface_timeout)))
    });
    serve_incoming(incoming, coordinator, auth, limits, shutdown).await
}

/// The descriptor sets reflection serves (it adds its own, `grpc.reflection.v1`): what the port
/// says it offers, and what the access-table test walks.
pub const REFLECTED_DESCRIPTOR_SETS: &[&[u8]] =
    &[ferry_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET];

async fn serve_incoming<I, IO, IE>(
    incoming: I,
    coordinator: Arc<Coordinator>,
    auth: Arc<Auth>,
    limits: GrpcConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MessagesServer<MessagesService>>().await;
    let reflection = REFLECTED_DESCRIPTOR_SETS
        .iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, set| b.register_encoded_file_descriptor_set(set))
        .build_v1()
        .expect("descriptor sets are valid");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        // Health checkers see the drain before the listener closes.
        health_reporter.set_not_serving::<MessagesServer<MessagesService>>().await;
        health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let _ = stop.send(true);
    };
    let budget = decode::InflightBudget::new(
        limits.max_inflight_request_bytes,
        limits.max_inflight_request_bytes_per_connection,
    );
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // h2 answers a header block over this with a bare 431; ferry's own, lower limit answers
        // in gRPC's shape first (`headers.rs`).
        .http2_max_header_list_size(headers::h2_header_list_limit(limits.max_header_list_bytes))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(limits.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(limits.keepalive_timeout_secs)))
        // h2's default (20) closes a connection after 20 streams reset before the server took
        // them: a client whose calls are cut by short deadlines lost every other call on its
        // channel with it. Bounded by the stream cap instead (still a bound on rapid resets).
        .http2_max_pending_accept_reset_streams(Some(limits.max_concurrent_streams as usize))
        .concurrency_limit_per_connection(limits.max_concurrent_requests_per_connection)
        // Outermost: oversized metadata is refused before anything reads it.
        .layer(headers::HeaderLimitLayer::new(limits.max_header_list_bytes))
        .layer(AccessLayer::new(auth.clone()))
        // Behind the access layer: only authenticated callers' bodies are read.
        .layer(decode::DecodeLimitLayer::new(budget, std::time::Duration::from_secs(limits.read_timeout_secs)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            MessagesServer::new(MessagesService::new(coordinator, stopping, auth))
                .max_decoding_message_size(decode::MAX_BATCH_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    /// Deny by default, checked: every method of every service the port describes (reflection's
    /// descriptor sets) is named by the access table, except the chat protocol's services, which
    /// `ferry-proto` describes but this port does not serve (they are admin-only here, as anything
    /// unnamed).
    #[test]
    fn the_access_table_names_every_grpc_method() {
        use prost::Message as _;
        const NOT_SERVED_HERE: &[&str] = &["ferry.chat.v1.Chat", "ferry.chat.v1.ChatAdmin"];
        let mut sets: Vec<&[u8]> = REFLECTED_DESCRIPTOR_SETS.to_vec();
        sets.push(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
        let mut methods = Vec::new();
        let mut services = Vec::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(set).expect("a valid descriptor set");
            for file in set.file {
                for service in &file.service {
                    let name = format!("{}.{}", file.package(), service.name());
                    services.push(name.clone());
                    if NOT_SERVED_HERE.contains(&name.as_str()) {
                        continue;
                    }
                    for m in &service.method {
                        let path = format!("/{name}/{}", m.name());
                        assert!(
                            ferry_auth::access::is_named(Endpoint::Grpc(&path)),
                            "{path} is served but not named in ferry_auth::access::ACCESS_TABLE"
                        );
                        methods.push(path);
                    }
                }
            }
        }
        for name in NOT_SERVED_HERE {
            assert!(services.iter().any(|s| s == name), "{name} is no longer described: drop it from the list");
        }
        for served in ["ferry.v1.Messages", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
            assert!(services.iter().any(|s| s == served), "{served} is not described");
        }
        for (e, _) in ferry_auth::access::ACCESS_TABLE {
            if let Endpoint::Grpc(path) = e {
                assert!(methods.iter().any(|m| m == path), "{path} is in the access table but not served");
            }
        }
    }

    #[test]
    fn a_role_too_low_is_permission_denied_and_no_caller_unauthenticated() {
        let user = Principal { username: "bob".into(), role: Role::User, senders: None };
        let admin = Principal { username: "root".into(), role: Role::Admin, senders: None };
        assert!(role_allows(Some(&user), "Send", required_role("Send")).is_ok());
        assert!(role_allows(Some(&admin), "ResolveHeld", Role::Admin).is_ok());
        let denied = role_allows(Some(&user), "ResolveHeld", Role::Admin).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("needs role `admin`"), "{}", denied.message());
        assert_eq!(denied.metadata().get(ERROR_CODE_METADATA).unwrap(), "1005");
        let none = role_allows(None, "Send", Role::User).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
    }
}
