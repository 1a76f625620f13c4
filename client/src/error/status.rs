//! Turning a gRPC status into the typed [`Error`]: the server's `ErrorInfo` reason decides, the
//! status code is the fallback, and a status tonic made locally from a broken connection counts as
//! [`Error::Unavailable`].

use fencepost as proto;
use tonic::Code;
use tonic_types::StatusExt;

use super::Error;

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
            // The server's transport refused a request larger than any batch it accepts, before
            // the server could say so itself: the same mistake as a batch over the limit.
            (Code::OutOfRange, None) if message.contains("message length too large") => {
                Self::InvalidInput {
                    reason: "BATCH_TOO_LARGE".to_owned(),
                    message: format!(
                        "the request is larger than the server accepts (its --max-batch-bytes \
                         plus framing); split the batch: {message}"
                    ),
                }
            }
            // Bytes that are no HTTP/2 frame at all: the peer speaks something else (TLS, most
            // likely, or HTTP/1). Retrying cannot help, so it is not reported as transient.
            (_, None) if message.contains("frame with invalid size") => Self::Other {
                code,
                reason: Some("PROTOCOL_MISMATCH".to_owned()),
                message: format!(
                    "{message}: the server does not speak plain HTTP/2; if it serves TLS, use an \
                     https:// endpoint"
                ),
            },
            (Code::Unavailable, _) => Self::Unavailable { message },
            // tonic made this status itself from an I/O, HTTP/2 or hyper failure (a status the
            // server sent has no source): the connection broke under the call.
            (Code::Unknown | Code::Internal | Code::Cancelled, None)
                if std::error::Error::source(&status).is_some() =>
            {
                Self::Unavailable { message }
            }
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
pub(super) fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;
    use crate::Error;

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
    fn a_status_tonic_made_from_a_broken_connection_is_unavailable() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let status = tonic::Status::from_error(Box::new(reset));
        assert_eq!(status.code(), Code::Unknown);
        let err = Error::from(status);
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[test]
    fn a_request_the_servers_transport_refused_as_too_large_is_bad_input() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000068 bytes, the limit is: 4390912 bytes",
        );
        let err = Error::from(status);
        assert!(
            matches!(&err, Error::InvalidInput { reason, .. } if reason == "BATCH_TOO_LARGE"),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn an_unknown_status_sent_by_the_server_is_not_transient() {
        let err = Error::from(tonic::Status::unknown("boom"));
        assert!(matches!(err, Error::Other { .. }));
        assert!(!err.is_transient());
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
}
