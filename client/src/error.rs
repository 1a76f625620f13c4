//! The SDK's error type: one typed variant per decision a caller makes, built from the gRPC status
//! code and the `google.rpc.ErrorInfo` reason the server puts in the status details.

use std::time::Duration;

use fencepost as proto;
use tonic::Code;
use tonic_types::StatusExt;

/// An error from a fencepost call.
///
/// Callers branch on the variant: a fencing rejection ([`Error::StaleToken`], [`Error::LeaseLost`],
/// [`Error::HeadMismatch`], [`Error::ExternalModification`]) means "stop writing, re-read", a
/// [`Error::Timeout`] means the lease stayed busy, [`Error::Unavailable`] is worth a retry, and
/// [`Error::InvalidInput`] will fail the same way again. The `message` is the server's text, meant
/// for a person.
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
    /// Anything else: storage failures, corrupt metadata, unexpected codes.
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
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { reason, .. } | Self::LeaseLost { reason, .. } => Some(reason),
            Self::StaleToken { .. } => Some("STALE_TOKEN"),
            Self::HeadMismatch { .. } => Some("HEAD_MISMATCH"),
            Self::ExternalModification { .. } => Some("EXTERNAL_MODIFICATION"),
            Self::Timeout { .. } => Some("WAIT_TIMEOUT"),
            Self::RequestTimeout { .. } => Some("REQUEST_TIMEOUT"),
            Self::Unavailable { .. } => None,
            Self::Other { reason, .. } => reason.as_deref(),
        }
    }

    /// True for the fencing rejections: the caller's right to write is gone (stale token, lost
    /// lease, wrong resource) or the file is not what the caller expected (head mismatch, external
    /// modification). Retrying the same write cannot succeed.
    #[must_use]
    pub fn is_fencing(&self) -> bool {
        matches!(
            self,
            Self::StaleToken { .. }
                | Self::LeaseLost { .. }
                | Self::HeadMismatch { .. }
                | Self::ExternalModification { .. }
        )
    }

    /// An `Unavailable` error from a transport failure, with its whole cause chain in the message.
    pub(crate) fn transport(context: &str, err: &tonic::transport::Error) -> Self {
        // Start below tonic's own "transport error", which says nothing the context does not.
        let cause = std::error::Error::source(err).map_or_else(|| err.to_string(), source_chain);
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
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let reason = status
            .get_details_error_info()
            .filter(|info| info.domain == proto::ERROR_DOMAIN)
            .map(|info| info.reason);
        let message = status_message(&status);
        let code = status.code();
        // The reason decides first: it is the server's deliberate classification. The code is the
        // fallback for statuses without fencepost details (proxies, transport failures).
        match (code, reason.as_deref()) {
            (_, Some("STALE_TOKEN")) => Self::StaleToken { message },
            (
                _,
                Some("LEASE_EXPIRED" | "LEASE_RELEASED" | "LEASE_NOT_FOUND" | "WRONG_RESOURCE"),
            ) => Self::LeaseLost {
                reason: reason.unwrap_or_default(),
                message,
            },
            (_, Some("HEAD_MISMATCH")) => Self::HeadMismatch { message },
            (_, Some("EXTERNAL_MODIFICATION")) => Self::ExternalModification { message },
            (_, Some("WAIT_TIMEOUT")) => Self::Timeout { message },
            (Code::InvalidArgument, _) => Self::InvalidInput {
                reason: reason.unwrap_or_else(|| "INVALID_ARGUMENT".to_owned()),
                message,
            },
            (Code::Unavailable, _) => Self::Unavailable { message },
            _ => Self::Other {
                code,
                reason,
                message,
            },
        }
    }
}

/// The status message, completed with the transport cause when tonic produced the status itself
/// from an I/O failure (its message alone is then often just "transport error").
fn status_message(status: &tonic::Status) -> String {
    let message = status.message().to_owned();
    match std::error::Error::source(status) {
        Some(source) => {
            let cause = source_chain(source);
            if message.is_empty() {
                cause
            } else if message.contains(&cause) {
                message
            } else {
                format!("{message}: {cause}")
            }
        }
        None => message,
    }
}

