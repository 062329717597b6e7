//! The `ferry` command: `serve` runs a node, `send` and `get` talk to one over gRPC,
//! `chatsim` runs the reference chat server, `loadgen` drives load, `config check` validates a config file.

mod config;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_coordinator::Coordinator;
use ferry_coordinator::WindowPolicy;
use ferry_delivery::DeliveryEngine;
use ferry_proto::v1::messages_client::MessagesClient;
use ferry_proto::v1::{self, send_request::Content};

use crate::config::{FerryConfig, Overrides};

/// mimalloc instead of glibc's malloc: the delivery path allocates and frees many short-lived
/// buffers (frames, records, envelopes) across threads; with glibc, malloc/free/consolidate were
/// about a fifth of the CPU of an end-to-end run (`perf record` on `delivery_e2e`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Durable, sharded delivery engine for business messages")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (embedded defaults: ./data, 8 shards, gRPC on 127.0.0.1:50051).
    Serve(Overrides),
    /// Send a text (or template) message and print its id.
    Send(SendArgs),
    /// Print the stored record of a message as JSON.
    Get(GetArgs),
    /// Follow status changes (WatchStatuses) and print each as a JSON line, with its resume cursor.
    Watch(WatchArgs),
    /// Drive a ferry node with load over gRPC and report accepted/acked msg/s and latencies.
    Loadgen(ferry_loadgen::LoadgenArgs),
    /// Run the reference chat server (decrypts and acks envelopes, sends receipts, fault knobs).
    Chatsim(ferry_chatsim::ChatSimArgs),
    /// Validate a config file and print the effective config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE and print the effective config (defaults filled in) as TOML.
    Check { file: std::path::PathBuf },
}

#[derive(clap::Args)]
struct SendArgs {
    /// gRPC address of a ferry node.
    #[arg(long, env = "FERRY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Recipient phone number, e.g. "+1 (631) 555-1234".
    #[arg(long)]
    to: String,
    /// Text body.
    #[arg(long, required_unless_present = "template", conflicts_with = "template")]
    text: Option<String>,
    /// Send this template (no parameters) instead of a text; needs no customer-service window.
    #[arg(long)]
    template: Option<String>,
    /// Language code of `--template`.
    #[arg(long, default_value = "en_US", requires = "template")]
    language: String,
    /// Ask for a link preview.
    #[arg(long)]
    preview_url: bool,
    /// Idempotency key: resending with the same key returns the first id.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Business number to send from (default: the node's default sender).
    #[arg(long)]
    sender: Option<String>,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// gRPC address of a ferry node.
    #[arg(long, env = "FERRY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Only this recipient's messages.
    #[arg(long)]
    recipient: Option<String>,
    /// Only these messages (repeatable).
    #[arg(long = "message-id")]
    message_ids: Vec<String>,
    /// Resume after the event that printed this cursor.
    #[arg(long, conflicts_with = "from_oldest")]
    cursor: Option<String>,
    /// Start from the oldest retained event instead of now.
    #[arg(long)]
    from_oldest: bool,
}

