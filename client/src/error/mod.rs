//! The SDK's error type: one typed variant per decision a caller makes, built from the gRPC status
//! code and the `google.rpc.ErrorInfo` reason the server puts in the status details.

mod status;

use std::time::Duration;

use tonic::Code;

use crate::LossReason;

/// An error from a fencepost call.
///
/// Callers branch on the variant: a fencing rejection ([`Error::StaleToken`], [`Error::LeaseLost`],
/// [`Error::HeadMismatch`], [`Error::ExternalModification`]) means "stop writing, re-read", a
/// [`Error::Timeout`] means the lease stayed busy, [`Error::Unavailable`] is worth a retry, and
/// [`Error::InvalidInput`] will fail the same way again. The `message` is the server's text, meant
/// for a person.
///
/// ```no_run
/// use fencepost_client::{Error, Lease};
///
/// # async fn demo(lease: &Lease) -> Result<(), Error> {
/// match lease.append([r#"{"role":"assistant"}"#]).await {
///     Ok(done) => println!("seq {}", done.first_seq),
///     Err(err) if err.is_fencing() => eprintln!("stop writing and re-read: {err}"),
///     Err(Error::InvalidInput { reason, message }) => eprintln!("fix the entry: {reason}: {message}"),
///     Err(err) => return Err(err),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was refused as malformed (`INVALID_ARGUMENT`): a bad resource name, an entry that
    /// is not a single-line JSON object, an oversize entry or batch, a bad field, or a bad endpoint.
    #[error("{reason}: {message}")]
    InvalidInput {
        /// `INVALID_RESOURCE`, `INVALID_ENTRY`, `ENTRY_TOO_LARGE`, `BATCH_TOO_LARGE`,
        /// `INVALID_ARGUMENT`, or `INVALID_ENDPOINT` (raised locally by [`crate::Client::connect`]).
        reason: String,
        /// What was wrong.
        message: String,
    },
    /// The presented fencing token is not the resource's current token (`STALE_TOKEN`): someone
    /// else was granted the resource since.
    #[error("STALE_TOKEN: {message}")]
    StaleToken {
        /// What was presented and what is current.
        message: String,
    },
    /// The lease is no longer live or does not cover this resource.
    #[error("{reason}: {message}")]
    LeaseLost {
        /// `LEASE_EXPIRED`, `LEASE_RELEASED`, `LEASE_NOT_FOUND` or `WRONG_RESOURCE`.
        reason: String,
        /// What happened to the lease.
        message: String,
    },
    /// A compare-and-append found a different write epoch than expected (`HEAD_MISMATCH`).
    #[error("HEAD_MISMATCH: {message}")]
    HeadMismatch {
        /// The expected and the current epoch.
        message: String,
    },
    /// The session file was changed behind the server's back (`EXTERNAL_MODIFICATION`); the server
    /// refuses appends until an operator adopts the file.
    #[error("EXTERNAL_MODIFICATION: {message}")]
    ExternalModification {
        /// What the server found.
        message: String,
    },
    /// An acquire's wait ran out while the resource stayed held (`WAIT_TIMEOUT`).
    #[error("WAIT_TIMEOUT: {message}")]
    Timeout {
        /// How long the caller waited.
        message: String,
    },
    /// A call got no answer within the client's per-request timeout.
    #[error("REQUEST_TIMEOUT: no answer within {}", humantime::format_duration(*after))]
    RequestTimeout {
        /// The per-request timeout that ran out.
        after: Duration,
    },
    /// The server could not be reached, the connection broke, or the server is stopping.
    #[error("UNAVAILABLE: {message}")]
    Unavailable {
        /// What failed.
        message: String,
    },
    /// The lease was already lost when this call was made through it (see [`crate::Lease::lost`]);
    /// nothing was sent. Like [`Error::LeaseLost`], a fencing rejection.
    #[error("LEASE_LOST: the lease was lost earlier: {reason}")]
    Lost {
        /// Why the lease was lost.
        reason: LossReason,
    },
    /// A read of what changed while a lease was yielded returned fewer entries than the heads
    /// promised: the log changed in a way the server should never allow. Nothing is reported as
    /// changed; re-read the resource.
    #[error(
        "INCOMPLETE_CHANGES: expected {expected} entries since the yield, the server sent {received}"
    )]
    ChangesIncomplete {
        /// Entries between the two heads.
        expected: u64,
        /// Entries the read returned.
        received: u64,
    },
    /// Anything else: storage failures, corrupt metadata, the server's lease limits
    /// (`TOO_MANY_LEASES`, not retried), unexpected codes.
    #[error("{}: {message}", reason.as_deref().unwrap_or_else(|| code_name(*code)))]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The `ErrorInfo` reason, when the server sent one (e.g. `STORAGE_FAILED`).
        reason: Option<String>,
        /// The status message.
        message: String,
    },
}

