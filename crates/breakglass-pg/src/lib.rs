//! PostgreSQL connections of the inventory source (`inventory_url`) and the
//! run log (`database_url`), both through [`PgTarget`]: the URL is parsed by
//! sqlx, the TLS policy of `breakglass_config::postgres_tls` is decided for
//! the host sqlx will really reach and applied to the connect options, and
//! a failed connection is explained in one line that says what to set and
//! never holds the password.
//!
//! Trust: the system roots (rustls-native-certs, which honours
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus `sslrootcert`, or `ca_bundle`
//! when no `sslrootcert` is given. libpq's environment (`PGSSLMODE`, ...)
//! does not choose the mode: the URL does, with the documented default.
#![warn(missing_docs)]

use breakglass_config::CaBundle;
use breakglass_config::postgres_tls::{Endpoint, SslMode, TlsFailure, TlsParams, TlsPolicy};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::str::FromStr;

/// A `postgres://` setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgUrlError {
    /// The URL or one of its parameters breaks a rule.
    #[error("{field} = {shown:?}: {rule}")]
    Invalid {
        /// `inventory_url` or `database_url`.
        field: &'static str,
        /// The URL with its password masked.
        shown: String,
        /// The rule broken.
        rule: String,
    },
}

/// Where a connection goes and how: sqlx's options with the TLS policy
/// applied. Its Debug shows the URL masked (sqlx's options would show the
/// password).
#[derive(Clone)]
pub struct PgTarget {
    options: PgConnectOptions,
    policy: TlsPolicy,
    url: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field(
                "url",
                &breakglass_config::file::mask_url_password(&self.url),
            )
            .field("policy", &self.policy)
            .finish()
    }
}

impl PgTarget {
    /// Parses `url` (the setting `field`) and applies the TLS policy;
    /// `ca_bundle` is trusted when the URL has no `sslrootcert`.
    pub fn new(
        field: &'static str,
        url: &str,
        ca_bundle: Option<&CaBundle>,
    ) -> Result<Self, PgUrlError> {
        let invalid = |rule: String| PgUrlError::Invalid {
            field,
            shown: breakglass_config::file::mask_url_password(url),
            rule: scrub_password(&rule, url),
        };
        let params = TlsParams::from_url(field, url).map_err(invalid)?;
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| invalid(format!("is not a valid PostgreSQL URL: {err}")))?;
        let endpoint = match options.get_socket() {
            Some(folder) => Endpoint::classify(&folder.to_string_lossy(), true),
            None => Endpoint::classify(options.get_host(), false),
        };
        let policy = params.decide(endpoint, ca_bundle);
        let mut options = options.ssl_mode(match policy.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
        if let Some((_, bundle)) = &policy.extra_roots {
            options = options.ssl_root_cert_from_pem(bundle.pem.clone());
        }
        if let Some(client) = &policy.client {
            options = options
                .ssl_client_cert(&client.cert_path)
                .ssl_client_key(&client.key_path);
        }
        Ok(Self {
            options,
            policy,
            url: url.to_owned(),
        })
    }

    /// The connect options to hand to sqlx.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// The decided policy (mode, endpoint, extra roots).
    pub fn policy(&self) -> &TlsPolicy {
        &self.policy
    }

    /// The warning every run over this connection must carry (a remote
    /// host with `sslmode` `disable`, `prefer` or `require`), if any.
    pub fn warning(&self) -> Option<String> {
        self.policy.warning()
    }

    /// One line for a failed connection or query: a TLS failure says what
    /// to set; anything else is the driver's message. Never the password.
    pub fn explain(&self, err: &sqlx::Error) -> String {
        let line = match tls_failure(err) {
            Some(failure) => self.policy.explain(&failure),
            None => self.scrub(&err.to_string()),
        };
        line.replace(['\r', '\n'], " ")
    }

    /// Removes the URL's password from a text, should it hold it.
    pub fn scrub(&self, text: &str) -> String {
        scrub_password(text, &self.url)
    }
}

/// What kind of TLS failure an sqlx error is, if it is one. rustls's
/// handshake errors arrive either as `Error::Tls` or wrapped in the I/O
/// error of the handshake.
fn tls_failure(err: &sqlx::Error) -> Option<TlsFailure> {
    match err {
        sqlx::Error::Tls(inner) => Some(match inner.downcast_ref::<rustls::Error>() {
            Some(tls) => classify(tls),
            None if inner.to_string().contains("does not support TLS") => TlsFailure::NoServerTls,
            None => TlsFailure::Other(inner.to_string()),
        }),
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(classify),
        _ => None,
    }
}

