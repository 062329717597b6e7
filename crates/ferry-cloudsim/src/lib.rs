//! `ferry cloudsim`: the reference WhatsApp Cloud API server. A real HTTP server speaking the
//! Cloud API's send endpoint (`POST /{version}/{phone_number_id}/messages`) and posting Meta-shaped,
//! signed `messages` webhooks, used by tests, demos and load runs as the far end of ferry's Cloud
//! upstream. Wire types come from `ferry-cloud`; body rules from `ferry-model` (the rules ferry
//! accepts by).
//!
//! Flow of one send (`server.rs`): token → injected faults that take nothing (502, 131000, a
//! dropped connection) → body validation → `--refuse` rules → per-number throughput (130429) →
//! per-pair rate (131056) → **take** → in-doubt faults (a dropped connection or a late answer
//! after taking) → 200 `{"messaging_product","contacts":[{"input","wa_id"}],"messages":[{"id"}]}`.
//! Taking schedules the message's webhooks (`webhooks.rs`): `sent`, `delivered`, `read` (or one
//! `failed` with `errors[]` for invalid recipients and `--fail` rules), each carrying the request's
//! `biz_opaque_callback_data`, plus an inbound reply when `reply_rate` picks the message.
//!
//! Invariants:
//! - **Every taken send is counted once in `messages_taken`**, whether answered 200, answered late
//!   or dropped after taking; a refused or dropped-before send is never taken and posts nothing.
//! - **A marker taken twice is a duplicate**: `unique_messages` counts first takes of each
//!   `biz_opaque_callback_data` (and unmarked sends), `duplicate_messages` every later take.
//!   Like Meta, a duplicate is still delivered (new wamid, new statuses): the simulator observes
//!   duplicates, it does not hide them.
//! - **A refusal takes nothing**: 130429 and 131056 consume no quota of the other limit's state
//!   beyond the throughput cell spent by a send that then hits the pair limit.
//! - **One pair's limit never slows another pair or number**: the pair limiter is keyed by
//!   (phone_number_id, wa_id), the throughput limiter is per number.
//! - **Every webhook is signed** with the app secret, and is posted until the receiver answers
//!   2xx (or the server stops).
//! - Memory: the taken-marker map grows with every unique marker (about 100 bytes each); pair
//!   state is forgotten once a pair is idle (every 30 s).

mod config;
mod server;
mod stats;
mod webhooks;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
pub use config::{CloudSimConfig, CodeRule, DEFAULT_SEED, DEFAULT_TOKEN, NumberSpec};
use hyper::body::Incoming;
pub use stats::{NumberStats, Stats, WebhookStats};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::{DropConnection, Shared};
use crate::stats::Counters;

/// A running reference Cloud API server.
pub struct CloudSim {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The error a fault returns to hyper so that it closes the connection without answering.
#[derive(Debug)]
struct InjectedDrop;

impl std::fmt::Display for InjectedDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cloudsim: injected dropped connection")
    }
}

impl std::error::Error for InjectedDrop {}

impl CloudSim {
    /// Serves on `listener` (tests bind `127.0.0.1:0`) until [`CloudSim::shutdown`].
    ///
    /// Cancel safety: cancel-safe (nothing is served until it returns).
    pub async fn start(listener: TcpListener, config: CloudSimConfig) -> anyhow::Result<CloudSim> {
        config.validate()?;
        let local_addr = listener.local_addr().context("reading the cloudsim listener's address")?;
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let (sender, scheduler) = webhooks::start(&config, counters.clone(), stopped.clone());
        let shared = Arc::new(Shared::new(config, counters, sender));
        let router = server::router(shared.clone());
        let mut tasks = vec![
            tokio::spawn(accept_loop(listener, router, stopped.clone())),
            tokio::spawn(server::housekeeping(shared.clone(), stopped)),
        ];
        tasks.extend(scheduler);
        tracing::info!(%local_addr, "cloudsim serving");
        Ok(CloudSim { local_addr, shared, stop, tasks })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every counter (what `GET /cloudsim/stats` answers).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// How many times a send carrying `biz_opaque_callback_data == marker` was taken.
    pub fn marker_count(&self, marker: &str) -> u32 {
        self.shared.marker_count(marker)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CloudSimConfig {
        &self.shared.config
    }

    /// Stops accepting, cuts every connection (slow answers included) and stops posting webhooks
    /// (pending ones are dropped).
    ///
    /// Cancel safety: cancel-safe (the stop signal is sent first; the tasks end on their own).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Accepts connections and serves each over HTTP/1.1 or HTTP/2 (prior knowledge) until `stop`; a
/// response carrying [`DropConnection`] is never written (its connection or stream is cut).
///
/// Cancel safety: a task's whole body; dropping it (at stop) aborts every connection task.
async fn accept_loop(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        while connections.try_join_next().is_some() {}
        let (io, _peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "cloudsim accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = io.set_nodelay(true);
        let router = router.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut router = router.clone();
                async move {
                    let Ok(response) = tower::Service::call(&mut router, request).await;
                    if response.extensions().get::<DropConnection>().is_some() {
                        return Err(InjectedDrop);
                    }
                    Ok(response)
                }
            });
            // HTTP/1.1, or HTTP/2 when the client opens with its preface (prior knowledge, as
            // `cloud.http2_prior_knowledge` does): Meta serves HTTP/2. An injected drop closes an
            // HTTP/1.1 connection and resets an HTTP/2 stream, both "lost after the body went out".
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "cloudsim connection ended");
            }
        });
    }
    connections.shutdown().await;
}

/// `ferry cloudsim --listen ADDR [knobs]`.
#[derive(Debug, Clone, clap::Args)]
pub struct CloudSimArgs {
    /// Address to serve the Cloud API on.
    #[arg(long, default_value = "127.0.0.1:50071")]
    pub listen: String,
    #[command(flatten)]
    pub config: CloudSimConfig,
}

/// Runs `ferry cloudsim`: binds, prints `cloudsim: listening on ADDR` to stdout once bound, serves
/// until SIGINT or SIGTERM, then shuts down.
///
/// Cancel safety: not meant to be cancelled (it is the process's main future).
pub async fn run_cli(args: CloudSimArgs) -> anyhow::Result<()> {
    args.config.validate()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding the cloudsim listener on {}; expected a free host:port", args.listen))?;
    let cloudsim = CloudSim::start(listener, args.config).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "cloudsim: listening on {}", cloudsim.local_addr())?;
    stdout.flush()?;
    wait_for_termination_signal().await?;
    cloudsim.shutdown().await;
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
