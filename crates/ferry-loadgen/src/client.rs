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
///
/// Cancel safety: cancel-safe (drops the channels made so far).
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
///
/// Cancel safety: cancel-safe.
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

/// A message type the loadgen can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Image,
    Template,
    Interactive,
    Location,
}

impl Kind {
    const ALL: [(&'static str, Kind); 5] = [
        ("text", Kind::Text),
        ("image", Kind::Image),
        ("template", Kind::Template),
        ("interactive", Kind::Interactive),
        ("location", Kind::Location),
    ];
}

/// `--types`: message types with integer weights; message `n` gets the type at `n mod total` of
/// the expanded weights, so any run prefix has the mix to within one cycle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeMix(pub Vec<(Kind, u32)>);

impl Default for TypeMix {
    fn default() -> Self {
        TypeMix(vec![(Kind::Text, 1)])
    }
}

impl TypeMix {
    /// Parses `text=8,template=1` (a bare name weighs 1).
    pub fn parse(s: &str) -> Result<TypeMix, String> {
        let names = Kind::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        let mut mix = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => {
                    let w = w
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| format!("weight of `{n}` must be a whole number, got `{w}`"))?;
                    (n.trim(), w)
                }
                None => (part, 1),
            };
            let kind = Kind::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
                .ok_or_else(|| format!("unknown message type `{name}`: expected one of {names}"))?;
            if weight > 0 {
                mix.push((kind, weight));
            }
        }
        if mix.is_empty() {
            return Err(format!(
                "no message type with a weight above 0: expected e.g. `text=8,template=2` from {names}"
            ));
        }
        Ok(TypeMix(mix))
    }

    /// The type of message `n`.
    pub fn kind(&self, n: u64) -> Kind {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut slot = n % total;
        for (kind, w) in &self.0 {
            if slot < u64::from(*w) {
                return *kind;
            }
            slot -= u64::from(*w);
        }
        unreachable!("slot < total")
    }
}

/// Builds the messages of each call: who they go to, their type and text.
pub struct MessageFactory {
    body: String,
    recipients: u64,
    new_share: f64,
    new_seed: u64,
    types: TypeMix,
    /// `--sender`: message `n` comes from `senders[n % len]`; empty: ferry's default sender.
    senders: Vec<String>,
}

/// ferry's default sender, the business `--open-windows` writes to when no `--sender` is given.
pub const DEFAULT_BUSINESS: &str = "15550100000";

