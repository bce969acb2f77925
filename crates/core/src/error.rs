//! Typed errors of the core, each mapped one-to-one to a gRPC code (SPEC 4).
//!
//! A message names the field or limit at fault so a person can act on it.

use serde::{Deserialize, Serialize};

/// The gRPC status codes the core can produce. The server maps each to
/// `tonic::Code` one-to-one; the core itself does not depend on tonic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    /// The request may have applied; its outcome is not known.
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// A field of the request is malformed or beyond a limit that no state
    /// change could make room for.
    #[error("invalid argument `{field}`: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("queue `{queue}` already exists with a different configuration")]
    AlreadyExists { queue: String },
    /// The lease named by (offset, fence) is not the live one: it expired,
    /// was re-granted, or the job finished under another fence.
    #[error("lease lost: offset {offset} is not leased under fence {fence}")]
    LeaseLost { offset: u64, fence: u64 },
    /// The request is valid but the state refuses it (for example requeueing
    /// a job that is not dead-lettered).
    #[error("failed precondition: {message}")]
    FailedPrecondition { message: String },
    /// A capacity limit of the queue would be exceeded; retrying after the
    /// queue drains can succeed.
    #[error("resource exhausted: `{limit}` = {max} would be exceeded ({message})")]
    ResourceExhausted {
        limit: String,
        max: u64,
        message: String,
    },
    /// The request names a session the cluster does not hold (never
    /// opened, expired or evicted). Nothing changed: open a new session.
    #[error("session {session} is unknown (expired or evicted); open a new session")]
    SessionUnknown { session: u64 },
    /// The request's first result is no longer cached (its number fell
    /// below the session's floor): it may have applied.
    #[error("outcome unknown: the reply to request {seq} of session {session} is no longer kept; it may have applied")]
    ReplyForgotten { session: u64, seq: u64 },
    /// A later try of the same request was applied first, and its result
    /// was not kept (an empty fetch): this older try changes nothing.
    /// Last in the enum, so older encodings are unchanged.
    #[error("superseded: a later try of request {seq} of session {session} was applied first; this try changed nothing")]
    Superseded { session: u64, seq: u64 },
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::LeaseLost { .. }
            | Error::FailedPrecondition { .. }
            | Error::SessionUnknown { .. } => Code::FailedPrecondition,
            Error::ReplyForgotten { .. } | Error::Superseded { .. } => Code::Aborted,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
        }
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn queue_not_found(queue: &str) -> Error {
        Error::NotFound {
            what: format!("queue `{queue}`"),
        }
    }

    pub(crate) fn exhausted(limit: &str, max: u64, message: impl Into<String>) -> Error {
        Error::ResourceExhausted {
            limit: limit.to_string(),
            max,
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
