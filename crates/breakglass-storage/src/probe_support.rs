//! Building blocks for the destination Test (`breakglass-probe`): single,
//! harmless requests whose answers are classified, so the Test can say
//! which stage failed and what to fix, without duplicating the clients or
//! the error wording of the upload path.
//!
//! - [`check_connection`]: DNS, TCP and the TLS handshake to an endpoint,
//!   with the same trust (system roots + `ca_bundle`) as the clients.
//! - [`Failure`]: one refused or failed request, with its [`FailureKind`]
//!   and the plain, secret-free message the upload path would give.
//! - The per-backend probes live beside their clients, in
//!   [`crate::s3::probe`] and [`crate::azure::probe`].

use breakglass_config::CaBundle;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name of the object the Test writes under the prefix. It is fixed,
/// so repeated Tests do not pile up files, and it never matches a backup
/// name, so `fetch` and `prune` never take it for a workbook.
pub const TEST_OBJECT_NAME: &str = "breakglass-destination-test.txt";
/// A name under the prefix that the Test never writes: reading or deleting
/// it tells whether the credential may read or delete, without harm.
pub const ABSENT_OBJECT_NAME: &str = "breakglass-destination-test-absent.txt";
/// The test object's content.
pub const TEST_OBJECT_BODY: &[u8] =
    b"Written by the breakglass destination Test. Safe to delete; the next Test writes it again.\n";

/// What kind of answer a request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No connection (DNS, refused, timeout) or no usable TLS.
    Connection,
    /// The credential was not accepted (unknown key, bad signature, bad SAS).
    Authentication,
    /// The clocks differ too much (or a SAS is outside its validity).
    ClockSkew,
    /// The credential is valid but lacks this right.
    AccessDenied,
    /// The bucket or container does not exist.
    NoSuchContainer,
    /// The object does not exist (the request itself was allowed).
    NotFound,
    /// The bucket lives in another region.
    WrongRegion,
    /// A conditional create found the name taken.
    Exists,
    /// Anything else.
    Other,
}

/// One refused or failed request.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The class of the answer.
    pub kind: FailureKind,
    /// The service's error code, or `connection` / `HTTP <status>`.
    pub code: String,
    /// Plain words: what is wrong and what to check. Never a secret.
    pub message: String,
}

impl Failure {
    /// True when the request reached the service and was refused for lack
    /// of a right (the credential itself is fine).
    pub fn is_denied(&self) -> bool {
        self.kind == FailureKind::AccessDenied
    }
}

/// How a connection check went.
#[derive(Clone, Debug)]
pub struct ConnectionCheck {
    /// `None` when DNS, TCP and (for HTTPS) TLS all worked.
    pub failure: Option<String>,
    /// What was done, e.g. `localhost:9000 → 127.0.0.1:9000, TLS 1.3`.
    pub summary: String,
    /// How long it took.
    pub duration: Duration,
}

