//! The gRPC side of the loadgen: connections to ferry (TLS, bearer token), the messages a call
//! carries (payload, recipient choice) and one call's outcome, errors classified by code.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ferry_proto::v1::messages_client::MessagesClient;
use ferry_proto::v1::{self, send_request::Content, send_result::Outcome};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::LoadgenArgs;

/// Metadata key on which ferry puts its reference error code on every error status.
pub const ERROR_CODE_METADATA: &str = "ferry-error-code";

/// Adds `authorization: Bearer T` when a token is configured.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Client = MessagesClient<InterceptedService<Channel, BearerToken>>;

/// Opens `--connections` channels to `--target`.
pub async fn connect(args: &LoadgenArgs) -> anyhow::Result<Vec<Client>> {
    let token = match &args.token {
        Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).context("--token must be printable ASCII")?),
        None => None,
    };
    let endpoint = endpoint(&args.target, args.tls, args.ca_cert.as_deref()).await?;
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = endpoint.connect().await.with_context(|| format!("connecting to ferry at {}", args.target))?;
        clients.push(MessagesClient::with_interceptor(channel, BearerToken(token.clone())));
    }
    Ok(clients)
}

/// An endpoint for `addr` with TCP_NODELAY, and TLS when asked (or for `https://`).
pub async fn endpoint(addr: &str, tls: bool, ca_cert: Option<&std::path::Path>) -> anyhow::Result<Endpoint> {
    let addr =
        if addr.contains("://") { addr.to_owned() } else { format!("{}://{addr}", if tls { "https" } else { "http" }) };
    let mut endpoint = Endpoint::from_shared(addr.clone()).with_context(|| format!("bad address {addr:?}"))?;
    endpoint = endpoint.tcp_nodelay(true);
    if tls || addr.starts_with("https://") {
        let mut config = ClientTlsConfig::new();
        config = match ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(config).context("TLS config")?;
    }
    Ok(endpoint)
}

/// Builds the messages of each call: who they go to and their text.
pub struct MessageFactory {
    body: String,
    recipients: u64,
    new_share: f64,
    new_seed: u64,
}

impl MessageFactory {
    pub fn new(args: &LoadgenArgs) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        MessageFactory {
            body: "x".repeat(args.payload),
            recipients: args.recipients,
            new_share: args.new_recipients,
            new_seed: nanos,
        }
    }

    /// The recipient of the `n`th message of the run. Exactly `floor(n * share)` of the first `n`
    /// go to new recipients (spread evenly); the others cycle through the known ones.
    pub fn recipient(&self, n: u64) -> String {
        let is_new = ((n + 1) as f64 * self.new_share).floor() > (n as f64 * self.new_share).floor();
        let number = if is_new {
            // A range disjoint from the known recipients, at a per-run offset.
            4_000_000_000 + self.new_seed.wrapping_add(n) % 5_000_000_000
        } else {
            2_000_000_000 + n % self.recipients
        };
        format!("+1{number:010}")
    }

    pub fn message(&self, n: u64) -> v1::SendRequest {
        v1::SendRequest {
            to: self.recipient(n),
            content: Some(Content::Text(v1::TextMessage { body: self.body.clone(), preview_url: false })),
            ..Default::default()
        }
    }
}

/// What one call did to its messages.
#[derive(Debug, Default)]
pub struct CallOutcome {
    pub accepted: u64,
    /// Rejected messages by error code.
    pub errors: BTreeMap<String, u64>,
}

/// The error key of a failed call: ferry's reference code from `ferry-error-code`, else
/// `grpc:<Code>`.
pub fn status_code_key(status: &tonic::Status) -> String {
    match status.metadata().get(ERROR_CODE_METADATA).and_then(|v| v.to_str().ok()) {
        Some(code) => code.to_owned(),
        None => format!("grpc:{:?}", status.code()),
    }
}

/// Sends messages `first..first + len` as one unary `Send` (len 1) or one `SendBatch`.
pub async fn send_call(
    client: &mut Client,
    factory: &MessageFactory,
    first: u64,
    len: u64,
    batch: bool,
) -> CallOutcome {
    let mut outcome = CallOutcome::default();
    if !batch {
        match client.send(factory.message(first)).await {
            Ok(_) => outcome.accepted = 1,
            Err(status) => *outcome.errors.entry(status_code_key(&status)).or_default() += 1,
        }
        return outcome;
    }
    let messages = (first..first + len).map(|n| factory.message(n)).collect();
    match client.send_batch(v1::SendBatchRequest { messages }).await {
        Ok(response) => {
            for result in response.into_inner().results {
                match result.outcome {
                    Some(Outcome::Accepted(_)) => outcome.accepted += 1,
                    Some(Outcome::Error(e)) => *outcome.errors.entry(e.code.to_string()).or_default() += 1,
                    None => *outcome.errors.entry("missing_outcome".to_owned()).or_default() += 1,
                }
            }
        }
        Err(status) => *outcome.errors.entry(status_code_key(&status)).or_default() += len,
    }
    outcome
}
