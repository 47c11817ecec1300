//! Registry error kinds; `grpc::status` maps them to gRPC codes in one place.

use ferry_mlflow::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but asking for something this registry does not allow.
    #[error("{0}")]
    PermissionDenied(String),
    /// MLflow is down or failing; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The registry's state does not allow the call (a rollback with nothing recorded to return to).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// Wraps an MLflow error with what Ferry was doing (which model/version/alias).
    pub fn mlflow(context: impl std::fmt::Display, e: ferry_mlflow::Error) -> Self {
        let msg = format!("{context}: {e}");
        match e.kind() {
            ErrorKind::NotFound => RegistryError::NotFound(msg),
            ErrorKind::AlreadyExists => RegistryError::AlreadyExists(msg),
            ErrorKind::InvalidArgument => RegistryError::InvalidArgument(msg),
            ErrorKind::Unavailable | ErrorKind::PermissionDenied => RegistryError::Unavailable(msg),
            ErrorKind::Timeout => RegistryError::DeadlineExceeded(msg),
            ErrorKind::Internal => RegistryError::Internal(msg),
        }
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;
