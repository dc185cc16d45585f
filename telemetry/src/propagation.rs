//! W3C trace context in gRPC metadata, and the outcome label of a call.

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes a trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

/// Reads a trace context from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// A gRPC request carrying the current span's trace context (W3C
/// `traceparent`), so the called process's spans join the same trace.
pub fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
    });
    request
}

/// Makes `span` a child of the trace context a request carries (if any).
pub fn continue_trace<T>(request: &tonic::Request<T>, span: &tracing::Span) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(request.metadata()))
    });
    let _ = span.set_parent(parent);
}

/// The `outcome` label of a gRPC call: `ok`, or its status code in
/// snake case (`unavailable`, `deadline_exceeded`, ...).
pub fn grpc_outcome<T>(result: &Result<T, tonic::Status>) -> &'static str {
    use tonic::Code;
    let Err(status) = result else {
        return "ok";
    };
    match status.code() {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_outcomes_are_snake_case_codes() {
        assert_eq!(grpc_outcome(&Ok::<(), tonic::Status>(())), "ok");
        let err = |status| grpc_outcome(&Err::<(), _>(status));
        assert_eq!(err(tonic::Status::unavailable("x")), "unavailable");
        assert_eq!(
            err(tonic::Status::deadline_exceeded("x")),
            "deadline_exceeded"
        );
        assert_eq!(
            err(tonic::Status::failed_precondition("x")),
            "failed_precondition"
        );
    }
}
