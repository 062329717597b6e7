//! `ferry chatsim`: the reference chat server. A real tonic server speaking `ferry.chat.v1.Chat` and
//! `ferry.chat.v1.ChatAdmin`, used by tests, demos and load tests as the far end of ferry's delivery
//! loop. It simulates every recipient whose id is a plausible wa_id (8 to 15 digits), with keys
//! derived from the configured seed (so a restarted chatsim keeps them).
//!
//! Flow of one envelope on a `Deliver` stream (`service.rs`): fault rolls (disconnect, temporary
//! error) → recipient checks (invalid, then the per-user marketing limit of `marketing_limit_prefix`)
//! → dedup of byte-identical resends → per-recipient rate limit →
//! find or set up the receiving session and decrypt → ack → schedule `delivered`/`read` receipts on
//! the stream's channel (`receipts.rs`).
//!
//! Invariants:
//! - **Nothing is acked that did not decrypt and authenticate** (apart from a byte-identical resend
//!   of an envelope that did, acked as a duplicate). A failure is `SESSION_UNKNOWN`: re-key, resend.
//! - **Every envelope gets exactly one `EnvelopeResult`**, except when the `disconnect_rate` fault
//!   ends the stream instead.
//! - **A message id is delivered once**: the first ack counts `unique_messages` and schedules
//!   receipts; later acks of the id are `duplicate = true`, counted, and schedule nothing.
//! - **A receipt is pushed until acked**: kept per (client_id, channel) until a `ReceiptAck` names
//!   it, and pushed again to the next stream with the same `Hello` (up to a per-channel cap).
//! - **A byte-identical resend is recognised**, not decrypted (its counter is spent): the first and
//!   the latest acked envelope of each id are remembered by a 64-bit digest and acked as duplicates.
//! - A forged or damaged first message of a session does not burn the recipient's one-time pre-key
//!   (`ReceivingSession::accept_first_message`); a restarted chatsim with the same seed re-derives
//!   every recipient's keys, so existing sessions keep decrypting (within `MAX_SKIP`).
//! - Rate and marketing limits are checked before decrypting, so a refused envelope spends no
//!   receiving state.
//! - Memory: the acked-id set grows with every unique message (about 100 bytes each; a load test of
//!   millions of messages needs that much); sessions are capped at 16 per recipient and pending
//!   receipts per channel by `max_pending_receipts_per_channel`.
//! - No global lock on the hot path: per-recipient state is sharded, counters are atomics, the
//!   channel map is only touched at `Hello`.
//! - `History` costs the hot path next to nothing: a channel records each accepted (term, leader)
//!   at `Hello` and, once per stream, its first ack and first delivery (capped at 256 pairs per
//!   channel); the per-recipient order is read from the acked-id map at call time (each acked id
//!   carries a 4-byte sender index), listing at most 50,000 ids.

mod config;
mod counters;
mod receipts;
mod recipients;
mod service;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
pub use config::{ChatSimConfig, DEFAULT_SEED};
use ferry_proto::chat::v1::chat_admin_server::ChatAdminServer;
use ferry_proto::chat::v1::chat_server::ChatServer;
use ferry_proto::chat::v1::{HistoryResponse, StatsResponse};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::{ChatService, Shared};

/// How long [`ChatSim::shutdown`] waits for connections to close before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running reference chat server.
pub struct ChatSim {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ChatSim {
    /// Serves on `listener` (tests bind `127.0.0.1:0`) until [`ChatSim::shutdown`].
    ///
    /// Cancel safety: cancel-safe (nothing is served until it returns).
    pub async fn start(listener: TcpListener, config: ChatSimConfig) -> anyhow::Result<ChatSim> {
        config.validate()?;
        let local_addr = listener.local_addr().context("reading the chatsim listener's address")?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared::new(config, stopped.clone()));
        let service = ChatService { shared: shared.clone() };
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut stopped_for_server = stopped;
        // Health and reflection, as `ferry serve` has: grpcurl and dynamic clients read `Stats`
        // without the .proto files.
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<ChatServer<ChatService>>().await;
        health_reporter.set_serving::<ChatAdminServer<ChatService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ChatServer::new(service.clone()))
                .add_service(ChatAdminServer::new(service))
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped_for_server.wait_for(|stop| *stop).await;
                }),
        );
        tracing::info!(%local_addr, "chatsim serving");
        Ok(ChatSim { local_addr, shared, stop, server })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every counter (what `ChatAdmin/Stats` answers).
    pub fn stats(&self) -> StatsResponse {
        self.shared.counters.snapshot()
    }

    /// The message ids delivered to `recipient` (a wa_id), in the order they were first acked: what
    /// the recipient saw. Tests use it to check per-recipient ordering.
    pub fn delivery_order(&self, recipient: &str) -> Vec<String> {
        self.shared.recipients.delivery_order(recipient)
    }

    /// What `ChatAdmin/History` answers: every channel's (term, leader) pairs with their first
    /// acks, and (with `recipients`) every (sender, recipient)'s ids in first-ack order (bounded).
    pub fn history(&self, recipients: bool) -> HistoryResponse {
        self.shared.history(recipients)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ChatSimConfig {
        &self.shared.config
    }

    /// Stops accepting, ends every stream, and waits (up to a grace period) for connections to close.
    ///
    /// Cancel safety: cancel-safe (the stop signal is sent first; the server task ends on its own).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut server = self.server;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "chatsim server ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "chatsim server task failed"),
            Err(_) => {
                tracing::warn!("chatsim connections still open after the grace period; cutting them");
                server.abort();
            }
        }
    }
}

/// `ferry chatsim --listen ADDR [knobs]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatSimArgs {
    /// Address to serve the chat protocol on.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: String,
    #[command(flatten)]
    pub config: ChatSimConfig,
}

/// Runs `ferry chatsim`: binds, prints `chatsim: listening on ADDR` to stdout once bound, serves
/// until SIGINT or SIGTERM, then shuts down.
///
/// Cancel safety: not meant to be cancelled (it is the process's main future).
pub async fn run_cli(args: ChatSimArgs) -> anyhow::Result<()> {
    args.config.validate()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding the chatsim listener on {}; expected a free host:port", args.listen))?;
    let chatsim = ChatSim::start(listener, args.config).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "chatsim: listening on {}", chatsim.local_addr())?;
    stdout.flush()?;
    wait_for_termination_signal().await?;
    chatsim.shutdown().await;
    Ok(())
}

async fn wait_for_termination_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
    Ok(())
}
