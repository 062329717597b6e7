//! The optional shared secret on every internal call (see the crate docs).

use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::{ClusterError, SECRET_HEADER};

/// Metadata the server sets on a status it answered on purpose before doing anything (wrong
/// secret, unknown group, a forward refused): the client knows nothing was done.
pub(crate) const REFUSED_HEADER: &str = "x-ferry-refused";

/// A status marked as a refusal (see [`REFUSED_HEADER`]).
pub(crate) fn refused(code: tonic::Code, message: impl Into<String>) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(REFUSED_HEADER, MetadataValue::from_static("1"));
    status
}

pub(crate) fn is_refused(status: &Status) -> bool {
    status.metadata().contains_key(REFUSED_HEADER)
}

/// Adds the secret (when there is one) to every outgoing call.
#[derive(Clone, Default)]
pub(crate) struct AddSecret(Option<AsciiMetadataValue>);

impl AddSecret {
    pub(crate) fn new(secret: Option<&str>) -> Result<AddSecret, ClusterError> {
        match secret {
            None => Ok(AddSecret(None)),
            Some("") => Err(ClusterError::Secret("must not be empty (leave it out for no secret)".into())),
            Some(s) => s
                .parse()
                .map(|v| AddSecret(Some(v)))
                .map_err(|_| ClusterError::Secret("must be visible ASCII (it is sent as gRPC metadata)".into())),
        }
    }
}

impl Interceptor for AddSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = &self.0 {
            request.metadata_mut().insert(SECRET_HEADER, secret.clone());
        }
        Ok(request)
    }
}

/// Refuses a call without the server's secret (`UNAUTHENTICATED`); with no secret configured,
/// lets every call through.
#[derive(Clone, Default)]
pub(crate) struct CheckSecret(Option<std::sync::Arc<[u8]>>);

impl CheckSecret {
    pub(crate) fn new(secret: Option<&str>) -> CheckSecret {
        CheckSecret(secret.map(|s| s.as_bytes().into()))
    }
}

impl Interceptor for CheckSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else { return Ok(request) };
        let given = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        // `ct_eq` on slices of different lengths is false (the length is not secret).
        if bool::from(given.ct_eq(expected)) {
            Ok(request)
        } else {
            Err(refused(tonic::Code::Unauthenticated, format!("missing or wrong {SECRET_HEADER}")))
        }
    }
}
