use std::time::Duration;

/// What went wrong talking to MLflow, classified so that each transport can map
/// it to a status a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MLflow answered with an error body (`{"error_code", "message"}`).
    #[error("MLflow {status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    /// MLflow could not be reached, or kept failing with 5xx after retries.
    #[error("MLflow unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within the configured timeout.
    #[error("MLflow call timed out after {0:?}")]
    Timeout(Duration),
    /// MLflow answered with something this client does not understand.
    #[error("unexpected MLflow response: {0}")]
    Protocol(String),
}

/// The kind of an [`Error`], independent of any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    Timeout,
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Api { status, code, message } => match (code.as_str(), *status) {
                ("RESOURCE_DOES_NOT_EXIST", _) | (_, 404) => ErrorKind::NotFound,
                ("RESOURCE_ALREADY_EXISTS", _) | (_, 409) => ErrorKind::AlreadyExists,
                // MLflow reports a missing alias as 400 INVALID_PARAMETER_VALUE.
                ("INVALID_PARAMETER_VALUE", _) if message.contains("alias") && message.contains("not found") => {
                    ErrorKind::NotFound
                }
                (_, 401 | 403) => ErrorKind::PermissionDenied,
                (_, 400..=499) => ErrorKind::InvalidArgument,
                (_, 500..=599) => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Protocol(_) => ErrorKind::Internal,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub fn is_already_exists(&self) -> bool {
        self.kind() == ErrorKind::AlreadyExists
    }

    /// Worth another attempt: connection failures, timeouts and 5xx answers.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    pub(crate) fn from_reqwest(err: reqwest::Error, timeout: Duration) -> Self {
        if err.is_timeout() {
            Error::Timeout(timeout)
        } else if err.is_decode() {
            Error::Protocol(err.to_string())
        } else {
            // The URL (never credentials: they travel in headers) helps operators.
            Error::Unavailable(err.without_url().to_string())
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
