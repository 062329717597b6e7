//! `ferry.toml`: one file, every key optional (defaults below, all listed with comments in
//! `deploy/ferry.example.toml`). Precedence: built-in defaults < config file < `FERRY_*` env vars
//! < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ferry_auth::{AuthConfig, AuthMode};
use ferry_chatsim::ChatSimConfig;
use ferry_coordinator::{CoordinatorConfig, PacingConfig, WindowPolicy};
use ferry_delivery::DeliveryConfig;
use ferry_delivery::upstream::cloud::config::{CloudConfig, CloudNumber, DEFAULT_THROUGHPUT_PER_SEC, ResolvedNumber};
use ferry_shard::{ShardConfig, StorageTuning};
use ferry_webhooks::WebhookConfig;
use serde::{Deserialize, Serialize};

use crate::cluster_config::ClusterConfig;

pub use ferry_webhooks::{MASK, mask_url};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FerryConfig {
    /// Address of the gRPC API (`ferry.v1.Messages`, health, reflection).
    pub grpc_listen: String,
    /// Address of the HTTP API (JSON messages, users, health, `/metrics`).
    pub http_listen: String,
    /// Seconds a SIGTERM/SIGINT drain may take before the process exits anyway (status 1).
    pub shutdown_grace_secs: u64,
    /// Where the node keeps its shards.
    pub data_dir: PathBuf,
    /// Number of shards, 1..=32; fixed when the data dir is created.
    pub shards: u16,
    /// Country calling code of the business number (prepended to recipients without `+`).
    pub country_code: String,
    /// The business number messages are sent from when a request names none.
    pub default_sender: String,
    /// `enforce`: non-template messages only to users who wrote within 24 hours (470 / 131047
    /// otherwise); `off`: no check. Unset: `enforce` when delivering to an `upstream`, `off` for
    /// the embedded demo (the in-process chat server's users never wrote first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_service_window: Option<WindowPolicy>,
    /// `tracing` filter, e.g. `info` or `ferry=debug,info`. `RUST_LOG` overrides it.
    pub log: String,
    /// The chat server to deliver to (`HOST:PORT`). Unset: `ferry serve` starts the reference
    /// chat server (`ferry chatsim`) in-process on a free loopback port and delivers to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// What ferry delivers to: `chat` (the chat server of `upstream`, or the in-process
    /// `ferry chatsim`) or `cloud` (the WhatsApp Cloud API, `[cloud]`).
    pub upstream_kind: UpstreamKind,
    /// The WhatsApp Cloud API upstream (used when `upstream_kind = "cloud"`).
    pub cloud: CloudConfig,
    pub shard: ShardConfig,
    pub storage: StorageTuning,
    pub delivery: DeliveryConfig,
    /// Knobs of the in-process chat server (used only when `upstream` is unset).
    pub chatsim: ChatSimConfig,
    /// Status callbacks (unset `url`: none).
    pub webhook: WebhookConfig,
    /// Users and bearer tokens for the HTTP and gRPC APIs.
    pub auth: AuthConfig,
    /// Paced templates: held (`held_for_quality_assessment`) until released or dropped.
    pub pacing: PacingConfig,
    /// The HTTP API's limits.
    pub http: ferry_http::HttpConfig,
    /// The gRPC port's per-connection limits.
    pub grpc: ferry_ingest::GrpcConfig,
    /// TLS for both listeners (unset: plaintext).
    pub tls: TlsConfig,
    /// A node of a replicated cluster (unset: a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `upstream_kind`: which upstream the delivery loops send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// ferry's chat protocol (`ferry.chat.v1`): `upstream`, or the in-process chatsim.
    #[default]
    Chat,
    /// The WhatsApp Cloud API (`[cloud]`).
    Cloud,
}

impl std::str::FromStr for UpstreamKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat" => Ok(UpstreamKind::Chat),
            "cloud" => Ok(UpstreamKind::Cloud),
            other => Err(format!("upstream kind `{other}`: expected `chat` or `cloud`")),
        }
    }
}