fn classify(err: &rustls::Error) -> TlsFailure {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                TlsFailure::UntrustedCa
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => TlsFailure::Expired,
            other => TlsFailure::Other(format!("the server's certificate is invalid: {other:?}")),
        },
        other => TlsFailure::Other(other.to_string()),
    }
}

/// Removes a URL's password, as written and percent-decoded, from a driver
/// message, should it echo it. (Too short a password would mask ordinary
/// words; such a password is a problem of its own.)
pub fn scrub_password(text: &str, url: &str) -> String {
    let Some(encoded) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    else {
        return text.to_owned();
    };
    // Percent-decoding only: a literal `+` stays a plus.
    let decoded =
        url::form_urlencoded::parse(format!("p={}", encoded.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
    let mut text = text.to_owned();
    for password in [encoded, decoded] {
        if password.len() >= 4 {
            text = text.replace(&password, "********");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_messages_lose_the_password_as_written_and_decoded() {
        let url = "postgres://runlog:pa%40ss+word@db:5432/x";
        let text = scrub_password("auth failed for pa%40ss+word / pa@ss+word", url);
        assert_eq!(text, "auth failed for ******** / ********");
    }

    #[test]
    fn the_policy_is_applied_to_the_host_sqlx_reaches() {
        for (url, mode) in [
            ("postgres://u:pw@db.example.com/x", PgSslMode::VerifyFull),
            ("postgres://u:pw@127.0.0.1:5432/x", PgSslMode::Prefer),
            ("postgres://u:pw@[::1]:5432/x", PgSslMode::Prefer),
            ("postgres://u:pw@localhost/x", PgSslMode::Prefer),
            // The host parameter decides, not the URL's authority.
            (
                "postgres://u:pw@localhost/x?host=db.example.com",
                PgSslMode::VerifyFull,
            ),
            (
                "postgres://u:pw@db.example.com/x?host=/var/run/postgresql",
                PgSslMode::Disable,
            ),
            (
                "postgres://u:pw@%2Fvar%2Frun%2Fpostgresql/x",
                PgSslMode::Disable,
            ),
            (
                "postgres://u:pw@db.example.com/x?hostaddr=10.0.0.5",
                PgSslMode::VerifyFull,
            ),
            (
                "postgres://u:pw@db.example.com/x?hostaddr=127.0.0.1",
                PgSslMode::Prefer,
            ),
            (
                "postgres://u:pw@db.example.com/x?sslmode=disable",
                PgSslMode::Disable,
            ),
            (
                "postgres://u:pw@db.example.com/x?sslmode=verify-ca",
                PgSslMode::VerifyCa,
            ),
        ] {
            let target = PgTarget::new("database_url", url, None).unwrap();
            let got = target.options().get_ssl_mode();
            assert_eq!(format!("{got:?}"), format!("{mode:?}"), "{url}");
        }
    }

    #[test]
    fn an_invalid_url_names_the_field_masks_the_password_and_says_the_rule() {
        let err = PgTarget::new(
            "inventory_url",
            "postgres://reader:pw-canary@db/inv?sslmode=yes",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("inventory_url = \"postgres://reader:"),
            "{err}"
        );
        assert!(err.contains("sslmode \"yes\" is not known"), "{err}");
        assert!(!err.contains("pw-canary"), "{err}");
    }

    #[test]
    fn debug_output_masks_the_password() {
        let target = PgTarget::new("database_url", "postgres://u:pw-canary@db/x", None).unwrap();
        let shown = format!("{target:?}");
        assert!(!shown.contains("pw-canary"), "{shown}");
        assert!(shown.contains("VerifyFull"), "{shown}");
    }

    #[test]
    fn tls_failures_are_recognised_however_sqlx_wraps_them() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(tls_failure(&io), Some(TlsFailure::UntrustedCa));
        let tls = sqlx::Error::Tls(Box::new(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        )));
        assert_eq!(tls_failure(&tls), Some(TlsFailure::NameMismatch));
        let plain = sqlx::Error::Tls("server does not support TLS".into());
        assert_eq!(tls_failure(&plain), Some(TlsFailure::NoServerTls));
        assert_eq!(tls_failure(&sqlx::Error::PoolTimedOut), None);
    }
}