impl Error {
    /// The machine-readable reason: the server's `ErrorInfo` reason for server rejections
    /// (`STALE_TOKEN`, `LEASE_EXPIRED`, ...), `REQUEST_TIMEOUT` for a client-side timeout, and
    /// `None` when there is none (transport failures, statuses without details).
    ///
    /// ```
    /// let err = fencepost_client::Error::StaleToken { message: "token 3 is stale".to_owned() };
    /// assert_eq!(err.reason(), Some("STALE_TOKEN"));
    /// ```
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { reason, .. } | Self::LeaseLost { reason, .. } => Some(reason),
            Self::StaleToken { .. } => Some("STALE_TOKEN"),
            Self::HeadMismatch { .. } => Some("HEAD_MISMATCH"),
            Self::ExternalModification { .. } => Some("EXTERNAL_MODIFICATION"),
            Self::Timeout { .. } => Some("WAIT_TIMEOUT"),
            Self::RequestTimeout { .. } => Some("REQUEST_TIMEOUT"),
            Self::Lost { .. } => Some("LEASE_LOST"),
            Self::ChangesIncomplete { .. } => Some("INCOMPLETE_CHANGES"),
            Self::Unavailable { .. } => None,
            Self::Other { reason, .. } => reason.as_deref(),
        }
    }

    /// True for the fencing rejections: the caller's right to write is gone (stale token, lost
    /// lease, wrong resource) or the file is not what the caller expected (head mismatch, external
    /// modification). Retrying the same write cannot succeed.
    ///
    /// ```
    /// let err = fencepost_client::Error::HeadMismatch { message: "epoch moved".to_owned() };
    /// assert!(err.is_fencing());
    /// ```
    #[must_use]
    pub fn is_fencing(&self) -> bool {
        matches!(
            self,
            Self::StaleToken { .. }
                | Self::LeaseLost { .. }
                | Self::Lost { .. }
                | Self::HeadMismatch { .. }
                | Self::ExternalModification { .. }
        )
    }

    /// True for the failures a retry may cure: the server could not be reached, the connection
    /// broke, the server is stopping ([`Error::Unavailable`]), or no answer came within the
    /// request timeout ([`Error::RequestTimeout`]). The SDK retries these by itself (see
    /// [`crate::RetryPolicy`]); fencing rejections and invalid input are never retried.
    ///
    /// ```
    /// use fencepost_client::Error;
    ///
    /// let down = Error::Unavailable { message: "connection reset".to_owned() };
    /// assert!(down.is_transient());
    /// let stale = Error::StaleToken { message: "token 3 is stale".to_owned() };
    /// assert!(!stale.is_transient());
    /// ```
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::RequestTimeout { .. })
    }

    /// An `Unavailable` error from a transport failure, with its whole cause chain in the message.
    pub(crate) fn transport(context: &str, err: &tonic::transport::Error) -> Self {
        // Start below tonic's own "transport error", which says nothing the context does not.
        let cause =
            std::error::Error::source(err).map_or_else(|| err.to_string(), status::source_chain);
        Self::Unavailable {
            message: format!("{context}: {cause}"),
        }
    }

    /// A locally detected bad endpoint.
    pub(crate) fn invalid_endpoint(message: String) -> Self {
        Self::InvalidInput {
            reason: "INVALID_ENDPOINT".to_owned(),
            message,
        }
    }

    /// Locally detected bad TLS material (a CA or client certificate, a key).
    pub(crate) fn invalid_tls(message: String) -> Self {
        Self::InvalidInput {
            reason: "INVALID_TLS".to_owned(),
            message,
        }
    }
}

/// The canonical upper-case name of a gRPC code, as used in logs and error lines.
///
/// ```
/// assert_eq!(fencepost_client::code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
/// ```
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeout_names_its_duration() {
        let err = Error::RequestTimeout {
            after: Duration::from_millis(1500),
        };
        assert_eq!(err.reason(), Some("REQUEST_TIMEOUT"));
        assert_eq!(
            err.to_string(),
            "REQUEST_TIMEOUT: no answer within 1s 500ms"
        );
    }

    #[test]
    fn a_lease_lost_earlier_is_a_fencing_error_that_is_not_retried() {
        let err = Error::Lost {
            reason: LossReason::ConnectionLost,
        };
        assert!(err.is_fencing());
        assert!(!err.is_transient());
        assert_eq!(err.reason(), Some("LEASE_LOST"));
    }

    #[test]
    fn only_unavailable_and_request_timeouts_are_transient() {
        assert!(
            Error::RequestTimeout {
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(
            !Error::InvalidInput {
                reason: "INVALID_ENTRY".to_owned(),
                message: String::new()
            }
            .is_transient()
        );
        assert!(
            !Error::HeadMismatch {
                message: String::new()
            }
            .is_transient()
        );
        assert!(
            !Error::Timeout {
                message: String::new()
            }
            .is_transient()
        );
    }
}