#[derive(clap::Args)]
struct GetArgs {
    /// gRPC address of a ferry node.
    #[arg(long, env = "FERRY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// The message id (`wamid.…`).
    message_id: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(o) => serve(o).await,
            Command::Send(a) => send(a).await,
            Command::Get(a) => get(a).await,
            Command::Watch(a) => watch(a).await,
            Command::Loadgen(a) => ferry_loadgen::run(a).await.map(|report| print!("{}", report.summary())),
            Command::Chatsim(a) => {
                init_logging("info");
                ferry_chatsim::run_cli(a).await
            }
            Command::Config { command: ConfigCommand::Check { file } } => config_check(file),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// signal → stop accepting → let in-flight calls finish → stop delivery (settled outcomes are
/// written) → stop the in-process chat server → shards commit what they took → exit.
async fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let config = FerryConfig::load(&overrides)?;
    init_logging(&config.log);
    let addr = config.grpc_addr()?;
    // `[tls]`: the files were checked by `load`; read them once for both listeners.
    let tls = config.tls.load()?;
    if tls.is_some() {
        tracing::info!("tls on: the http and grpc listeners serve TLS only");
    }
    let coordinator = Arc::new(
        Coordinator::open(&config.coordinator())
            .await
            .with_context(|| format!("cannot open data dir {}", config.data_dir.display()))?,
    );
    // The chat server: the configured upstream, or the reference one in this process.
    let (chatsim, upstream) = match &config.upstream {
        Some(upstream) => (None, upstream.clone()),
        None => {
            let listener =
                tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind the in-process chatsim")?;
            let sim = ferry_chatsim::ChatSim::start(listener, config.chatsim.clone()).await?;
            let addr = sim.local_addr().to_string();
            tracing::info!(%addr, "no upstream configured: delivering to the in-process reference chat server");
            (Some(sim), addr)
        }
    };
    let delivery =
        DeliveryEngine::start(coordinator.shards(), &upstream, config.delivery.clone(), coordinator.clock().clone())?;
    let webhooks = match &config.webhook.url {
        Some(url) => {
            tracing::info!(%url, shape = ?config.webhook.shape, "status callbacks on");
            Some(
                ferry_webhooks::WebhookEngine::start(coordinator.shards(), config.webhook.clone())
                    .map_err(anyhow::Error::msg)?,
            )
        }
        None => None,
    };
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (grpc_listen)"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, shards = config.shards, data_dir = %config.data_dir.display(), %upstream, "ferry serving");
    match config.window_policy() {
        WindowPolicy::Enforce => tracing::info!(
            "customer-service window enforced: non-template messages need the user to have written within 24 h"
        ),
        WindowPolicy::Off if config.customer_service_window.is_none() => tracing::warn!(
            "customer-service window not enforced (embedded demo: its simulated users never write first); \
             --customer-service-window enforce turns it on"
        ),
        WindowPolicy::Off => tracing::warn!("customer-service window not enforced (customer_service_window = off)"),
    }
    let http_listener = tokio::net::TcpListener::bind(config.http_addr()?)
        .await
        .with_context(|| format!("cannot listen on {} (http_listen)", config.http_listen))?;
    let http_bound = http_listener.local_addr()?;
    let lifecycle = Arc::new(ferry_http::Lifecycle::default());
    // Signal handlers first: a SIGTERM right after the readiness lines must drain, not kill.
    let stopping = watch_signals(lifecycle.clone(), std::time::Duration::from_secs(config.shutdown_grace_secs))?;
    // Machine-readable readiness lines (tests and scripts wait for them).
    println!("ferry: upstream {upstream}");
    println!("ferry: http listening on {http_bound}");
    println!("ferry: grpc listening on {bound}");

    let http_state = Arc::new(ferry_http::HttpState {
        coordinator: coordinator.clone(),
        lifecycle: lifecycle.clone(),
        max_body_bytes: config.http.max_body_bytes,
    });
    let router = ferry_http::router(http_state);
    let http = match &tls {
        Some(t) => {
            tokio::spawn(ferry_http::serve_tls(http_listener, t.http.clone(), router, stopped(stopping.clone())))
        }
        None => tokio::spawn(ferry_http::serve(http_listener, router, stopped(stopping.clone()))),
    };
    match tls {
        Some(t) => {
            let accepted = ferry_http::tls::accept(listener, t.grpc);
            ferry_ingest::serve_accepted(accepted, coordinator.clone(), stopped(stopping)).await?
        }
        None => ferry_ingest::serve(listener, coordinator.clone(), stopped(stopping)).await?,
    }
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "http server failed"),
        Err(e) => tracing::error!(error = %e, "http server task failed"),
    }
    tracing::info!("stopped accepting; stopping delivery");
    delivery.shutdown(std::time::Duration::from_secs(10)).await;
    if let Some(w) = webhooks {
        w.shutdown().await;
    }
    if let Some(sim) = chatsim {
        sim.shutdown().await;
    }
    coordinator.close();
    tracing::info!("ferry stopped cleanly");
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers now (not on first poll: a signal right after the readiness
/// lines must drain, not kill) and returns a receiver that turns `true` at the first signal.
///
/// First signal: `lifecycle` starts draining (`/readyz` answers 503) and the receiver flips, so
/// both servers stop accepting and finish in-flight calls; a watchdog exits with status 1 if the
/// drain takes longer than `grace`. Second signal: exit at once (status 130). Exiting early loses
/// nothing acknowledged: every answered message is already on disk.
fn watch_signals(
    lifecycle: Arc<ferry_http::Lifecycle>,
    grace: std::time::Duration,
) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutdown signal received: draining (a second signal exits at once)"
        );
        lifecycle.start_draining();
        let _ = tx.send(true);
        tokio::select! {
            _ = term.recv() => {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
            _ = int.recv() => {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
            _ = tokio::time::sleep(grace) => {
                tracing::error!(grace_secs = grace.as_secs(), "drain did not finish within the grace period: exiting");
                std::process::exit(1);
            }
        }
    });
    Ok(rx)
}

