//! Endpoint strings (`http://host:port`, `host:port`, `unix:/path`) and opening a channel to them.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A TCP address, as an `http://` URI.
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl Target {
    /// Parses `http://host:port`, a bare `host:port`, `unix:/path` or `unix:///path`.
    pub(crate) fn parse(endpoint: &str) -> Result<Self, Error> {
        let endpoint = endpoint.trim();
        if let Some(rest) = endpoint.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(Error::invalid_endpoint(format!(
                    "endpoint {endpoint:?} names no socket path; use unix:/path/to.sock"
                )));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if endpoint.starts_with("https://") {
            return Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?}: TLS is not supported by this client; use http://host:port \
                 or unix:/path"
            )));
        }
        let uri = if endpoint.starts_with("http://") {
            endpoint.to_owned()
        } else if endpoint.contains("://") {
            return Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?} has an unsupported scheme; use http://host:port or \
                 unix:/path"
            )));
        } else {
            format!("http://{endpoint}")
        };
        match uri.parse::<Uri>() {
            Ok(parsed) if parsed.host().is_some_and(|host| !host.is_empty()) => Ok(Self::Tcp(uri)),
            Ok(_) => Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?} names no host; use http://host:port or unix:/path"
            ))),
            Err(err) => Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?} is not a valid URI ({err}); use http://host:port or \
                 unix:/path"
            ))),
        }
    }

    /// Opens an HTTP/2 channel, giving up after `connect_timeout` (TCP or socket connect plus the
    /// HTTP/2 handshake).
    pub(crate) async fn connect(&self, connect_timeout: Duration) -> Result<Channel, Error> {
        let connecting = async {
            match self {
                Self::Tcp(uri) => {
                    Endpoint::from_shared(uri.clone())
                        .map_err(|err| Error::invalid_endpoint(format!("{uri}: {err}")))?
                        .connect_timeout(connect_timeout)
                        .connect()
                        .await
                }
                Self::Unix(path) => {
                    let path = path.clone();
                    // The URI is only a placeholder for the :authority header; the connector
                    // ignores it and dials the socket.
                    Endpoint::from_static("http://localhost")
                        .connect_timeout(connect_timeout)
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let path = path.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(
                                    UnixStream::connect(path).await?,
                                ))
                            }
                        }))
                        .await
                }
            }
            .map_err(|err| Error::transport(&format!("cannot connect to {self}"), &err))
        };
        match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(channel) => channel,
            Err(_elapsed) => Err(Error::Unavailable {
                message: format!(
                    "could not connect to {self} within {}",
                    humantime::format_duration(connect_timeout)
                ),
            }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(uri) => f.write_str(uri),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_bare_addresses_are_tcp() {
        assert_eq!(
            Target::parse("http://127.0.0.1:7420").unwrap(),
            Target::Tcp("http://127.0.0.1:7420".to_owned())
        );
        assert_eq!(
            Target::parse("localhost:7420").unwrap(),
            Target::Tcp("http://localhost:7420".to_owned())
        );
    }

    #[test]
    fn unix_endpoints_accept_one_or_three_slashes() {
        let expected = Target::Unix(PathBuf::from("/run/fencepost.sock"));
        assert_eq!(Target::parse("unix:/run/fencepost.sock").unwrap(), expected);
        assert_eq!(
            Target::parse("unix:///run/fencepost.sock").unwrap(),
            expected
        );
        assert_eq!(expected.to_string(), "unix:/run/fencepost.sock");
    }

    #[test]
    fn unusable_endpoints_are_invalid_input() {
        for bad in [
            "unix:",
            "https://example.com",
            "ftp://host:1",
            "http://",
            "http://a b",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.reason(), Some("INVALID_ENDPOINT"), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable() {
        let target = Target::parse("unix:/nonexistent/dir/x.sock").unwrap();
        let err = target.connect(Duration::from_secs(5)).await.unwrap_err();
        match err {
            Error::Unavailable { message } => {
                assert!(message.contains("/nonexistent/dir/x.sock"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