/// "outer: inner: innermost", skipping a cause whose text its parent already contains.
fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// The canonical upper-case name of a gRPC code, as used in logs and error lines.
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
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    fn status(code: Code, reason: &str, message: &str) -> tonic::Status {
        tonic::Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(reason, proto::ERROR_DOMAIN, HashMap::new()),
        )
    }

    #[test]
    fn stale_token_status_becomes_stale_token() {
        let err = Error::from(status(
            Code::FailedPrecondition,
            "STALE_TOKEN",
            "token 3 is stale; the current token is 5",
        ));
        assert_eq!(
            err,
            Error::StaleToken {
                message: "token 3 is stale; the current token is 5".to_owned()
            }
        );
        assert_eq!(err.reason(), Some("STALE_TOKEN"));
        assert!(err.is_fencing());
        assert_eq!(
            err.to_string(),
            "STALE_TOKEN: token 3 is stale; the current token is 5"
        );
    }

    #[test]
    fn every_lost_lease_reason_becomes_lease_lost_with_that_reason() {
        for (code, reason) in [
            (Code::FailedPrecondition, "LEASE_EXPIRED"),
            (Code::FailedPrecondition, "LEASE_RELEASED"),
            (Code::FailedPrecondition, "WRONG_RESOURCE"),
            (Code::NotFound, "LEASE_NOT_FOUND"),
        ] {
            let err = Error::from(status(code, reason, "gone"));
            assert_eq!(
                err,
                Error::LeaseLost {
                    reason: reason.to_owned(),
                    message: "gone".to_owned()
                }
            );
            assert_eq!(err.reason(), Some(reason));
        }
    }

    #[test]
    fn head_mismatch_and_external_modification_are_fencing_rejections() {
        let head = Error::from(status(Code::FailedPrecondition, "HEAD_MISMATCH", "m"));
        assert!(matches!(head, Error::HeadMismatch { .. }));
        let external = Error::from(status(
            Code::FailedPrecondition,
            "EXTERNAL_MODIFICATION",
            "m",
        ));
        assert!(matches!(external, Error::ExternalModification { .. }));
        assert!(head.is_fencing() && external.is_fencing());
    }

    #[test]
    fn wait_timeout_becomes_timeout() {
        let err = Error::from(status(Code::DeadlineExceeded, "WAIT_TIMEOUT", "waited 1s"));
        assert_eq!(
            err,
            Error::Timeout {
                message: "waited 1s".to_owned()
            }
        );
        assert!(!err.is_fencing());
    }

    #[test]
    fn invalid_argument_keeps_the_specific_reason() {
        for reason in [
            "INVALID_RESOURCE",
            "INVALID_ENTRY",
            "ENTRY_TOO_LARGE",
            "BATCH_TOO_LARGE",
            "INVALID_ARGUMENT",
        ] {
            let err = Error::from(status(Code::InvalidArgument, reason, "bad"));
            assert_eq!(err.reason(), Some(reason));
            assert!(matches!(err, Error::InvalidInput { .. }));
        }
    }

    #[test]
    fn invalid_argument_without_details_is_still_invalid_input() {
        let err = Error::from(tonic::Status::invalid_argument("bad field"));
        assert_eq!(
            err,
            Error::InvalidInput {
                reason: "INVALID_ARGUMENT".to_owned(),
                message: "bad field".to_owned()
            }
        );
    }

    #[test]
    fn unavailable_with_or_without_details_is_unavailable() {
        let stopping = Error::from(status(Code::Unavailable, "SHUTTING_DOWN", "stopping"));
        assert!(matches!(stopping, Error::Unavailable { .. }));
        let plain = Error::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(
            plain,
            Error::Unavailable {
                message: "connection refused".to_owned()
            }
        );
        assert_eq!(plain.reason(), None);
    }

    #[test]
    fn storage_failure_is_other_with_code_and_reason() {
        let err = Error::from(status(Code::Internal, "STORAGE_FAILED", "fsync failed"));
        assert_eq!(
            err,
            Error::Other {
                code: Code::Internal,
                reason: Some("STORAGE_FAILED".to_owned()),
                message: "fsync failed".to_owned()
            }
        );
        assert_eq!(err.to_string(), "STORAGE_FAILED: fsync failed");
    }

    #[test]
    fn a_status_without_details_names_its_code() {
        let err = Error::from(tonic::Status::deadline_exceeded("too slow"));
        assert_eq!(err.reason(), None);
        assert_eq!(err.to_string(), "DEADLINE_EXCEEDED: too slow");
    }

    #[test]
    fn a_reason_from_another_domain_is_not_trusted() {
        let foreign = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "proxy says no",
            ErrorDetails::with_error_info("STALE_TOKEN", "proxy.example", HashMap::new()),
        );
        let err = Error::from(foreign);
        assert!(matches!(
            err,
            Error::Other {
                code: Code::FailedPrecondition,
                reason: None,
                ..
            }
        ));
    }

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
}