/// `[tls]`: a PEM certificate chain and private key; both set or neither. When set, the HTTP and
/// the gRPC listener both serve TLS only (rustls).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// The rustls configs of both listeners.
pub struct ServerTls {
    /// Offers ALPN `http/1.1`.
    pub http: std::sync::Arc<rustls::ServerConfig>,
    /// Offers ALPN `h2` (gRPC clients such as grpc-go require it).
    pub grpc: std::sync::Arc<rustls::ServerConfig>,
}

impl TlsConfig {
    /// Reads and checks the files: `None` when TLS is off.
    pub fn load(&self) -> anyhow::Result<Option<ServerTls>> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let http = ferry_http::tls::server_config(cert, key, &[b"http/1.1"]).map_err(anyhow::Error::msg)?;
                let grpc = ferry_http::tls::server_config(cert, key, &[b"h2"]).map_err(anyhow::Error::msg)?;
                Ok(Some(ServerTls { http, grpc }))
            }
            (Some(_), None) => bail!("tls.cert_file is set but tls.key_file is not: expected both (TLS on) or neither"),
            (None, Some(_)) => bail!("tls.key_file is set but tls.cert_file is not: expected both (TLS on) or neither"),
        }
    }
}

impl Default for FerryConfig {
    fn default() -> Self {
        let node = CoordinatorConfig::default();
        FerryConfig {
            grpc_listen: "127.0.0.1:50051".into(),
            http_listen: "127.0.0.1:8080".into(),
            shutdown_grace_secs: 30,
            data_dir: node.data_dir,
            shards: node.shards,
            country_code: node.country_code,
            default_sender: node.default_sender,
            customer_service_window: None,
            log: "info".into(),
            upstream: None,
            upstream_kind: UpstreamKind::Chat,
            cloud: CloudConfig::default(),
            shard: node.shard,
            storage: node.storage,
            delivery: DeliveryConfig::default(),
            chatsim: ChatSimConfig::default(),
            webhook: WebhookConfig::default(),
            auth: AuthConfig::default(),
            pacing: node.pacing,
            http: ferry_http::HttpConfig::default(),
            grpc: ferry_ingest::GrpcConfig::default(),
            tls: TlsConfig::default(),
            cluster: None,
        }
    }
}

/// Values given as flags or `FERRY_*` env vars; each overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Config file (TOML); see deploy/ferry.example.toml.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (JSON API, health, metrics) [default: 127.0.0.1:8080]; port 0 picks a
    /// free port.
    #[arg(long, env = "FERRY_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:50051]; port 0 picks a free port.
    #[arg(long, env = "FERRY_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Number of shards, 1..=32 [default: 8].
    #[arg(long, env = "FERRY_SHARDS")]
    pub shards: Option<u16>,
    /// Country calling code of the business number [default: 1].
    #[arg(long, env = "FERRY_COUNTRY_CODE")]
    pub country_code: Option<String>,
    /// Default sender business number [default: +15550100000].
    #[arg(long, env = "FERRY_DEFAULT_SENDER")]
    pub default_sender: Option<String>,
    /// Customer-service window: enforce or off [default: enforce with --upstream, off for the
    /// embedded demo].
    #[arg(long, env = "FERRY_CUSTOMER_SERVICE_WINDOW")]
    pub customer_service_window: Option<WindowPolicy>,
    /// Chat server to deliver to, HOST:PORT [default: none: an in-process `ferry chatsim`].
    #[arg(long, env = "FERRY_UPSTREAM")]
    pub upstream: Option<String>,
    /// What to deliver to: chat (a chat server / the in-process chatsim) or cloud (the WhatsApp
    /// Cloud API, `[cloud]`) [default: chat].
    #[arg(long, env = "FERRY_UPSTREAM_KIND")]
    pub upstream_kind: Option<UpstreamKind>,
    /// Cloud API base URL [default: https://graph.facebook.com].
    #[arg(long, env = "FERRY_CLOUD_BASE_URL")]
    pub cloud_base_url: Option<String>,
    /// Meta app secret: verifies X-Hub-Signature-256 of Meta's webhooks. Prefer the env var.
    #[arg(long, env = "FERRY_CLOUD_APP_SECRET", hide_env_values = true)]
    pub cloud_app_secret: Option<String>,
    /// Verify token of the webhook subscription handshake. Prefer the env var.
    #[arg(long, env = "FERRY_CLOUD_VERIFY_TOKEN", hide_env_values = true)]
    pub cloud_verify_token: Option<String>,
    /// Meta phone number id of `default_sender` (a single-number setup without [[cloud.numbers]]).
    #[arg(long, env = "FERRY_CLOUD_PHONE_NUMBER_ID")]
    pub cloud_phone_number_id: Option<String>,
    /// Access token of `--cloud-phone-number-id`. Prefer the env var.
    #[arg(long, env = "FERRY_CLOUD_TOKEN", hide_env_values = true)]
    pub cloud_token: Option<String>,
    /// Webhook for status callbacks, https://HOST[:PORT]/PATH (http:// for loopback/dev)
    /// [default: none].
    #[arg(long, env = "FERRY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// App secret signing callbacks (X-Hub-Signature-256) [default: unsigned].
    #[arg(long, env = "FERRY_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Callback shape: onprem or cloud [default: onprem].
    #[arg(long, env = "FERRY_WEBHOOK_SHAPE")]
    pub webhook_shape: Option<ferry_webhooks::Shape>,
    /// Auth: enabled or disabled (no tokens needed; local experiments only) [default: enabled].
    #[arg(long, env = "FERRY_AUTH")]
    pub auth: Option<AuthMode>,
    /// Password of the `admin` user created at first start [default: none: generated and printed
    /// once]. Prefer the env var: a flag shows in the process list.
    #[arg(long, env = "FERRY_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// This node's id in a cluster (`[cluster] node_id`); with --peers, runs a cluster node.
    #[arg(long, env = "FERRY_NODE_ID")]
    pub node_id: Option<u64>,
    /// Internal (Raft, forwarding) listen address of a cluster node [default: 127.0.0.1:7100].
    #[arg(long, env = "FERRY_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// Every node of the cluster, comma-separated ID=HOST:PORT (this one included).
    #[arg(long, env = "FERRY_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Replicas per shard [default: 3; this version: the number of peers].
    #[arg(long, env = "FERRY_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Shared secret of the cluster's internal API. Prefer the env var.
    #[arg(long, env = "FERRY_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

