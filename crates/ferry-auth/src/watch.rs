//! The per-user cap on open `WatchStatuses` streams.

use std::sync::Arc;

use ahash::AHashMap;
use ferry_model::{ApiError, ErrorCode};
use parking_lot::Mutex;

use crate::{Auth, Principal};

/// One open `WatchStatuses` stream of a user, counted against `auth.max_watch_streams_per_user`
/// until dropped.
pub struct WatchStreamSlot {
    counts: Option<(WatchCounts, Arc<str>)>,
}

/// Open `WatchStatuses` streams per user name.
pub(crate) type WatchCounts = Arc<Mutex<AHashMap<Arc<str>, usize>>>;

impl Drop for WatchStreamSlot {
    fn drop(&mut self) {
        if let Some((counts, user)) = self.counts.take() {
            let mut counts = counts.lock();
            if let Some(n) = counts.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&user);
                }
            }
        }
    }
}

impl Auth {
    /// Counts an open `WatchStatuses` stream of `caller` until the returned slot is dropped;
    /// refuses (1015, RESOURCE_EXHAUSTED / 429) one more than `auth.max_watch_streams_per_user`.
    /// No limit when auth is disabled.
    pub fn open_watch_stream(&self, caller: &Principal) -> Result<WatchStreamSlot, ApiError> {
        let Some(e) = &self.enabled else { return Ok(WatchStreamSlot { counts: None }) };
        let user: Arc<str> = Arc::from(caller.username.as_str());
        let mut counts = e.watch_streams.lock();
        let open = counts.entry(user.clone()).or_insert(0);
        if *open >= e.max_watch_streams_per_user {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                "",
                format!(
                    "user `{user}` has {open} WatchStatuses streams open, the most allowed \
                     (auth.max_watch_streams_per_user = {}): close one, or resume from its cursor later",
                    e.max_watch_streams_per_user
                ),
            ));
        }
        *open += 1;
        drop(counts);
        Ok(WatchStreamSlot { counts: Some((e.watch_streams.clone(), user)) })
    }
}
