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
    // Signal handlers first: a SIGTERM right after the readiness lines must drain, not kill.
    let shutdown = shutdown_signal();
    // Machine-readable readiness lines (tests and scripts wait for them).
    println!("ferry: upstream {upstream}");
    println!("ferry: grpc listening on {bound}");

    ferry_ingest::serve(listener, coordinator.clone(), shutdown).await?;
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

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are registered when this is *called*, not
/// when the future is first polled, so a signal that arrives right after the readiness line (which
/// is printed after this call) is not lost to the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutdown signal received");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
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
