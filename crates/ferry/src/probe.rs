//! `ferry probe`: one HTTP GET of a node's health endpoint, exit 0 on a 2xx. The container image's
//! `HEALTHCHECK` runs it (the slim image has no curl); Kubernetes uses its own `httpGet` probes.

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::BodyExt as _;

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// The URL to GET (plain http://). A 2xx answer exits 0; anything else (another status, no
    /// answer within --timeout-secs) exits 1 with the reason on stderr.
    #[arg(long, env = "FERRY_PROBE_URL", default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

pub async fn run(a: ProbeArgs) -> anyhow::Result<()> {
    if !a.url.starts_with("http://") {
        bail!("--url {}: expected http://HOST:PORT/PATH (a node with [tls] is probed by its orchestrator)", a.url);
    }
    let request = hyper::Request::get(&a.url)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .with_context(|| format!("bad --url {}", a.url))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let answer = async {
        let response = client.request(request).await.with_context(|| format!("cannot reach {}", a.url))?;
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(a.timeout_secs), answer)
        .await
        .with_context(|| format!("{} did not answer within {} s", a.url, a.timeout_secs))??;
    let body = String::from_utf8_lossy(&body);
    if !status.is_success() {
        bail!("{} answered {status}: {}", a.url, body.trim());
    }
    crate::output::line(format!("{status} {}", body.trim()))
}
