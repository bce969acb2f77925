//! The client's one error type: what a node answered, or why no answer came.
//!
//! The distinction matters for retries. A node's answer (`Error::Status`)
//! keeps its gRPC code, which says whether trying again can help. No answer
//! (`Error::Transport`) means the outcome of a write is unknown: it may have
//! been committed. Retrying is then safe only because every call the client
//! retries is either idempotent (enqueue with ids the client chose, ack with
//! the same fence, reads) or fails harmlessly the second time (a repeated
//! nack or release answers "lease lost").

use tonic::Code;

/// The gRPC metadata key under which a node names the leader's client
/// address when it answers UNAVAILABLE.
pub const LEADER_METADATA_KEY: &str = "x-lockstep-leader";

/// Everything a client call can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node answered with a gRPC status other than OK.
    #[error("{endpoint} answered {code:?}: {message}")]
    Status {
        /// The status code the node sent.
        code: Code,
        /// The node's message, as it sent it.
        message: String,
        /// The node that answered, as `host:port`.
        endpoint: String,
        /// The leader's client address, when the node named one
        /// (`x-lockstep-leader`, sent with UNAVAILABLE).
        leader: Option<String>,
    },
    /// No answer came: the connection could not be made, broke during the
    /// call, or the call deadline passed. `code` is what gRPC calls it
    /// (usually UNAVAILABLE, or DEADLINE_EXCEEDED for the deadline). The
    /// outcome of a write is unknown.
    #[error("no answer from {endpoint} ({code:?}): {message}")]
    Transport {
        /// The code gRPC gave the failure.
        code: Code,
        /// What went wrong, as the transport described it.
        message: String,
        /// The node the call was sent to, as `host:port`.
        endpoint: String,
    },
    /// A configuration value is unusable; `key` names it.
    #[error("invalid configuration `{key}`: {problem}")]
    Config {
        /// The key of the refused value, as `retry.backoff_min`,
        /// `endpoints[1]` or `worker.concurrency`.
        key: String,
        /// What is wrong with the value, and what would be accepted.
        problem: String,
    },
    /// A node answered OK with something the client cannot use (for
    /// example fewer results than jobs). A bug on one side or the other.
    #[error("malformed answer to {call}: {problem}")]
    Protocol {
        /// The call whose answer was malformed, as `ack`, or `batch` for a
        /// batcher.
        call: &'static str,
        /// What the answer got wrong.
        problem: String,
    },
    /// The request is larger than `message_bytes_max`; it was not sent
    /// (a node would refuse it the same way, as OUT_OF_RANGE).
    #[error(
        "{call}: the request is {bytes} bytes, more than message_bytes_max = {max}; \
         send fewer or smaller jobs per call"
    )]
    TooLarge {
        /// The call that was not sent, as `enqueue`.
        call: &'static str,
        /// The encoded size of the request, in bytes.
        bytes: usize,
        /// The bound it exceeded, in bytes:
        /// [`ClientConfig::message_bytes_max`](crate::ClientConfig::message_bytes_max).
        max: usize,
    },
    /// The batcher or worker this call went through has stopped. The text
    /// says which one and what was lost.
    #[error("closed: {0}")]
    Closed(String),
    /// The cluster no longer holds the client's session (it expired or was
    /// evicted), and nothing applied. The client opens a new session and
    /// resends by itself; a caller sees this only if the new session was
    /// refused too.
    #[error("{endpoint}: session unknown: {message}")]
    SessionUnknown {
        /// The node's message.
        message: String,
        /// The node that answered, as `host:port`.
        endpoint: String,
    },
}

/// The metadata key under which a node names an error whose code alone does
/// not say what to do.
pub(crate) const ERROR_METADATA_KEY: &str = "x-lockstep-error";

impl Error {
    /// Turns a tonic status into an error. A status that tonic made locally
    /// from an I/O or HTTP/2 failure carries a `source`; one that a node
    /// sent does not. That is how the two are told apart.
    pub(crate) fn from_status(status: tonic::Status, endpoint: &str) -> Error {
        if status
            .metadata()
            .get(ERROR_METADATA_KEY)
            .is_some_and(|v| v == "session-unknown")
        {
            return Error::SessionUnknown {
                message: status.message().to_string(),
                endpoint: endpoint.to_string(),
            };
        }
        if std::error::Error::source(&status).is_some() {
            return Error::Transport {
                code: status.code(),
                message: status.message().to_string(),
                endpoint: endpoint.to_string(),
            };
        }
        let leader = status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        Error::Status {
            code: status.code(),
            message: status.message().to_string(),
            endpoint: endpoint.to_string(),
            leader,
        }
    }

