//! The serving error kinds. Each transport maps them exactly once
//! (`grpc::status`, `http::ApiError`).

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// No such model is configured here.
    #[error("{0}")]
    NotFound(String),
    /// The model is configured but no version is loaded yet.
    #[error("{0}")]
    Unavailable(String),
    /// The request does not fit the model's signature.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller pinned a version that is not the one serving.
    #[error("{0}")]
    VersionMismatch(String),
    /// Too many requests in flight for this model.
    #[error("{0}")]
    Overloaded(String),
    /// The caller's deadline passed before the model ran.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The model failed while computing on valid-looking inputs.
    #[error("model execution failed: {0}")]
    Model(String),
    /// API keys are required here and the request has none, or not a valid one.
    #[error("{0}")]
    Unauthenticated(String),
    /// A bug or a broken invariant in Ferry.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    /// Every `kind()`, in a fixed order (metrics keep one counter per kind).
    pub const KINDS: [&'static str; 9] = [
        "not_found",
        "unavailable",
        "invalid_argument",
        "version_mismatch",
        "overloaded",
        "deadline_exceeded",
        "model",
        "unauthenticated",
        "internal",
    ];

    pub fn kind_index(&self) -> usize {
        Self::KINDS.iter().position(|k| *k == self.kind()).unwrap_or(Self::KINDS.len() - 1)
    }

    /// A short, closed label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServeError::NotFound(_) => "not_found",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::InvalidArgument(_) => "invalid_argument",
            ServeError::VersionMismatch(_) => "version_mismatch",
            ServeError::Overloaded(_) => "overloaded",
            ServeError::DeadlineExceeded(_) => "deadline_exceeded",
            ServeError::Model(_) => "model",
            ServeError::Unauthenticated(_) => "unauthenticated",
            ServeError::Internal(_) => "internal",
        }
    }
}
