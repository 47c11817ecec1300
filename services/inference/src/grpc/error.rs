//! The gRPC side's error mapping, once: serving errors to status codes; and
//! the caller's deadline from `grpc-timeout`.

use tonic::{Code, Status};

use crate::error::ServeError;

/// The one mapping from serving errors to gRPC status codes.
pub(crate) fn status(e: ServeError) -> Status {
    let code = match &e {
        ServeError::NotFound(_) => Code::NotFound,
        ServeError::Unavailable(_) => Code::Unavailable,
        ServeError::InvalidArgument(_) | ServeError::Model(_) => Code::InvalidArgument,
        ServeError::VersionMismatch(_) => Code::FailedPrecondition,
        ServeError::Overloaded(_) => Code::ResourceExhausted,
        ServeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ServeError::Unauthenticated(_) => Code::Unauthenticated,
        ServeError::Internal(_) => Code::Internal,
    };
    let mut s = Status::new(code, e.to_string());
    if matches!(e, ServeError::Overloaded(_)) {
        s.metadata_mut().insert("retry-after", tonic::metadata::MetadataValue::from_static("1"));
    }
    s
}

/// The caller's deadline from `grpc-timeout` (digits and a unit: H, M, S, m, u, n).
pub(crate) fn deadline(md: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    // Parsed once: a key given as `&str` is parsed on every lookup (~0.3k instructions).
    static KEY: std::sync::LazyLock<tonic::metadata::AsciiMetadataKey> =
        std::sync::LazyLock::new(|| tonic::metadata::AsciiMetadataKey::from_static("grpc-timeout"));
    let v = md.get(&*KEY)?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    std::time::Instant::now().checked_add(d)
}
