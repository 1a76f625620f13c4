//! Endpoint strings (`http://host:port`, `https://host:port`, `host:port`, `unix:/path`) and
//! opening a channel to them.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::Error;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A TCP address, as an `http://` URI.
    Tcp(String),
    /// A TCP address with TLS, as an `https://` URI.
    Https(String),
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
        let uri = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            endpoint.to_owned()
        } else if endpoint.contains("://") {
            return Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?} has an unsupported scheme; use http://host:port, \
                 https://host:port or unix:/path"
            )));
        } else {
            format!("http://{endpoint}")
        };
        match uri.parse::<Uri>() {
            Ok(parsed) if parsed.host().is_some_and(|host| !host.is_empty()) => {
                if parsed.scheme_str() == Some("https") {
                    Ok(Self::Https(uri))
                } else {
                    Ok(Self::Tcp(uri))
                }
            }
            Ok(_) => Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?} names no host; use http://host:port or unix:/path"
            ))),
            Err(err) => Err(Error::invalid_endpoint(format!(
                "endpoint {endpoint:?} is not a valid URI ({err}); use http://host:port or \
                 unix:/path"
            ))),
        }
    }

    /// Opens an HTTP/2 channel, giving up after `connect_timeout` (TCP or socket connect, the TLS
    /// handshake for `https://`, and the HTTP/2 handshake).
    pub(crate) async fn connect(
        &self,
        connect_timeout: Duration,
        tls: &TlsOptions,
    ) -> Result<Channel, Error> {
        if !matches!(self, Self::Https(_)) && !tls.is_empty() {
            return Err(Error::invalid_endpoint(format!(
                "TLS settings (a CA certificate or a client certificate) need an https:// \
                 endpoint, not {self}"
            )));
        }
        tls.check()?;
        let connecting = async {
            match self {
                Self::Https(uri) => {
                    Endpoint::from_shared(uri.clone())
                        .map_err(|err| Error::invalid_endpoint(format!("{uri}: {err}")))?
                        .tls_config(tls.config())
                        .map_err(|err| Error::invalid_endpoint(format!("{uri}: TLS: {err}")))?
                        .connect_timeout(connect_timeout)
                        .connect()
                        .await
                }
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

/// TLS settings for `https://` endpoints: by default the server's certificate is checked against
/// the public CAs (webpki roots).
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    /// PEM of the CA that issued the server's certificate, instead of the public CAs.
    pub ca: Option<Vec<u8>>,
    /// PEM of this client's certificate and key, for servers that require one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Says which settings are present, never the key.
impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl TlsOptions {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }

    /// Refuses PEM that holds no certificate or key where one is needed: rustls would take an
    /// empty or DER file as no CA at all and fail every handshake with an unknown issuer.
    fn check(&self) -> Result<(), Error> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certificates = |pem: &[u8], what: &str| {
            let found = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| Error::invalid_tls(format!("the {what} is not valid PEM: {err}")))?;
            if found.is_empty() {
                return Err(Error::invalid_tls(format!(
                    "the {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                )));
            }
            Ok(())
        };
        if let Some(ca) = &self.ca {
            certificates(ca, "CA certificate")?;
        }
        if let Some((cert, key)) = &self.identity {
            certificates(cert, "client certificate")?;
            PrivateKeyDer::from_pem_slice(key).map_err(|err| {
                Error::invalid_tls(format!("the client key holds no PEM private key: {err}"))
            })?;
        }
        Ok(())
    }

    fn config(&self) -> ClientTlsConfig {
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_enabled_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(uri) | Self::Https(uri) => f.write_str(uri),
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

    #[tokio::test]
    async fn https_addresses_are_tcp_with_tls_and_tls_settings_need_them() {
        assert_eq!(
            Target::parse("https://fencepost.internal:7420").unwrap(),
            Target::Https("https://fencepost.internal:7420".to_owned())
        );
        let tls = TlsOptions {
            ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            identity: None,
        };
        let plain = Target::parse("http://127.0.0.1:1").unwrap();
        let err = plain
            .connect(Duration::from_secs(1), &tls)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Some("INVALID_ENDPOINT"));
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
        for bad in ["unix:", "https://", "ftp://host:1", "http://", "http://a b"] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.reason(), Some("INVALID_ENDPOINT"), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable() {
        let target = Target::parse("unix:/nonexistent/dir/x.sock").unwrap();
        let err = target
            .connect(Duration::from_secs(5), &TlsOptions::default())
            .await
            .unwrap_err();
        match err {
            Error::Unavailable { message } => {
                assert!(message.contains("/nonexistent/dir/x.sock"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
