//! The node's error type and its one mapping onto gRPC status codes.

use tidewire_core::{CoreError, VerifyError};
use tidewire_store::StoreError;

/// Everything that can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration or files at start-up.
    #[error("{0}")]
    Config(String),
    /// A listen address of the configuration (`key`: `listen` or `metrics_listen`) could not
    /// be bound; `hint` says what to do about `error`.
    #[error("key `{key}`: cannot bind {addr}: {error}{hint}")]
    Bind {
        /// The configuration key that gave the address.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// What the system said.
        error: std::io::Error,
        /// What to do about it (empty, or starting with a space).
        hint: &'static str,
    },
    /// A request is malformed or invalid; the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// The caller's certificate is not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller presented no usable identity.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Too many requests.
    #[error("{0}")]
    RateLimited(String),
    /// Too large.
    #[error("{0}")]
    TooLarge(String),
    /// An envelope failed verification.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A notification or key problem.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A concurrent request this one depended on failed; retry.
    #[error("{0}")]
    Aborted(String),
    /// The request names something already used for something else (an idempotency key
    /// reused for another notification).
    #[error("{0}")]
    Conflict(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Anything else internal.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            NodeError::Config(_) | NodeError::Bind { .. } => Code::FailedPrecondition,
            NodeError::Invalid(_) | NodeError::Core(_) => Code::InvalidArgument,
            NodeError::PermissionDenied(_) => Code::PermissionDenied,
            NodeError::Unauthenticated(_) => Code::Unauthenticated,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::RateLimited(_) => Code::ResourceExhausted,
            NodeError::TooLarge(_) => Code::ResourceExhausted,
            NodeError::Verify(VerifyError::TooLarge { .. }) => Code::ResourceExhausted,
            NodeError::Verify(_) => Code::InvalidArgument,
            NodeError::Aborted(_) => Code::Aborted,
            NodeError::Conflict(_) => Code::AlreadyExists,
            NodeError::Store(StoreError::Closed) | NodeError::ShuttingDown => Code::Unavailable,
            NodeError::Store(_) | NodeError::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