impl FerryConfig {
    /// Defaults, then the file (if any), then the overrides; validated.
    pub fn load(o: &Overrides) -> anyhow::Result<FerryConfig> {
        let mut c = match &o.config {
            Some(path) => FerryConfig::from_file(path)?,
            None => FerryConfig::default(),
        };
        if let Some(v) = &o.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &o.grpc_listen {
            c.grpc_listen = v.clone();
        }
        if let Some(v) = &o.http_listen {
            c.http_listen = v.clone();
        }
        if let Some(v) = o.shards {
            c.shards = v;
        }
        if let Some(v) = &o.country_code {
            c.country_code = v.clone();
        }
        if let Some(v) = &o.default_sender {
            c.default_sender = v.clone();
        }
        if let Some(v) = o.customer_service_window {
            c.customer_service_window = Some(v);
        }
        if let Some(v) = &o.upstream {
            c.upstream = Some(v.clone()).filter(|u| !u.is_empty());
        }
        if let Some(v) = o.upstream_kind {
            c.upstream_kind = v;
        }
        if let Some(v) = &o.cloud_base_url {
            c.cloud.base_url = v.clone();
        }
        if let Some(v) = &o.cloud_app_secret {
            c.cloud.app_secret = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = &o.cloud_verify_token {
            c.cloud.verify_token = Some(v.clone()).filter(|s| !s.is_empty());
        }
        match (&o.cloud_phone_number_id, &o.cloud_token) {
            (Some(id), token) => {
                // The default sender's number: replaces a configured entry of the same phone
                // number, else is added.
                let entry = CloudNumber {
                    phone_number: c.default_sender.clone(),
                    phone_number_id: id.clone(),
                    token: token.clone(),
                    token_env: None,
                    throughput_per_sec: DEFAULT_THROUGHPUT_PER_SEC,
                };
                let same = |n: &CloudNumber| {
                    let norm = |p: &str| ferry_model::phone::normalize(p, &c.country_code).ok();
                    norm(&n.phone_number).is_some() && norm(&n.phone_number) == norm(&c.default_sender)
                };
                match c.cloud.numbers.iter().position(same) {
                    Some(i) => {
                        let throughput = c.cloud.numbers[i].throughput_per_sec;
                        c.cloud.numbers[i] = CloudNumber { throughput_per_sec: throughput, ..entry };
                    }
                    None => c.cloud.numbers.push(entry),
                }
            }
            (None, Some(_)) => bail!(
                "--cloud-token (FERRY_CLOUD_TOKEN) without --cloud-phone-number-id: expected both for the \
                 default sender's number, or [[cloud.numbers]] in the config file"
            ),
            (None, None) => {}
        }
        if let Some(v) = &o.webhook_url {
            c.webhook.url = Some(v.clone()).filter(|u| !u.is_empty());
        }
        if let Some(v) = &o.webhook_secret {
            c.webhook.secret = Some(v.clone()).filter(|u| !u.is_empty());
        }
        if let Some(v) = o.webhook_shape {
            c.webhook.shape = v;
        }
        if let Some(v) = o.auth {
            c.auth.mode = v;
        }
        if let Some(v) = &o.admin_password {
            c.auth.admin_password = Some(v.clone()).filter(|p| !p.is_empty());
        }
        let cluster_flags = o.node_id.is_some()
            || o.cluster_listen.is_some()
            || o.peers.is_some()
            || o.replication_factor.is_some()
            || o.cluster_secret.is_some();
        if cluster_flags {
            let cluster = c.cluster.get_or_insert_with(ClusterConfig::default);
            if let Some(v) = o.node_id {
                cluster.node_id = v;
            }
            if let Some(v) = &o.cluster_listen {
                cluster.listen = v.clone();
            }
            if let Some(v) = &o.peers {
                cluster.peers = v.iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
            }
            if let Some(v) = o.replication_factor {
                cluster.replication_factor = v;
            }
            if let Some(v) = &o.cluster_secret {
                cluster.secret = Some(v.clone()).filter(|s| !s.is_empty());
            }
        }
        c.validate()?;
        Ok(c)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<FerryConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn grpc_addr(&self) -> anyhow::Result<SocketAddr> {
        self.grpc_listen
            .parse()
            .with_context(|| format!("grpc_listen `{}`: expected HOST:PORT, e.g. 127.0.0.1:50051", self.grpc_listen))
    }

    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        self.http_listen
            .parse()
            .with_context(|| format!("http_listen `{}`: expected HOST:PORT, e.g. 127.0.0.1:8080", self.http_listen))
    }

    pub fn coordinator(&self) -> CoordinatorConfig {
        CoordinatorConfig {
            data_dir: self.data_dir.clone(),
            shards: self.shards,
            country_code: self.country_code.clone(),
            default_sender: self.default_sender.clone(),
            customer_service_window: self.window_policy(),
            shard: ShardConfig { callbacks: self.webhook.url.is_some(), ..self.shard.clone() },
            storage: self.storage.clone(),
            pacing: self.pacing.clone(),
            allowed_senders: (self.upstream_kind == UpstreamKind::Cloud)
                .then(|| self.cloud.numbers.iter().map(|n| n.phone_number.clone()).collect()),
        }
    }

    /// This config with every secret replaced by [`MASK`], for printing (`ferry config check`,
    /// logs, the admin settings view). Unset secrets stay unset, so the output still shows
    /// whether one is configured.
    pub fn masked(&self) -> FerryConfig {
        let mut c = self.clone();
        if let Some(cluster) = &mut c.cluster
            && cluster.secret.is_some()
        {
            cluster.secret = Some(MASK.into());
        }
        for secret in [&mut c.webhook.secret, &mut c.auth.admin_password] {
            if secret.is_some() {
                *secret = Some(MASK.into());
            }
        }
        c.webhook.url = c.webhook.url.as_deref().map(mask_url);
        for secret in [&mut c.cloud.app_secret, &mut c.cloud.verify_token] {
            if secret.is_some() {
                *secret = Some(MASK.into());
            }
        }
        for n in &mut c.cloud.numbers {
            if n.token.is_some() {
                n.token = Some(MASK.into());
            }
        }
        c
    }

    /// Whether ferry delivers to the Cloud API (`upstream_kind = "cloud"`).
    pub fn cloud_numbers_configured(&self) -> bool {
        self.upstream_kind == UpstreamKind::Cloud
    }

    /// The Cloud upstream's numbers, checked and resolved (tokens read): `None` in chat mode.
    pub fn cloud_numbers(&self) -> anyhow::Result<Option<Vec<ResolvedNumber>>> {
        match self.upstream_kind {
            UpstreamKind::Chat => Ok(None),
            UpstreamKind::Cloud => self.cloud.resolve(&self.country_code).map(Some).map_err(anyhow::Error::msg),
        }
    }

    /// The effective customer-service window policy (see the field's doc).
    pub fn window_policy(&self) -> WindowPolicy {
        self.customer_service_window.unwrap_or(if self.upstream.is_some() && self.upstream_kind == UpstreamKind::Chat {
            WindowPolicy::Enforce
        } else {
            WindowPolicy::Off
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.grpc_addr()?;
        self.http_addr()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if self.shutdown_grace_secs == 0 {
            bail!("shutdown_grace_secs = 0: expected at least 1 second for a drain");
        }
        if let Err(e) = self.coordinator().validate() {
            bail!("{e}");
        }
        if let Err(e) = self.delivery.validate() {
            bail!("{e}");
        }
        if let Some(u) = &self.upstream
            && (u.trim().is_empty() || !u.contains(':'))
        {
            bail!("upstream `{u}`: expected HOST:PORT of a chat server, e.g. 127.0.0.1:50061");
        }
        if self.upstream_kind == UpstreamKind::Cloud {
            if let Some(u) = &self.upstream {
                bail!(
                    "upstream `{u}` is a chat server's address, but upstream_kind = cloud: remove it (the Cloud API is \
                     cloud.base_url)"
                );
            }
            self.cloud_numbers()?;
        }
        if let Err(e) = self.chatsim.validate() {
            bail!("chatsim: {e}");
        }
        if let Err(e) = self.webhook.validate() {
            bail!("{e}");
        }
        if let Err(e) = self.auth.validate() {
            bail!("{e}");
        }
        if let Err(e) = self.http.validate() {
            bail!("{e}");
        }
        if let Err(e) = self.grpc.validate() {
            bail!("{e}");
        }
        self.tls.load()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_the_defaults() {
        let text = include_str!("../../../deploy/ferry.example.toml");
        let parsed: FerryConfig = toml::from_str(text).expect("example config parses");
        assert_eq!(parsed, FerryConfig::default(), "deploy/ferry.example.toml must list the defaults");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<FerryConfig>("shardz = 3").unwrap_err().to_string().contains("shardz"));
        let c = FerryConfig { shards: 33, ..FerryConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("expected 1 to 32"));
        let paced: FerryConfig = toml::from_str("[pacing]\ntemplates = [\"promo\"]\nafter_hold = \"drop\"").unwrap();
        assert_eq!(paced.coordinator().pacing.after_hold, ferry_coordinator::AfterHold::Drop);
        let err = toml::from_str::<FerryConfig>("[pacing]\nafter_hold = \"keep\"").unwrap_err().to_string();
        assert!(err.contains("release") && err.contains("drop"), "{err}");
        let c =
            FerryConfig { pacing: PacingConfig { hold_secs: 0, ..PacingConfig::default() }, ..FerryConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("pacing.hold_secs"));
    }

    #[test]
    fn masked_hides_every_secret_and_keeps_the_rest() {
        let mut c = FerryConfig::default();
        c.webhook.secret = Some("s3cret-app-secret".into());
        c.auth.admin_password = Some("s3cret-admin-password".into());
        let printed = toml::to_string_pretty(&c.masked()).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains(MASK));
        assert_eq!(c.masked().shards, c.shards);
        // Unset stays unset: the output still tells whether a secret is configured.
        assert_eq!(FerryConfig::default().masked().webhook.secret, None);
        assert_eq!(FerryConfig::default().masked().auth.admin_password, None);
    }

    #[test]
    fn cloud_mode_is_checked_at_load_and_its_secrets_are_masked() {
        let cloud = |extra: Overrides| Overrides {
            upstream_kind: Some(UpstreamKind::Cloud),
            cloud_app_secret: Some("s3cret-app".into()),
            cloud_verify_token: Some("s3cret-verify".into()),
            ..extra
        };
        let e = FerryConfig::load(&cloud(Overrides::default())).unwrap_err().to_string();
        assert!(e.contains("[[cloud.numbers]]"), "{e}");
        let e = FerryConfig::load(&Overrides { cloud_token: Some("t".into()), ..Overrides::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cloud-phone-number-id"), "{e}");
        let one = Overrides {
            cloud_phone_number_id: Some("106540352242922".into()),
            cloud_token: Some("s3cret-token".into()),
            ..Overrides::default()
        };
        let c = FerryConfig::load(&cloud(one)).unwrap();
        assert_eq!(c.cloud.numbers[0].phone_number, c.default_sender);
        assert_eq!(c.coordinator().allowed_senders, Some(vec![c.default_sender.clone()]));
        assert_eq!(c.window_policy(), WindowPolicy::Off, "the Cloud API enforces the window itself");
        let printed = toml::to_string_pretty(&c.masked()).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        let chat = FerryConfig { upstream: Some("127.0.0.1:1".into()), ..c.clone() };
        assert!(chat.validate().unwrap_err().to_string().contains("upstream_kind = cloud"));
    }

    #[test]
    fn webhook_url_credentials_are_masked() {
        assert_eq!(mask_url("https://hooks.example.com/wa"), "https://hooks.example.com/wa");
        assert_eq!(
            mask_url("https://u:p@hooks.example.com:8443/wa?token=abc"),
            "https://********@hooks.example.com:8443/wa?********"
        );
        assert_eq!(mask_url("http://127.0.0.1:9/hook?sig=1"), "http://127.0.0.1:9/hook?********");
    }

    #[test]
    fn auth_section_and_overrides() {
        let c: FerryConfig = toml::from_str("[auth]\nmode = \"disabled\"\ntoken_ttl_secs = 60\n").unwrap();
        assert_eq!((c.auth.mode, c.auth.token_ttl_secs), (AuthMode::Disabled, 60));
        let e = toml::from_str::<FerryConfig>("[auth]\nmode = \"off\"\n").unwrap_err().to_string();
        assert!(e.contains("enabled") && e.contains("disabled"), "{e}");
        let o = Overrides {
            auth: Some(AuthMode::Disabled),
            admin_password: Some("0123456789".into()),
            ..Overrides::default()
        };
        let c = FerryConfig::load(&o).unwrap();
        assert_eq!((c.auth.mode, c.auth.admin_password.as_deref()), (AuthMode::Disabled, Some("0123456789")));
        let o = Overrides { admin_password: Some("short".into()), ..Overrides::default() };
        assert!(FerryConfig::load(&o).unwrap_err().to_string().contains("FERRY_ADMIN_PASSWORD"));
    }

    #[test]
    fn http_section_is_validated() {
        let c: FerryConfig = toml::from_str("[http]\nmax_body_bytes = 100").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.max_body_bytes = 100") && e.contains("at least 1024"), "{e}");
        assert!(toml::from_str::<FerryConfig>("[http]\nmax_body = 1").unwrap_err().to_string().contains("max_body"));
    }

    #[test]
    fn tls_needs_both_files_and_readable_pem() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let only_cert = TlsConfig { cert_file: Some(cert.clone()), key_file: None };
        let e = FerryConfig { tls: only_cert, ..FerryConfig::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("tls.key_file is not") && e.contains("both"), "{e}");
        let missing = TlsConfig { cert_file: Some(cert.clone()), key_file: Some(key.clone()) };
        let e = FerryConfig { tls: missing.clone(), ..FerryConfig::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("tls.cert_file") && e.contains("cert.pem") && e.contains("cannot read"), "{e}");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let e = missing.load().err().unwrap().to_string();
        assert!(e.contains("no certificate") && e.contains("BEGIN CERTIFICATE"), "{e}");
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        let e = missing.load().err().unwrap().to_string();
        assert!(e.contains("tls.key_file") && e.contains("private key"), "{e}");
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        assert!(missing.load().unwrap().is_some());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "shards = 4\ndata_dir = \"/tmp/x\"\n").unwrap();
        let o = Overrides { config: Some(path), shards: Some(2), ..Overrides::default() };
        let c = FerryConfig::load(&o).unwrap();
        assert_eq!((c.shards, c.data_dir.as_path()), (2, Path::new("/tmp/x")));
    }
}