/// Resolves when `stopping` turns true (or its sender is gone).
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

async fn connect(target: &str) -> anyhow::Result<MessagesClient<tonic::transport::Channel>> {
    MessagesClient::connect(target.to_owned()).await.with_context(|| format!("cannot connect to {target}"))
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn send(a: SendArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.target).await?;
    let content = match (a.text, a.template) {
        (Some(body), _) => Content::Text(v1::TextMessage { body, preview_url: a.preview_url }),
        (None, Some(name)) => Content::Template(v1::TemplateMessage {
            name,
            language: Some(v1::TemplateLanguage { policy: "deterministic".into(), code: a.language }),
            ..Default::default()
        }),
        (None, None) => anyhow::bail!("give --text or --template"),
    };
    let request = v1::SendRequest {
        to: a.to,
        content: Some(content),
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        sender: a.sender.unwrap_or_default(),
        ..Default::default()
    };
    let r = client.send(request).await.map_err(|s| anyhow::anyhow!("send rejected: {}", describe(&s)))?;
    println!("{}", r.into_inner().message_id);
    Ok(())
}

async fn get(a: GetArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.target).await?;
    let r = client
        .get_message(v1::GetMessageRequest { message_id: a.message_id })
        .await
        .map_err(|s| anyhow::anyhow!("get failed: {}", describe(&s)))?
        .into_inner();
    let history: Vec<_> =
        r.history.iter().map(|h| serde_json::json!({"status": h.status, "timestamp_ms": h.timestamp_ms})).collect();
    let out = serde_json::json!({
        "message_id": r.message_id, "to": r.to, "shard": r.shard, "status": r.status, "type": r.r#type,
        "sender": r.sender, "accepted_at_ms": r.accepted_at_ms, "expires_at_ms": r.expires_at_ms,
        "updated_at_ms": r.updated_at_ms, "biz_opaque_callback_data": r.biz_opaque_callback_data,
        "history": history,
        "error": r.error.map(|e| serde_json::json!({"code": e.code, "title": e.title, "details": e.details})),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn watch(a: WatchArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.target).await?;
    let start = if a.from_oldest { v1::StartFrom::Oldest } else { v1::StartFrom::Latest };
    let request = v1::WatchStatusesRequest {
        recipient: a.recipient.unwrap_or_default(),
        message_ids: a.message_ids,
        cursor: a.cursor.unwrap_or_default(),
        start: start as i32,
    };
    let mut stream = client
        .watch_statuses(request)
        .await
        .map_err(|s| anyhow::anyhow!("watch refused: {}", describe(&s)))?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(|s| anyhow::anyhow!("watch ended: {}", describe(&s)))? {
        let out = serde_json::json!({
            "message_id": e.message_id, "recipient": e.recipient, "status": e.status, "timestamp_ms": e.timestamp_ms,
            "type": e.r#type, "sender": e.sender, "biz_opaque_callback_data": e.biz_opaque_callback_data,
            "error": e.error.map(|x| serde_json::json!({"code": x.code, "title": x.title, "details": x.details})),
            "cursor": e.cursor,
        });
        println!("{out}");
    }
    Ok(())
}

fn config_check(file: std::path::PathBuf) -> anyhow::Result<()> {
    let overrides = Overrides { config: Some(file), ..Overrides::default() };
    let config = FerryConfig::load(&overrides)?;
    println!("{}", toml::to_string_pretty(&config)?);
    Ok(())
}