/// Resolves the endpoint's host, opens a TCP connection and, for `https`,
/// completes a TLS handshake trusting the system roots (which honour
/// `SSL_CERT_FILE`) plus `ca_bundle`. Failures name the cause and the fix.
pub async fn check_connection(endpoint: &str, ca_bundle: Option<&CaBundle>) -> ConnectionCheck {
    let started = Instant::now();
    let result = connect(endpoint, ca_bundle).await;
    let duration = started.elapsed();
    match result {
        Ok(summary) => ConnectionCheck {
            failure: None,
            summary,
            duration,
        },
        Err(failure) => ConnectionCheck {
            failure: Some(failure),
            summary: String::new(),
            duration,
        },
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(endpoint: &str, ca_bundle: Option<&CaBundle>) -> Result<String, String> {
    let url = url::Url::parse(endpoint)
        .map_err(|err| format!("the endpoint {endpoint} is not a URL ({err})"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("the endpoint {endpoint} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("the endpoint {endpoint} has no port"))?;
    let addresses: Vec<std::net::SocketAddr> = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(found)) => found.collect(),
        Ok(Err(err)) => {
            return Err(format!(
                "the host name {host} does not resolve (DNS: {err}): check the endpoint's host name and this machine's DNS"
            ));
        }
        Err(_) => {
            return Err(format!(
                "the host name {host} did not resolve within {}s (DNS): check this machine's DNS",
                CONNECT_TIMEOUT.as_secs()
            ));
        }
    };
    let mut last_error = format!("the host name {host} resolved to no address (DNS)");
    let mut stream = None;
    for address in &addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(connected)) => {
                stream = Some((connected, *address));
                break;
            }
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                last_error = format!(
                    "{address} refused the connection (TCP): check the endpoint's port and that the server runs"
                );
            }
            Ok(Err(err)) => {
                last_error = format!(
                    "cannot connect to {address} (TCP: {err}): check the endpoint and any firewall"
                );
            }
            Err(_) => {
                last_error = format!(
                    "{address} did not answer within {}s (TCP): check the endpoint and any firewall or network policy",
                    CONNECT_TIMEOUT.as_secs()
                );
            }
        }
    }
    let Some((stream, address)) = stream else {
        return Err(last_error);
    };
    if url.scheme() != "https" {
        return Ok(format!("{host}:{port} → {address} (plain HTTP)"));
    }
    let config = tls_config(ca_bundle)?;
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|err| format!("{host} is not a valid TLS server name ({err})"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, stream)).await {
        Ok(Ok(tls)) => {
            let version = tls
                .get_ref()
                .1
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS");
            Ok(format!(
                "{host}:{port} → {address}, {version}, certificate trusted"
            ))
        }
        Ok(Err(err)) => Err(explain_tls(&host, &err, ca_bundle.is_some())),
        Err(_) => Err(format!(
            "{address} accepted TCP but did not complete a TLS handshake within {}s: is it an HTTPS port? (check the protocol setting)",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

fn tls_config(ca_bundle: Option<&CaBundle>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(bundle) = ca_bundle {
        let certificates = CertificateDer::pem_slice_iter(&bundle.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("ca_bundle {}: {err:?}", bundle.path.display()))?;
        roots.add_parsable_certificates(certificates);
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| format!("TLS set-up: {err}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Names a TLS handshake failure and its fix.
fn explain_tls(host: &str, err: &std::io::Error, has_bundle: bool) -> String {
    use rustls::CertificateError;
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let bundle_hint = if has_bundle {
        "the configured ca_bundle does not contain the CA that signed it: put that CA's PEM certificate in the ca_bundle file"
    } else {
        "if the endpoint uses a private CA, set ca_bundle to that CA's PEM file"
    };
    match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's TLS certificate is signed by an unknown CA (UnknownIssuer): {bundle_hint}"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the server's TLS certificate has expired ({cert:?}): renew the server's certificate; ca_bundle cannot fix this"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "the server's TLS certificate is not valid yet ({cert:?}): check this machine's clock (NTP) and the certificate"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's TLS certificate is not issued for {host} (wrong host, NotValidForName): use the host name on the certificate in the endpoint setting"
                )
            }
            CertificateError::Revoked => {
                "the server's TLS certificate has been revoked: the server needs a new certificate"
                    .into()
            }
            other => format!("the server's TLS certificate was refused ({other:?}): {bundle_hint}"),
        },
        Some(other) => format!(
            "the TLS handshake with {host} failed ({other}): check that the endpoint speaks HTTPS on this port"
        ),
        None => format!(
            "the TLS handshake with {host} failed ({err}): check that the endpoint speaks HTTPS on this port"
        ),
    }
}

/// Classifies a service error code (S3 or Azure) for the Test.
pub fn classify(code: &str, status: Option<u16>) -> FailureKind {
    match code {
        "connection" => FailureKind::Connection,
        "InvalidAccessKeyId"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "AuthenticationFailed"
        | "InvalidAuthenticationInfo"
        | "InvalidToken"
        | "ExpiredToken"
        | "InvalidQueryParameterValue" => FailureKind::Authentication,
        "RequestTimeTooSkewed" => FailureKind::ClockSkew,
        "AccessDenied"
        | "AllAccessDisabled"
        | "AuthorizationPermissionMismatch"
        | "AuthorizationFailure"
        | "AuthorizationResourceTypeMismatch"
        | "AuthorizationServiceMismatch"
        | "AuthorizationProtocolMismatch"
        | "AuthorizationSourceIPMismatch" => FailureKind::AccessDenied,
        "NoSuchBucket" | "ContainerNotFound" => FailureKind::NoSuchContainer,
        "NoSuchKey" | "BlobNotFound" | "NotFound" | "NoSuchLifecycleConfiguration" => {
            FailureKind::NotFound
        }
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => FailureKind::WrongRegion,
        "PreconditionFailed" | "BlobAlreadyExists" | "ConditionNotMet" => FailureKind::Exists,
        _ => match status {
            Some(404) => FailureKind::NotFound,
            Some(403) => FailureKind::AccessDenied,
            Some(412 | 409) => FailureKind::Exists,
            Some(301) => FailureKind::WrongRegion,
            None => FailureKind::Connection,
            _ => FailureKind::Other,
        },
    }
}

/// Turns a [`crate::StorageError`] from the upload path into a [`Failure`].
pub fn failure_from(err: &crate::StorageError, status: Option<u16>) -> Failure {
    match err {
        crate::StorageError::Remote { code, reason, .. } => Failure {
            kind: classify(code, status.or_else(|| http_status_of(code))),
            code: code.clone(),
            message: reason.clone(),
        },
        crate::StorageError::Exists { name, .. } => Failure {
            kind: FailureKind::Exists,
            code: "PreconditionFailed".into(),
            message: format!("{name} already exists"),
        },
        other => Failure {
            kind: FailureKind::Other,
            code: "error".into(),
            message: other.to_string(),
        },
    }
}

/// `HTTP 404` → 404.
fn http_status_of(code: &str) -> Option<u16> {
    code.strip_prefix("HTTP ").and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            classify("SignatureDoesNotMatch", Some(403)),
            FailureKind::Authentication
        );
        assert_eq!(
            classify("AccessDenied", Some(403)),
            FailureKind::AccessDenied
        );
        assert_eq!(
            classify("ContainerNotFound", Some(404)),
            FailureKind::NoSuchContainer
        );
        assert_eq!(classify("HTTP 404", Some(404)), FailureKind::NotFound);
        assert_eq!(classify("connection", None), FailureKind::Connection);
        assert_eq!(
            classify("RequestTimeTooSkewed", Some(403)),
            FailureKind::ClockSkew
        );
    }

    #[test]
    fn certificate_problems_name_the_fix() {
        use rustls::CertificateError;
        let wrap = |cert: CertificateError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(cert),
            )
        };
        let unknown = explain_tls("s3.example", &wrap(CertificateError::UnknownIssuer), false);
        assert!(unknown.contains("unknown CA"), "{unknown}");
        assert!(unknown.contains("set ca_bundle"), "{unknown}");
        let with_bundle = explain_tls("s3.example", &wrap(CertificateError::UnknownIssuer), true);
        assert!(
            with_bundle.contains("does not contain the CA"),
            "{with_bundle}"
        );
        let expired = explain_tls("s3.example", &wrap(CertificateError::Expired), false);
        assert!(expired.contains("expired"), "{expired}");
        let wrong_host = explain_tls(
            "s3.example",
            &wrap(CertificateError::NotValidForName),
            false,
        );
        assert!(
            wrong_host.contains("not issued for s3.example"),
            "{wrong_host}"
        );
    }

    #[tokio::test]
    async fn refused_and_unresolvable_endpoints_are_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = check_connection(&format!("http://127.0.0.1:{port}"), None).await;
        assert!(
            refused.failure.as_deref().unwrap().contains("refused"),
            "{refused:?}"
        );
        let dns = check_connection("https://nonexistent.invalid", None).await;
        assert!(
            dns.failure.as_deref().unwrap().contains("does not resolve"),
            "{dns:?}"
        );
    }
}
