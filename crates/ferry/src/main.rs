//! The `ferry` command: `serve` runs a node, `send`, `get`, `watch` and `held` talk to one over gRPC,
//! `chatsim` runs the reference chat server, `cloudsim` the reference WhatsApp Cloud API server, `loadgen` drives load, `config check` validates a config file,
//! `probe` checks a node's health endpoint, `login` gets a bearer token (for `--token` / `FERRY_TOKEN`).

mod cluster_config;
mod cluster_node;
mod cluster_status;
mod config;
mod output;
mod probe;

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
    /// Admin: release or drop the held messages of a paced template (ResolveHeld).
    Held {
        #[command(subcommand)]
        command: HeldCommand,
    },
    /// Drive a ferry node with load over gRPC and report accepted/acked msg/s and latencies.
    Loadgen(ferry_loadgen::LoadgenArgs),
    /// Run the reference chat server (decrypts and acks envelopes, sends receipts, fault knobs).
    Chatsim(ferry_chatsim::ChatSimArgs),
    /// Run the reference WhatsApp Cloud API server (validates sends, enforces Meta's limits, posts
    /// signed status webhooks, fault knobs).
    Cloudsim(ferry_cloudsim::CloudSimArgs),
    /// Log in over HTTP (HTTP Basic) and print a bearer token for `--token` / FERRY_TOKEN.
    Login(LoginArgs),
    /// Validate a config file and print the effective config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Cluster operations (over the nodes' internal API).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// GET a node's health endpoint (default http://127.0.0.1:8080/healthz): exit 0 on a 2xx, else
    /// 1. The container image's HEALTHCHECK.
    Probe(probe::ProbeArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Ask every node for its shards' Raft groups and print one JSON line per node: role, term,
    /// leader, last log and applied index per shard (a node that does not answer says why).
    Status(cluster_status::StatusArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE and print the effective config as TOML: defaults, then FILE, then the same
    /// `FERRY_*` env vars and flags `ferry serve` takes (secrets masked).
    Check {
        file: std::path::PathBuf,
        #[command(flatten)]
        overrides: Box<Overrides>,
    },
}

#[derive(clap::Args)]
struct LoginArgs {
    /// HTTP address of a ferry node.
    #[arg(long, env = "FERRY_HTTP", default_value = "http://127.0.0.1:8080")]
    http: String,
    /// User name.
    #[arg(long, default_value = "admin")]
    user: String,
    /// Password (prefer the env var: a flag shows in the process list).
    #[arg(long, env = "FERRY_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(clap::Args)]
struct SendArgs {
    /// gRPC address of a ferry node.
    #[arg(long, env = "FERRY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Bearer token (`ferry login`); needed unless the node runs with `--auth disabled`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
    /// Bearer token (`ferry login`); needed unless the node runs with `--auth disabled`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
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

#[derive(Subcommand)]
enum HeldCommand {
    /// Release every held message of the template into delivery (same ids as answered at send).
    Release(HeldArgs),
    /// Drop every held message of the template: failed, error 132015 "Template is paused".
    Drop(HeldArgs),
}

#[derive(clap::Args)]
struct HeldArgs {
    /// gRPC address of a ferry node.
    #[arg(long, env = "FERRY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Bearer token of an admin (`ferry login`); needed unless the node runs with `--auth disabled`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The paced template's name.
    #[arg(long)]
    template: String,
}

#[derive(clap::Args)]
struct GetArgs {
    /// gRPC address of a ferry node.
    #[arg(long, env = "FERRY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Bearer token (`ferry login`); needed unless the node runs with `--auth disabled`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
            Command::Login(a) => login(a).await,
            Command::Held { command } => held(command).await,
            Command::Loadgen(a) => {
                let report = ferry_loadgen::run(a).await?;
                output::line(report.summary().trim_end())
            }
            Command::Chatsim(a) => {
                init_logging("info");
                ferry_chatsim::run_cli(a).await
            }
            Command::Cloudsim(a) => {
                init_logging("info");
                ferry_cloudsim::run_cli(a).await
            }
            Command::Config { command: ConfigCommand::Check { file, overrides } } => config_check(file, *overrides),
            Command::Cluster { command: ClusterCommand::Status(a) } => cluster_status::run(a).await,
            Command::Probe(a) => probe::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if output::is_closed(&e) => std::process::ExitCode::SUCCESS,
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

/// Runs a node until a signal; the drain is described at [`watch_signals`]: gRPC stops accepting
/// and finishes in-flight calls → delivery stops (settled outcomes are written) → webhooks and the
/// in-process chat server stop → HTTP stops → shards commit what they took → exit.
async fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let config = FerryConfig::load(&overrides)?;
    init_logging(&config.log);
    // Before anything records: series recorded without a recorder are lost.
    let prometheus = ferry_http::ops::install_recorder().map_err(anyhow::Error::msg)?;
    let addr = config.grpc_addr()?;
    // `[tls]`: the files were checked by `load`; read them once for both listeners.
    let tls = config.tls.load()?;
    if tls.is_some() {
        tracing::info!("tls on: the http and grpc listeners serve TLS only");
    }
    let (coordinator, cluster) = match &config.cluster {
        None => (
            Coordinator::open(&config.coordinator())
                .await
                .with_context(|| format!("cannot open data dir {}", config.data_dir.display()))?,
            None,
        ),
        Some(cluster) => {
            let (coordinator, node) = cluster_node::open(&config, cluster).await?;
            (coordinator, Some(node))
        }
    };
    let coordinator = Arc::new(coordinator);
    // Test hook (tests/crash.rs): every key-shard idempotency record write is held back forever.
    if std::env::var_os("FERRY_TEST_HOLD_KEY_SHARD_WRITES").is_some() {
        tracing::warn!("FERRY_TEST_HOLD_KEY_SHARD_WRITES is set: sends with a key on another shard never answer");
        coordinator.failpoint_hold_key_shard_writes(true);
    }
    // The upstream: the Cloud API, the configured chat server, or the reference one in this
    // process.
    let cloud_numbers = config.cloud_numbers()?;
    let (chatsim, upstream) = match &config.upstream {
        _ if cloud_numbers.is_some() => (None, config.cloud.base_url.clone()),
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
    let (delivery, cloud_webhook) = match cloud_numbers {
        Some(numbers) => {
            let count = numbers.len();
            let shared =
                ferry_delivery::upstream::cloud::CloudShared::new(&config.cloud, numbers, coordinator.shards().len())
                    .map_err(anyhow::Error::msg)?;
            tracing::info!(base_url = %config.cloud.base_url, numbers = count, "delivering to the WhatsApp Cloud API");
            let webhook = ferry_http::cloud_webhook::CloudWebhook {
                hub: shared.hub(),
                numbers: shared.clone(),
                app_secret: config.cloud.app_secret.clone().unwrap_or_default(),
                verify_token: config.cloud.verify_token.clone().unwrap_or_default(),
            };
            let engine = DeliveryEngine::start_cloud(
                coordinator.shards(),
                shared,
                config.delivery.clone(),
                coordinator.clock().clone(),
            )?;
            (engine, Some(webhook))
        }
        None => {
            let engine = DeliveryEngine::start(
                coordinator.shards(),
                &upstream,
                config.delivery.clone(),
                coordinator.clock().clone(),
            )?;
            (engine, None)
        }
    };
    let webhooks = match &config.webhook.url {
        Some(url) => {
            let url = config::mask_url(url);
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
        WindowPolicy::Off if config.customer_service_window.is_none() && config.cloud_numbers_configured() => {
            tracing::info!(
                "customer-service window left to the Cloud API (it refuses with 131047); \
                 --customer-service-window enforce checks it in ferry too"
            )
        }
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
    let auth = open_auth(&config, &coordinator)?;
    let lifecycle = Arc::new(ferry_http::Lifecycle::default());
    // Signal handlers first: a SIGTERM right after the readiness lines must drain, not kill.
    let stopping = watch_signals(lifecycle.clone(), std::time::Duration::from_secs(config.shutdown_grace_secs))?;
    // Machine-readable readiness lines (tests and scripts wait for them).
    // Readiness lines (scripts and tests read them). A closed stdout does not stop the server.
    if let Some(node) = &cluster {
        let _ = output::line(format!("ferry: cluster listening on {}", node.local_addr()));
    }
    for ready in [
        format!("ferry: upstream {upstream}"),
        format!("ferry: http listening on {http_bound}"),
        format!("ferry: grpc listening on {bound}"),
    ] {
        let _ = output::line(ready);
    }

    let http_state = Arc::new(ferry_http::HttpState {
        coordinator: coordinator.clone(),
        lifecycle: lifecycle.clone(),
        ops: ferry_http::ops::Ops { prometheus: Some(prometheus), delivery: delivery.shard_stats().to_vec() },
        auth: auth.clone(),
        settings: settings_json(&config),
        max_body_bytes: config.http.max_body_bytes,
        read_timeout: std::time::Duration::from_secs(config.http.read_timeout_secs),
        cloud: cloud_webhook,
    });
    let http_read_timeout = std::time::Duration::from_secs(config.http.read_timeout_secs);
    // HTTP stays up through the drain so probes see `/readyz` turn 503 (and `/metrics` keeps
    // answering); its message routes refuse new sends while draining. It stops last, before the
    // shards close.
    let (http_stop, http_stopping) = tokio::sync::oneshot::channel::<()>();
    let http_stopped = async move {
        let _ = http_stopping.await;
    };
    let router = ferry_http::router(http_state);
    let http_caps = config.http.connection_caps();
    let mut http = match &tls {
        Some(t) => tokio::spawn(ferry_http::serve_tls(
            http_listener,
            t.http.clone(),
            router,
            http_read_timeout,
            http_caps,
            http_stopped,
        )),
        None => {
            tokio::spawn(ferry_http::serve_capped(http_listener, router, http_read_timeout, http_caps, http_stopped))
        }
    };
    let pacing_rule = coordinator.start_pacing_rule();
    match tls {
        Some(t) => {
            let accepted = ferry_http::tls::accept(listener, t.grpc);
            ferry_ingest::serve_accepted(accepted, coordinator.clone(), auth, config.grpc.clone(), stopped(stopping))
                .await?
        }
        None => {
            ferry_ingest::serve_with_auth(listener, coordinator.clone(), auth, config.grpc.clone(), stopped(stopping))
                .await?
        }
    }
    pacing_rule.abort();
    tracing::info!("stopped accepting; stopping delivery");
    delivery.shutdown(std::time::Duration::from_secs(10)).await;
    if let Some(w) = webhooks {
        w.shutdown().await;
    }
    if let Some(sim) = chatsim {
        sim.shutdown().await;
    }
    let _ = http_stop.send(());
    // Open HTTP requests get a few seconds to finish; then they are cut (a send cut before its
    // answer was either written, and is kept, or not: the client retries with its idempotency key).
    match tokio::time::timeout(HTTP_STOP_WAIT, &mut http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "http server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "http server task failed"),
        Err(_) => {
            tracing::warn!(wait_secs = HTTP_STOP_WAIT.as_secs(), "http requests still open: closing them");
            http.abort();
        }
    }
    coordinator.close();
    if let Some(node) = cluster {
        node.shutdown().await;
    }
    tracing::info!("ferry stopped cleanly");
    Ok(())
}

/// Opens users and tokens (`<data_dir>/auth`). At first start with no configured admin password,
/// prints the generated one, once, on stdout (before the readiness lines).
fn open_auth(config: &FerryConfig, coordinator: &Coordinator) -> anyhow::Result<Arc<ferry_auth::Auth>> {
    use ferry_auth::Bootstrap;
    // The coordinator's sender rules: users' `senders` and the senders of their sends are
    // normalized alike, and a send without a sender is checked as the default one.
    let rules = ferry_auth::SenderRules {
        country_code: config.country_code.clone(),
        default_sender: ferry_model::phone::normalize(&config.default_sender, &config.country_code)
            .map_err(|e| anyhow::anyhow!("default_sender: {e}"))?,
    };
    let (auth, bootstrap) = ferry_auth::Auth::open(&config.data_dir, &config.auth, coordinator.clock().clone(), rules)
        .with_context(|| format!("cannot open users and tokens in {}", config.data_dir.join("auth").display()))?;
    match bootstrap {
        Bootstrap::Disabled => tracing::warn!(
            "AUTH IS DISABLED (auth.mode = disabled): anyone who can reach the HTTP and gRPC ports can send \
             messages and manage the node. Use this for local experiments only."
        ),
        Bootstrap::AdminGenerated(password) => {
            println!("ferry: generated admin password: {password}");
            tracing::warn!(
                "created user `admin` with a generated password, printed once on stdout \
                 (\"ferry: generated admin password: ...\"); it will not be shown again"
            );
        }
        Bootstrap::AdminFromConfig => {
            tracing::info!("created user `admin` with the configured password (auth.admin_password)")
        }
        Bootstrap::Existing => {}
    }
    Ok(Arc::new(auth))
}

/// The effective config for `GET /v1/settings`, secrets masked.
/// The effective config for `GET /v1/settings`, secrets masked (as `ferry config check` prints it).
fn settings_json(config: &FerryConfig) -> serde_json::Value {
    serde_json::to_value(config.masked()).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

/// How long the drain waits for open HTTP requests once everything else has stopped.
const HTTP_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the SIGTERM/SIGINT handlers now (not on first poll: a signal right after the readiness
/// lines must drain, not kill) and returns a receiver that turns `true` at the first signal.
///
/// First signal: `lifecycle` starts draining (`/readyz` answers 503, HTTP sends are refused) and
/// the receiver flips, so gRPC stops accepting and finishes in-flight calls, then delivery stops;
/// HTTP stops last. A watchdog exits with status 1 if the
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

/// Adds `authorization: Bearer T` to every call when a token is given.
#[derive(Clone)]
struct BearerToken(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Client = MessagesClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>>;

async fn connect(target: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let token = match token {
        Some(t) => Some(format!("Bearer {t}").parse().context("--token (FERRY_TOKEN) must be printable ASCII")?),
        None => None,
    };
    // `https://` targets use TLS (a node with `[tls]`), trusting the PEM CA in `FERRY_CA_CERT` when
    // set, else the built-in web roots.
    let ca_cert = std::env::var_os("FERRY_CA_CERT").map(std::path::PathBuf::from);
    let channel = ferry_loadgen::client::endpoint(target, false, ca_cert.as_deref())
        .await
        .with_context(|| format!("bad target {target:?}: expected e.g. http://127.0.0.1:50051"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    Ok(MessagesClient::with_interceptor(channel, BearerToken(token)))
}

/// `POST /v1/users/login` with HTTP Basic; prints the token.
async fn login(a: LoginArgs) -> anyhow::Result<()> {
    use base64::Engine as _;
    use http_body_util::BodyExt as _;
    let url = format!("{}/v1/users/login", a.http.trim_end_matches('/'));
    if !url.starts_with("http://") {
        anyhow::bail!("--http {}: expected http://HOST:PORT", a.http);
    }
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", a.user, a.password));
    let request = hyper::Request::post(&url)
        .header(hyper::header::AUTHORIZATION, format!("Basic {credentials}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .with_context(|| format!("bad --http {}", a.http))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(request).await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.context("reading the login answer")?.to_bytes();
    let parsed: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("login answered {status} with {}", String::from_utf8_lossy(&body)))?;
    if !status.is_success() {
        anyhow::bail!("login refused ({status}): {parsed}");
    }
    let token = parsed["users"][0]["token"].as_str().context("login answer without users[0].token")?;
    output::line(token)?;
    Ok(())
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn send(a: SendArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.target, a.token.as_deref()).await?;
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
    output::line(r.into_inner().message_id)?;
    Ok(())
}

async fn get(a: GetArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.target, a.token.as_deref()).await?;
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
        "upstream_message_id": r.upstream_message_id,
        "history": history,
        "error": r.error.map(|e| serde_json::json!({"code": e.code, "title": e.title, "details": e.details})),
    });
    output::line(serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

async fn held(command: HeldCommand) -> anyhow::Result<()> {
    let (a, action) = match command {
        HeldCommand::Release(a) => (a, v1::HeldAction::Release),
        HeldCommand::Drop(a) => (a, v1::HeldAction::Drop),
    };
    let mut client = connect(&a.target, a.token.as_deref()).await?;
    let request = v1::ResolveHeldRequest { template_name: a.template, action: action as i32 };
    let r = client
        .resolve_held(request)
        .await
        .map_err(|s| anyhow::anyhow!("resolve held refused: {}", describe(&s)))?
        .into_inner();
    let out = serde_json::json!({"released": r.released, "dropped": r.dropped, "expired": r.expired});
    output::line(out)?;
    Ok(())
}

async fn watch(a: WatchArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.target, a.token.as_deref()).await?;
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
        output::line(out)?;
    }
    Ok(())
}

fn config_check(file: std::path::PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    // FILE is the file checked, whatever `--config` / FERRY_CONFIG say.
    let overrides = Overrides { config: Some(file), ..overrides };
    let config = FerryConfig::load(&overrides)?;
    output::line(toml::to_string_pretty(&config.masked())?)?;
    Ok(())
}
