//! Encryption sessions of the chat upstream: the chat upstream's "prepare a recipient".
//!
//! A session encrypts with message counters reserved durably first (`ferry-session`): from the
//! cache (a new reservation), from the shard's `sessions` column family, or by a new key
//! agreement (`FetchPreKeyBundle` + X3DH, computed on the low-priority threads of
//! `key_agreement.rs`). Each runs as a background task of the upstream.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::chat::v1::FetchPreKeyBundleRequest;
use ferry_proto::chat::v1::chat_client::ChatClient;
use ferry_session::{IdentityKeyPair, PreKeyBundle, SendingSession};
use ferry_shard::Shard;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::stats::ShardDeliveryStats;

/// Longest wait for a pre-key bundle before the set-up counts as a temporary failure.
const BUNDLE_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a background session task holds: its recipient, and whether it re-keys.
pub(super) struct SessionHeld {
    pub(super) key: String,
    pub(super) rekey: bool,
}

pub(super) type SessionOutcome = Result<(SendingSession, SessionSource), SessionFailure>;

pub(super) enum SessionSource {
    Loaded,
    Setup,
    Reserved,
}

pub(super) enum SessionFailure {
    /// The server says the recipient does not exist: its messages fail (1013).
    RecipientInvalid(String),
    /// Anything else: retry later.
    Temporary(String),
}

/// What a session task needs besides its recipient.
#[derive(Clone)]
pub(super) struct SessionDeps {
    pub(super) shard: Arc<Shard>,
    pub(super) client: ChatClient<Channel>,
    pub(super) identity: Arc<IdentityKeyPair>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) stats: Arc<ShardDeliveryStats>,
    pub(super) reservation: u64,
}

/// Gets a session ready to encrypt with reserved counters: from the cache (new reservation), from
/// the shard's `sessions` column family, or by a new key agreement. Persists the reservation
/// before returning.
///
/// Cancel-safe: dropping it (the loop stopped) leaves at worst a reservation written and unused,
/// which only skips counters; a session never encrypts with counters not reserved first.
pub(super) async fn prepare_session(
    d: SessionDeps,
    sender: String,
    recipient: String,
    cached: Option<SendingSession>,
    rekey: bool,
) -> SessionOutcome {
    let temporary = |e: &dyn std::fmt::Display| SessionFailure::Temporary(e.to_string());
    let (mut session, source) = match cached {
        Some(s) if !rekey => (s, SessionSource::Reserved),
        _ => {
            let stored = if rekey {
                None
            } else {
                d.stats.add(&d.stats.session_misses, 1);
                let (shard, s, r) = (d.shard.clone(), sender.clone(), recipient.clone());
                tokio::task::spawn_blocking(move || shard.get_session(&s, &r))
                    .await
                    .map_err(|e| temporary(&e))?
                    .map_err(|e| temporary(&e))?
            };
            match stored.map(|snapshot| SendingSession::restore(&snapshot)) {
                Some(Ok(s)) => (s, SessionSource::Loaded),
                other => {
                    if let Some(Err(e)) = other {
                        tracing::warn!(error = %e, "stored session unreadable; setting up a new one");
                    }
                    let _permit = d.permits.acquire().await.map_err(|e| temporary(&e))?;
                    let mut request = tonic::Request::new(FetchPreKeyBundleRequest { recipient: recipient.clone() });
                    request.set_timeout(BUNDLE_FETCH_TIMEOUT);
                    let mut client = d.client.clone();
                    let bundle = client
                        .fetch_pre_key_bundle(request)
                        .await
                        .map_err(|status| match status.code() {
                            tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                                SessionFailure::RecipientInvalid(status.message().to_owned())
                            }
                            _ => SessionFailure::Temporary(format!("pre-key bundle fetch failed: {status}")),
                        })?
                        .into_inner();
                    // The key agreement itself (signature check, X3DH) runs on the low-priority
                    // key-agreement threads, never on a tokio worker (`key_agreement.rs`).
                    let identity = d.identity.clone();
                    let agreed = super::key_agreement::run(move || {
                        let bundle = PreKeyBundle::try_from(bundle).map_err(|e| e.to_string())?;
                        SendingSession::initiate(&identity, &bundle).map_err(|e| e.to_string())
                    })
                    .await
                    .ok_or_else(|| SessionFailure::Temporary("the key agreement panicked".to_owned()))?;
                    (agreed.map_err(SessionFailure::Temporary)?, SessionSource::Setup)
                }
            }
        }
    };
    let snapshot = session.reserve(d.reservation);
    d.shard
        .put_sessions_durably(vec![(sender, recipient, snapshot)])
        .map_err(|e| temporary(&e))?
        .await
        .map_err(|e| temporary(&e))?;
    Ok((session, source))
}
