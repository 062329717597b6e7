//! (filled in by the ops work)

use std::sync::Arc;

use axum::Router;

use crate::HttpState;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
}