    pub(crate) fn config(key: &str, problem: impl Into<String>) -> Error {
        Error::Config {
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// The gRPC code of the error. Errors that never reached a node map to
    /// the nearest code: `Config` to INVALID_ARGUMENT, `Protocol` to
    /// INTERNAL, `Closed` to CANCELLED.
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } | Error::Transport { code, .. } => *code,
            Error::SessionUnknown { .. } => Code::FailedPrecondition,
            Error::Config { .. } => Code::InvalidArgument,
            Error::Protocol { .. } => Code::Internal,
            Error::TooLarge { .. } => Code::OutOfRange,
            Error::Closed(_) => Code::Cancelled,
        }
    }

    /// The message a person can act on.
    pub fn message(&self) -> String {
        match self {
            Error::Status { message, .. }
            | Error::Transport { message, .. }
            | Error::SessionUnknown { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// True when a node refused a call on a lease (ack, nack, extend,
    /// release, dead-letter) because the fence is no longer the job's
    /// current one: the lease expired and the job may be with another
    /// worker. The work must not be acked; it will be delivered again.
    ///
    /// On calls that present a fence, FAILED_PRECONDITION means exactly
    /// this (SPEC 2.3).
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            Error::Status {
                code: Code::FailedPrecondition,
                ..
            }
        )
    }

    /// True when the node said the named thing does not exist (queue,
    /// offset, dead letter, member).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Status {
                code: Code::NotFound,
                ..
            }
        )
    }

    /// True when the same call, sent again (possibly to another node), may
    /// succeed: UNAVAILABLE (no leader, or the outcome of a write is
    /// unknown), DEADLINE_EXCEEDED, and every failure to get an answer.
    ///
    /// The client retries these by itself, within its retry policy, except
    /// DEADLINE_EXCEEDED on calls that are not idempotent (fetch, nack,
    /// release, dead-letter and the membership and admin writes whose
    /// repetition would answer differently). It never retries
    /// INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
    /// RESOURCE_EXHAUSTED or UNAUTHENTICATED: the answer would be the same.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { code, .. } => {
                matches!(code, Code::Unavailable | Code::DeadlineExceeded)
            }
            Error::Transport { .. } => true,
            Error::Config { .. }
            | Error::Protocol { .. }
            | Error::TooLarge { .. }
            | Error::Closed(_)
            | Error::SessionUnknown { .. } => false,
        }
    }

    /// Whether the client retries this error for a call that is, or is
    /// not, idempotent.
    ///
    /// A sequenced call (one under the client's session, applied at most
    /// once) is retried after ABORTED and DEADLINE_EXCEEDED too: the
    /// cluster answers a repeat with the first result.
    pub(crate) fn retry_allowed(&self, idempotent: bool, sequenced: bool) -> bool {
        if sequenced {
            return self.is_retryable() || self.may_have_applied();
        }
        self.is_retryable() && (idempotent || self.code() != Code::DeadlineExceeded)
    }

    /// True when the call may have taken effect although it failed: a
    /// node answered ABORTED (it reached Raft and no answer came), or no
    /// answer came at all.
    pub fn may_have_applied(&self) -> bool {
        match self {
            Error::Status { code, .. } => matches!(code, Code::Aborted | Code::DeadlineExceeded),
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    /// The leader a node named in its answer, if any.
    pub fn leader_hint(&self) -> Option<&str> {
        match self {
            Error::Status { leader, .. } => leader.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn answered(code: Code) -> Error {
        Error::from_status(tonic::Status::new(code, "m"), "n1:1")
    }

    #[test]
    fn a_sequenced_call_is_retried_when_it_may_have_applied() {
        assert!(answered(Code::Aborted).retry_allowed(false, true));
        assert!(answered(Code::DeadlineExceeded).retry_allowed(false, true));
        assert!(answered(Code::Unavailable).retry_allowed(false, true));
        assert!(!answered(Code::Aborted).retry_allowed(true, false));
        assert!(!answered(Code::FailedPrecondition).retry_allowed(false, true));
        let unknown = Error::from_status(
            {
                let mut s = tonic::Status::failed_precondition("session 3 is unknown");
                s.metadata_mut().insert(
                    ERROR_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static("session-unknown"),
                );
                s
            },
            "n1:1",
        );
        assert!(matches!(unknown, Error::SessionUnknown { .. }));
        assert!(!unknown.is_lease_lost());
        assert!(!unknown.retry_allowed(true, true));
    }

    #[test]
    fn answers_are_retried_only_when_another_try_can_differ() {
        assert!(answered(Code::Unavailable).retry_allowed(false, false));
        assert!(answered(Code::Unavailable).retry_allowed(true, false));
        assert!(answered(Code::DeadlineExceeded).retry_allowed(true, false));
        assert!(!answered(Code::DeadlineExceeded).retry_allowed(false, false));
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
            Code::Aborted,
        ] {
            let e = answered(code);
            assert!(!e.is_retryable(), "{code:?}");
            assert!(!e.retry_allowed(true, false), "{code:?}");
        }
    }

    #[test]
    fn a_locally_made_status_is_a_transport_error_and_retryable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        let e = Error::from_status(status, "n1:1");
        assert!(
            matches!(
                e,
                Error::Transport {
                    code: Code::Unavailable,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.retry_allowed(false, false));
        let deadline = Error::Transport {
            code: Code::DeadlineExceeded,
            message: "late".into(),
            endpoint: "n1:1".into(),
        };
        assert!(deadline.is_retryable());
        assert!(deadline.retry_allowed(true, false));
        assert!(!deadline.retry_allowed(false, false));
    }

    #[test]
    fn lease_lost_is_failed_precondition_from_a_node() {
        assert!(answered(Code::FailedPrecondition).is_lease_lost());
        assert!(!answered(Code::NotFound).is_lease_lost());
        assert!(answered(Code::NotFound).is_not_found());
        assert!(!Error::Closed("x".into()).is_lease_lost());
    }

    #[test]
    fn the_leader_hint_is_read_from_metadata() {
        let mut status = tonic::Status::unavailable("no leader answered");
        status
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "127.0.0.2:7100".parse().unwrap());
        let e = Error::from_status(status, "127.0.0.1:7100");
        assert_eq!(e.leader_hint(), Some("127.0.0.2:7100"));
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.to_string().contains("127.0.0.1:7100"), "{e}");
        assert_eq!(answered(Code::Unavailable).leader_hint(), None);
    }

    #[test]
    fn errors_that_reached_no_node_have_a_code_too() {
        assert_eq!(
            Error::config("endpoints", "empty").code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Error::config("endpoints", "empty").to_string(),
            "invalid configuration `endpoints`: empty"
        );
        assert!(!Error::config("k", "p").is_retryable());
    }
}
