//! Typed errors of the core. Messages are lowercase and say what to fix.

use std::path::PathBuf;

/// Errors building notifications, reading keys and rosters.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The notification JSON is not JSON.
    #[error("notification json is malformed at line {line}, column {column}: {reason}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json said.
        reason: String,
    },
    /// A notification value is invalid.
    #[error("{}", notification_problem(path, reason))]
    Notification {
        /// The offending key or field path.
        path: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A key file could not be read or written.
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A roster file is invalid.
    #[error("roster {}: {reason}", path.display())]
    Roster {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where known.
        reason: String,
    },
    /// Input bytes are not an envelope.
    #[error("not a tidewire envelope: {0}")]
    Decode(String),
}

/// Why an envelope failed verification. Each variant is one distinct failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Bytes that do not decode as an envelope or signed header.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The envelope is larger than the limit.
    #[error("envelope is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The origin node is not in the roster.
    #[error("unknown origin node `{0}`: it is not in the roster")]
    UnknownOrigin(String),
    /// A relaying node is not in the roster.
    #[error("custody entry {index}: unknown node `{node}`: it is not in the roster")]
    UnknownRelay {
        /// Position in the custody chain.
        index: usize,
        /// The claimed node.
        node: String,
    },
    /// No roster key of that node has this key id.
    #[error("node `{node}` has no key `{key_id}` in the roster")]
    UnknownKey {
        /// The signer.
        node: String,
        /// The key id it named.
        key_id: String,
    },
    /// The key exists but was not valid at signing time.
    #[error("key `{key_id}` of node `{node}` was not valid at {at}: valid {window}")]
    KeyNotValid {
        /// The signer.
        node: String,
        /// The key id.
        key_id: String,
        /// The signing time (RFC 3339).
        at: String,
        /// The validity window.
        window: String,
    },
    /// The origin signature does not verify over the signed header bytes.
    #[error(
        "origin signature of `{0}` does not verify: the header was altered or signed by another key"
    )]
    BadOriginSignature(String),
    /// A custody signature does not verify.
    #[error("custody entry {index} (node `{node}`): signature does not verify")]
    BadCustodySignature {
        /// Position in the chain.
        index: usize,
        /// The relay.
        node: String,
    },
    /// A custody entry does not chain onto what precedes it.
    #[error("custody entry {index}: broken chain: {reason}")]
    BrokenCustodyChain {
        /// Position in the chain.
        index: usize,
        /// What does not match.
        reason: String,
    },
    /// A disclosed field does not match any commitment it may claim.
    #[error("field `{path}` does not match any signed commitment: its value or salt was altered")]
    TamperedField {
        /// The field path as received.
        path: String,
    },
    /// A field is disclosed although it was withheld or replaced up the path.
    #[error("field `{path}` is disclosed after {by} withheld or replaced it")]
    Widened {
        /// The field path.
        path: String,
        /// The node that withheld it.
        by: String,
    },
    /// A transformation does not replace a value its author could see.
    #[error("custody entry {index}: transformation of `{path}` {reason}")]
    InvalidTransformation {
        /// Position in the chain.
        index: usize,
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl VerifyError {
    /// A short stable reason label, for counters and the ledger.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::UnknownOrigin(_) | VerifyError::UnknownRelay { .. } => "unknown_node",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::KeyNotValid { .. } => "key_not_valid",
            VerifyError::BadOriginSignature(_) => "bad_signature",
            VerifyError::BadCustodySignature { .. } => "bad_custody_signature",
            VerifyError::BrokenCustodyChain { .. } => "broken_custody",
            VerifyError::TamperedField { .. } => "tampered_field",
            VerifyError::Widened { .. } => "widened",
            VerifyError::InvalidTransformation { .. } => "bad_transformation",
        }
    }
}

/// "notification `handling`: …", or "notification: …" for the whole of it.
fn notification_problem(path: &str, reason: &str) -> String {
    if path.is_empty() {
        format!("notification: {reason}")
    } else {
        format!("notification `{path}`: {reason}")
    }
}