impl MessageFactory {
    pub fn new(args: &LoadgenArgs) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        MessageFactory {
            body: "x".repeat(args.payload),
            recipients: args.recipients,
            new_share: args.new_recipients,
            new_seed: nanos,
            types: args.types.clone(),
            senders: args.sender.clone(),
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

    /// The business number of the `n`th message: the senders in turn ("" = ferry's default).
    pub fn sender(&self, n: u64) -> &str {
        match self.senders.len() {
            0 => "",
            len => &self.senders[(n % len as u64) as usize],
        }
    }

    /// The wa_id of known recipient `i` (`0..recipients`).
    pub fn known_wa_id(i: u64) -> String {
        format!("1{:010}", 2_000_000_000 + i)
    }

    pub fn message(&self, n: u64) -> v1::SendRequest {
        // Captions, template parameters and interactive bodies are capped at 1,024 characters.
        let short = || self.body.chars().take(1024).collect::<String>();
        let content = match self.types.kind(n) {
            Kind::Text => Content::Text(v1::TextMessage { body: self.body.clone(), preview_url: false }),
            Kind::Image => Content::Image(v1::MediaMessage {
                link: "https://example.com/loadgen.jpg".into(),
                caption: short(),
                ..Default::default()
            }),
            Kind::Template => Content::Template(v1::TemplateMessage {
                name: "loadgen_update".into(),
                language: Some(v1::TemplateLanguage { policy: "deterministic".into(), code: "en_US".into() }),
                components: vec![v1::TemplateComponent {
                    r#type: "body".into(),
                    parameters: vec![v1::TemplateParameter {
                        r#type: "text".into(),
                        text: short(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            Kind::Interactive => Content::Interactive(v1::InteractiveMessage {
                r#type: "button".into(),
                body: Some(v1::InteractiveText { text: short() }),
                action: Some(v1::InteractiveAction {
                    buttons: ["yes", "no"]
                        .into_iter()
                        .map(|id| v1::InteractiveButton {
                            r#type: "reply".into(),
                            reply: Some(v1::InteractiveReply { id: id.into(), title: id.into() }),
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Kind::Location => Content::Location(v1::LocationMessage {
                latitude: Some(52.37),
                longitude: Some(4.89),
                name: "ferry".into(),
                address: self.body.chars().take(200).collect(),
            }),
        };
        v1::SendRequest {
            to: self.recipient(n),
            content: Some(content),
            sender: self.sender(n).to_owned(),
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

/// Sends messages `first..first + len` as one `SendBatch`, or (`batch` false) as `len` concurrent
/// unary `Send`s.
///
/// Cancel safety: cancel-safe for ferry (a dropped call is a cancelled RPC: whatever ferry
/// accepted stays accepted), but its outcome is then not recorded.
pub async fn send_call(
    client: &mut Client,
    factory: &MessageFactory,
    first: u64,
    len: u64,
    batch: bool,
) -> CallOutcome {
    let mut outcome = CallOutcome::default();
    if !batch {
        let sends = (first..first + len).map(|n| {
            let mut client = client.clone();
            let message = factory.message(n);
            async move { client.send(message).await }
        });
        for result in futures_util::future::join_all(sends).await {
            match result {
                Ok(_) => outcome.accepted += 1,
                Err(status) => *outcome.errors.entry(status_code_key(&status)).or_default() += 1,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_mix_parses_weights_and_spreads_them_evenly() {
        let mix = TypeMix::parse("text=2, template=1,image").unwrap();
        assert_eq!(mix.0, vec![(Kind::Text, 2), (Kind::Template, 1), (Kind::Image, 1)]);
        let kinds: Vec<Kind> = (0..8).map(|n| mix.kind(n)).collect();
        use Kind::*;
        assert_eq!(kinds, [Text, Text, Template, Image, Text, Text, Template, Image]);
        assert!(TypeMix::parse("text=0").unwrap_err().contains("no message type"));
        assert!(TypeMix::parse("sms").unwrap_err().contains("unknown message type `sms`"));
        assert!(TypeMix::parse("text=x").unwrap_err().contains("whole number"));
    }

    #[test]
    fn senders_take_turns() {
        let mut args = crate::LoadgenArgs::for_target("http://127.0.0.1:1");
        assert_eq!(MessageFactory::new(&args).message(3).sender, "", "no --sender: ferry's default");
        args.sender = vec!["+15550100001".into(), "+15550100002".into(), "+15550100003".into()];
        let factory = MessageFactory::new(&args);
        let senders: Vec<String> = (0..4).map(|n| factory.message(n).sender).collect();
        assert_eq!(senders, ["+15550100001", "+15550100002", "+15550100003", "+15550100001"]);
    }

    #[test]
    fn every_type_builds_its_content() {
        let mut args = crate::LoadgenArgs::for_target("http://127.0.0.1:1");
        args.types = TypeMix::parse("text,image,template,interactive,location").unwrap();
        args.payload = 5000;
        let factory = MessageFactory::new(&args);
        let names: Vec<&str> = (0..5)
            .map(|n| match factory.message(n).content.unwrap() {
                Content::Text(t) => {
                    assert_eq!(t.body.len(), 5000);
                    "text"
                }
                Content::Image(i) => {
                    assert_eq!(i.caption.len(), 1024, "captions are capped");
                    "image"
                }
                Content::Template(_) => "template",
                Content::Interactive(_) => "interactive",
                Content::Location(_) => "location",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(names, ["text", "image", "template", "interactive", "location"]);
    }
}
