//! Exit codes and the one-line error report: the part of the CLI contract scripts branch on.

use std::process::ExitCode;

use fencepost_client::Error;

/// Bad input or usage, including the server's INVALID_ARGUMENT (clap's usage errors use it too).
pub const BAD_INPUT: u8 = 2;
/// A fencing rejection: stale token, lost lease, head mismatch, external modification.
pub const FENCED: u8 = 3;
/// Timed out waiting for a lease.
pub const WAIT_TIMEOUT: u8 = 4;
/// Anything else: server unreachable, storage failure, ...
pub const FAILURE: u8 = 1;

/// Why the command failed: an exit code and the one stderr line naming the reason.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    /// `REASON: message`; `None` for a quiet exit (stdout closed by its reader).
    line: Option<String>,
}

impl Failure {
    /// Bad input detected locally, before anything was sent.
    pub fn bad_input(reason: &str, message: &str) -> Self {
        Self::new(BAD_INPUT, reason, message)
    }

    /// A lease found lost locally (a keepalive status), reported like the server's rejection.
    pub fn fenced(reason: &str, message: &str) -> Self {
        Self::new(FENCED, reason, message)
    }

    /// Any other failure.
    pub fn other(reason: &str, message: &str) -> Self {
        Self::new(FAILURE, reason, message)
    }

    /// Stop without a message and with success: the reader of stdout went away.
    pub fn quiet() -> Self {
        Self {
            code: 0,
            line: None,
        }
    }

    fn new(code: u8, reason: &str, message: &str) -> Self {
        Self {
            code,
            line: Some(format!("{reason}: {message}")),
        }
    }

    /// Prints the error line (if any) to stderr and returns the exit code.
    pub fn report(self) -> ExitCode {
        if let Some(line) = self.line {
            eprintln!("fencepostctl: {}", one_line(&line));
        }
        ExitCode::from(self.code)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidInput { .. } => BAD_INPUT,
            fenced if fenced.is_fencing() => FENCED,
            Error::Timeout { .. } => WAIT_TIMEOUT,
            _ => FAILURE,
        };
        // The SDK error's Display is already "REASON: message".
        Self {
            code,
            line: Some(err.to_string()),
        }
    }
}

/// Collapses line breaks so that every error stays one line on stderr.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(err: Error) -> u8 {
        Failure::from(err).code
    }

    #[test]
    fn each_error_class_has_its_exit_code() {
        let invalid = Error::InvalidInput {
            reason: "INVALID_ENTRY".to_owned(),
            message: String::new(),
        };
        assert_eq!(code_of(invalid), BAD_INPUT);
        let stale = Error::StaleToken {
            message: String::new(),
        };
        assert_eq!(code_of(stale), FENCED);
        let lost = Error::LeaseLost {
            reason: "LEASE_NOT_FOUND".to_owned(),
            message: String::new(),
        };
        assert_eq!(code_of(lost), FENCED);
        let external = Error::ExternalModification {
            message: String::new(),
        };
        assert_eq!(code_of(external), FENCED);
        let waited = Error::Timeout {
            message: String::new(),
        };
        assert_eq!(code_of(waited), WAIT_TIMEOUT);
        let down = Error::Unavailable {
            message: String::new(),
        };
        assert_eq!(code_of(down), FAILURE);
    }

    #[test]
    fn error_lines_never_span_lines() {
        assert_eq!(one_line("a\nb\r\n  c\n"), "a b c");
    }
}
