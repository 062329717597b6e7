//! TLS for ferry's listeners (HTTP and gRPC), with rustls (ring provider).
//!
//! [`server_config`] turns the PEM files of `[tls] cert_file` / `key_file` into a rustls server
//! config, with a clear error for an unreadable or unusable file. [`accept`] runs the accept loop:
//! every connection's handshake runs in its own task (a slow or broken client never holds up the
//! others) and finished TLS streams come out of a channel, which [`TlsListener`] (for axum) and
//! `ferry_ingest::serve_accepted` (for tonic) consume.
//!
//! Invariants: no plaintext connection is ever handed on from a TLS listener (a failed handshake
//! is logged at debug and dropped), and no client certificate is asked for (callers authenticate
//! with bearer tokens).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a PEM certificate chain and private key and builds a server config that offers `alpn`
/// (e.g. `h2` for gRPC, `http/1.1` for the JSON API).
pub fn server_config(cert_file: &Path, key_file: &Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
    let cert_pem = std::fs::read(cert_file).map_err(|e| {
        format!("tls.cert_file {}: cannot read it ({e}): expected a PEM certificate chain", cert_file.display())
    })?;
    let key_pem = std::fs::read(key_file).map_err(|e| {
        format!("tls.key_file {}: cannot read it ({e}): expected a PEM private key", key_file.display())
    })?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| {
            format!("tls.cert_file {}: not valid PEM ({e}): expected a PEM certificate chain", cert_file.display())
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate in it: expected one or more `-----BEGIN CERTIFICATE-----` blocks",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls.key_file {}: no usable private key in it ({e}): expected a PEM PKCS#8, PKCS#1 or SEC1 private key",
            key_file.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls.cert_file {} / tls.key_file {}: {e}: expected the certificate and its own private key",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS handshakes in progress at once per listener.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Accepts connections on `listener` and performs their TLS handshakes, each in its own task;
/// established streams come out of the returned channel. The loop ends when the receiver is
/// dropped.
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "tls listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            // Bounded handshakes: idle or slow connections cannot pile up tasks and descriptors;
            // past the bound a new connection is closed at once (clients retry).
            let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = MAX_PENDING_HANDSHAKES, "tls: too many handshakes in progress, closing");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    rx
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener { local, accepted: accept(listener, config) })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
