//! TLS to PostgreSQL: libpq's URL parameters and the one policy the
//! inventory source (`inventory_url`) and the run log (`database_url`) both
//! follow (docs/POSTGRES_TLS.md).
//!
//! [`TlsParams::from_url`] reads and checks `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` (settings validation calls it, so `config check`
//! reports a bad one); [`TlsParams::decide`] turns them, the place the
//! connection really goes ([`Endpoint`]) and `ca_bundle` into a
//! [`TlsPolicy`]: the mode to use, the extra trusted roots, the warning a
//! weakened connection carries on every run, and one-line explanations of
//! TLS failures that say what to set. No driver here: `breakglass-pg` maps
//! a policy onto sqlx.

use crate::remote::{CaBundle, read_ca_bundle};
use std::net::IpAddr;
use std::path::PathBuf;

/// libpq's `sslmode` values (`allow` is not offered: it never protects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, without verifying it; else plain.
    Prefer,
    /// TLS, without verifying the server.
    Require,
    /// TLS; the certificate must chain to a trusted CA (any name).
    VerifyCa,
    /// TLS; trusted CA and the host name must match the certificate.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "sslmode {other:?} is not known: write disable, prefer, require, verify-ca or verify-full (default verify-full; prefer/disable only for a server without TLS)"
            )),
        }
    }
}

/// Where a connection goes, as far as TLS is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket folder: never leaves the machine, and PostgreSQL does
    /// not speak TLS on it.
    Socket(String),
    /// `localhost`, `127.0.0.0/8` or `::1`.
    Loopback(String),
    /// Anything else (a name is not resolved: only `localhost` counts as
    /// loopback by name).
    Remote(String),
}

impl Endpoint {
    /// Classifies the host a driver will connect to; `socket` when it is a
    /// Unix socket folder.
    pub fn classify(host: &str, socket: bool) -> Self {
        if socket || host.starts_with('/') {
            return Self::Socket(host.to_owned());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match bare.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4.is_loopback(),
            Ok(IpAddr::V6(v6)) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Err(_) => bare.eq_ignore_ascii_case("localhost"),
        };
        if loopback {
            Self::Loopback(host.to_owned())
        } else {
            Self::Remote(host.to_owned())
        }
    }

    /// The host or socket folder.
    pub fn host(&self) -> &str {
        match self {
            Self::Socket(h) | Self::Loopback(h) | Self::Remote(h) => h,
        }
    }
}

/// `sslrootcert` as written.
#[derive(Clone, Debug)]
enum RootCert {
    /// `sslrootcert=system`: the system roots only (libpq 16 spelling).
    System,
    /// A PEM file, read and checked.
    File(CaBundle),
}

/// The TLS parameters of one `postgres://` URL, checked.
#[derive(Clone, Debug)]
pub struct TlsParams {
    field: &'static str,
    sslmode: Option<SslMode>,
    sslrootcert: Option<RootCert>,
    client: Option<ClientIdentity>,
}

/// The client certificate and key files (`sslcert`, `sslkey`), checked
/// when the URL is read: each must be a readable file within
/// [`breakglass_core::limits::MAX_PEM_FILE_BYTES`] (a path to a device or
/// a huge file is refused then, naming the field). The driver reads them
/// again for every new connection, so a rotated certificate (cert-manager)
/// is picked up without a restart, and the key is never held by us.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The `sslcert` path.
    pub cert_path: PathBuf,
    /// The `sslkey` path.
    pub key_path: PathBuf,
}

/// Reads one client PEM file (`sslcert` or `sslkey`) under
/// [`breakglass_core::limits::MAX_PEM_FILE_BYTES`].
fn read_client_pem(name: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    use breakglass_core::limits::{MAX_PEM_FILE_BYTES, ReadError, read_file};
    match read_file(path, MAX_PEM_FILE_BYTES, name) {
        Ok(bytes) => Ok(bytes),
        Err(err @ ReadError::Io { .. }) => Err(format!(
            "{name} {:?} is not a readable file ({})",
            path.display(),
            err.rule()
        )),
        Err(err) => Err(format!("{name} {:?} {}", path.display(), err.rule())),
    }
}

/// The parameter names sqlx also accepts for the same settings; each is
/// refused so a URL has one spelling the policy sees.
const ALIASES: [(&str, &str); 5] = [
    ("ssl-mode", "sslmode"),
    ("ssl-root-cert", "sslrootcert"),
    ("ssl-ca", "sslrootcert"),
    ("ssl-cert", "sslcert"),
    ("ssl-key", "sslkey"),
];

impl TlsParams {
    /// Reads `sslmode`, `sslrootcert` (a PEM file, read now, or `system`),
    /// `sslcert` and `sslkey` (both or neither; files that exist) from a
    /// `postgres://` URL given as `field`. The error is the rule broken,
    /// without the URL (the caller shows it masked).
    pub fn from_url(field: &'static str, url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|err| {
            format!("is not a valid URL ({err}); percent-encode @ : / # ? in the user and password")
        })?;
        let mut seen: Vec<String> = Vec::new();
        let mut params = Self {
            field,
            sslmode: None,
            sslrootcert: None,
            client: None,
        };
        let (mut cert, mut key) = (None, None);
        for (name, value) in parsed.query_pairs() {
            if let Some((_, libpq)) = ALIASES.iter().find(|(alias, _)| *alias == name) {
                return Err(format!("write {libpq}= instead of {name}="));
            }
            if !["sslmode", "sslrootcert", "sslcert", "sslkey"].contains(&&*name) {
                continue;
            }
            if seen.iter().any(|s| *s == name) {
                return Err(format!("{name} is given twice: write it once"));
            }
            seen.push(name.to_string());
            match &*name {
                "sslmode" => params.sslmode = Some(SslMode::parse(&value)?),
                "sslrootcert" if value == "system" => params.sslrootcert = Some(RootCert::System),
                "sslrootcert" => {
                    let bundle = read_ca_bundle(&value)
                        .map_err(|rule| format!("sslrootcert {value:?} {rule}"))?;
                    params.sslrootcert = Some(RootCert::File(bundle));
                }
                "sslcert" => cert = Some(PathBuf::from(&*value)),
                _ => key = Some(PathBuf::from(&*value)),
            }
        }
        params.client = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                read_client_pem("sslcert", &cert)?;
                // The key's bytes are dropped at once: only its size and
                // readability are checked here.
                zeroize::Zeroize::zeroize(&mut read_client_pem("sslkey", &key)?);
                Some(ClientIdentity {
                    cert_path: cert,
                    key_path: key,
                })
            }
            _ => {
                return Err(
                    "sslcert and sslkey go together: give both (the client certificate and its key) or neither".into(),
                );
            }
        };
        Ok(params)
    }

    /// The policy for a connection to `endpoint`; `ca_bundle` is trusted
    /// when no `sslrootcert` is given.
    pub fn decide(&self, endpoint: Endpoint, ca_bundle: Option<&CaBundle>) -> TlsPolicy {
        let mode = match (&endpoint, self.sslmode) {
            // libpq ignores sslmode on a Unix socket; the server never
            // offers TLS there.
            (Endpoint::Socket(_), _) => SslMode::Disable,
            (_, Some(written)) => written,
            (Endpoint::Loopback(_), None) => SslMode::Prefer,
            (Endpoint::Remote(_), None) => SslMode::VerifyFull,
        };
        let extra_roots = match &self.sslrootcert {
            Some(RootCert::System) => None,
            Some(RootCert::File(bundle)) => Some((TrustSource::SslRootCert, bundle.clone())),
            None => ca_bundle.map(|bundle| (TrustSource::CaBundle, bundle.clone())),
        };
        // libpq: with a root certificate given, `require` verifies the CA.
        let mode =
            if mode == SslMode::Require && matches!(self.sslrootcert, Some(RootCert::File(_))) {
                SslMode::VerifyCa
            } else {
                mode
            };
        TlsPolicy {
            field: self.field,
            written: self.sslmode,
            mode,
            endpoint,
            extra_roots,
            client: self.client.clone(),
        }
    }
}

/// Where extra trusted roots came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustSource {
    /// `sslrootcert` in the URL.
    SslRootCert,
    /// The `ca_bundle` setting.
    CaBundle,
}

/// Why a TLS connection failed, as far as the fix is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's chain does not end at a trusted root.
    UntrustedCa,
    /// The certificate does not name the host connected to.
    NameMismatch,
    /// The certificate has expired or is not valid yet.
    Expired,
    /// The server answered the TLS request with "no".
    NoServerTls,
    /// Any other handshake failure, described.
    Other(String),
}

/// What one connection does: decided once, used by the driver adapter.
#[derive(Clone, Debug)]
pub struct TlsPolicy {
    field: &'static str,
    written: Option<SslMode>,
    /// The mode the connection uses.
    pub mode: SslMode,
    /// Where it goes.
    pub endpoint: Endpoint,
    /// Roots trusted besides the system's, and where they came from.
    pub extra_roots: Option<(TrustSource, CaBundle)>,
    /// The client certificate and key (`sslcert`, `sslkey`), read.
    pub client: Option<ClientIdentity>,
}

impl TlsPolicy {
    /// The setting this policy is for (`inventory_url`, `database_url`).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The warning every run over this connection carries: a remote host
    /// reached with a mode that does not verify the server (written out,
    /// since the default is `verify-full`).
    pub fn warning(&self) -> Option<String> {
        let Endpoint::Remote(host) = &self.endpoint else {
            return None;
        };
        let text = match self.mode {
            SslMode::Disable => format!(
                "the connection to {host} is NOT encrypted (sslmode=disable): every value read crosses the network in clear text; enable ssl on the server and remove sslmode=disable"
            ),
            SslMode::Prefer => format!(
                "the connection to {host} may not be encrypted and the server is not verified (sslmode=prefer); enable ssl on the server and remove sslmode=prefer"
            ),
            SslMode::Require => format!(
                "the connection to {host} is encrypted but the server is not verified (sslmode=require): anyone in the path can pose as it; remove sslmode and set sslrootcert or ca_bundle"
            ),
            SslMode::VerifyCa | SslMode::VerifyFull => return None,
        };
        Some(text)
    }

    /// One line that says what failed and what to set.
    pub fn explain(&self, failure: &TlsFailure) -> String {
        let field = self.field;
        let host = self.endpoint.host();
        let mode = self.mode.as_str();
        let how = if self.written.is_some() {
            format!("sslmode={mode}")
        } else {
            format!("sslmode={mode}, the default for a remote host")
        };
        match failure {
            TlsFailure::UntrustedCa => {
                let trusted = match &self.extra_roots {
                    Some((TrustSource::SslRootCert, bundle)) => {
                        format!("the system roots and sslrootcert {}", bundle.path.display())
                    }
                    Some((TrustSource::CaBundle, bundle)) => {
                        format!("the system roots and ca_bundle {}", bundle.path.display())
                    }
                    None => "the system roots".to_owned(),
                };
                format!(
                    "{field}: the certificate of {host} is not signed by a trusted CA ({trusted}; {how}): set sslrootcert=<the server's CA file> in {field}, or ca_bundle"
                )
            }
            TlsFailure::NameMismatch => format!(
                "{field}: host name {host} does not match the server's certificate ({how}): connect by a name the certificate holds, or write sslmode=verify-ca"
            ),
            TlsFailure::Expired => format!(
                "{field}: the certificate of {host} has expired or is not valid yet ({how}): renew the server's certificate"
            ),
            TlsFailure::NoServerTls => format!(
                "{field}: {host} does not accept TLS ({how}): enable ssl on the server, or write sslmode=disable in {field} (then every run warns)"
            ),
            TlsFailure::Other(reason) => {
                format!("{field}: the TLS handshake with {host} failed ({how}): {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file(dir: &std::path::Path, name: &str) -> String {
        // A syntactically valid PEM certificate is enough here: the file
        // is read and counted, not verified.
        let pem = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn params(url: &str) -> TlsParams {
        TlsParams::from_url("inventory_url", url).unwrap()
    }

    #[test]
    fn hosts_are_classified_without_resolving_names() {
        for (host, socket, expected) in [
            ("db.example.com", false, "remote"),
            ("10.1.2.3", false, "remote"),
            ("192.0.2.2", false, "remote"),
            ("[fd00::2]", false, "remote"),
            ("vm", false, "remote"),
            ("localhost.example.com", false, "remote"),
            ("127.0.0.1", false, "loopback"),
            ("127.1.2.3", false, "loopback"),
            ("::1", false, "loopback"),
            ("[::1]", false, "loopback"),
            ("[::ffff:127.0.0.1]", false, "loopback"),
            ("localhost", false, "loopback"),
            ("LocalHost", false, "loopback"),
            ("/var/run/postgresql", false, "socket"),
            ("/tmp", true, "socket"),
        ] {
            let got = match Endpoint::classify(host, socket) {
                Endpoint::Socket(_) => "socket",
                Endpoint::Loopback(_) => "loopback",
                Endpoint::Remote(_) => "remote",
            };
            assert_eq!(got, expected, "{host}");
        }
    }

    #[test]
    fn the_default_is_verify_full_for_a_remote_host_only() {
        let p = params("postgres://u:pw@db.example.com/inv");
        let remote = p.decide(Endpoint::classify("db.example.com", false), None);
        assert_eq!(remote.mode, SslMode::VerifyFull);
        assert_eq!(remote.warning(), None);
        let loopback = p.decide(Endpoint::classify("127.0.0.1", false), None);
        assert_eq!(loopback.mode, SslMode::Prefer);
        assert_eq!(loopback.warning(), None);
        let socket = p.decide(Endpoint::classify("/var/run/postgresql", true), None);
        assert_eq!(socket.mode, SslMode::Disable);
        assert_eq!(socket.warning(), None);
    }

    #[test]
    fn every_written_mode_is_used_and_weak_ones_warn_for_a_remote_host() {
        for (mode, expected, warns) in [
            (
                "disable",
                SslMode::Disable,
                Some("NOT encrypted (sslmode=disable)"),
            ),
            ("prefer", SslMode::Prefer, Some("sslmode=prefer")),
            (
                "require",
                SslMode::Require,
                Some("not verified (sslmode=require)"),
            ),
            ("verify-ca", SslMode::VerifyCa, None),
            ("verify-full", SslMode::VerifyFull, None),
        ] {
            let p = params(&format!("postgres://u:pw@db/inv?sslmode={mode}"));
            let remote = p.decide(Endpoint::classify("db", false), None);
            assert_eq!(remote.mode, expected, "{mode}");
            match (remote.warning(), warns) {
                (Some(text), Some(fragment)) => {
                    assert!(text.contains(fragment), "{text}");
                    assert!(text.contains("db"), "names the host: {text}");
                }
                (None, None) => {}
                (got, want) => panic!("{mode}: warning {got:?}, expected {want:?}"),
            }
            let local = p.decide(Endpoint::classify("localhost", false), None);
            assert_eq!(
                local.mode, expected,
                "{mode} on loopback is used as written"
            );
            assert_eq!(local.warning(), None, "{mode}: loopback never warns");
            let socket = p.decide(Endpoint::classify("/run/pg", true), None);
            assert_eq!(socket.mode, SslMode::Disable, "{mode}: no TLS on a socket");
        }
    }

    #[test]
    fn sslrootcert_wins_over_ca_bundle_and_system_means_no_extra_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = ca_file(dir.path(), "root.pem");
        let bundle = read_ca_bundle(&ca_file(dir.path(), "bundle.pem")).unwrap();
        let remote = || Endpoint::classify("db", false);

        let with_root = params(&format!("postgres://u@db/x?sslrootcert={root}"));
        let policy = with_root.decide(remote(), Some(&bundle));
        let (source, used) = policy.extra_roots.unwrap();
        assert_eq!(source, TrustSource::SslRootCert);
        assert!(used.path.ends_with("root.pem"));

        let without = params("postgres://u@db/x");
        let (source, used) = without.decide(remote(), Some(&bundle)).extra_roots.unwrap();
        assert_eq!(source, TrustSource::CaBundle);
        assert!(used.path.ends_with("bundle.pem"));
        assert!(without.decide(remote(), None).extra_roots.is_none());

        let system = params("postgres://u@db/x?sslrootcert=system");
        assert!(system.decide(remote(), Some(&bundle)).extra_roots.is_none());

        // libpq: require with a root certificate verifies the CA.
        let require = params(&format!(
            "postgres://u@db/x?sslmode=require&sslrootcert={root}"
        ));
        assert_eq!(require.decide(remote(), None).mode, SslMode::VerifyCa);
        let require = params("postgres://u@db/x?sslmode=require");
        assert_eq!(
            require.decide(remote(), Some(&bundle)).mode,
            SslMode::Require
        );
    }

    #[test]
    fn bad_parameters_name_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let cert = ca_file(dir.path(), "client.pem");
        let huge = dir.path().join("huge.key").display().to_string();
        std::fs::write(&huge, vec![b'A'; 2 << 20]).unwrap();
        for (query, fragment) in [
            (
                "sslmode=always",
                "sslmode \"always\" is not known: write disable, prefer, require, verify-ca or verify-full",
            ),
            ("sslmode=allow", "sslmode \"allow\" is not known"),
            ("sslmode=VERIFY-FULL", "is not known"),
            (
                "sslmode=disable&sslmode=verify-full",
                "sslmode is given twice",
            ),
            ("ssl-mode=disable", "write sslmode= instead of ssl-mode="),
            ("ssl-ca=/x.pem", "write sslrootcert= instead of ssl-ca="),
            (
                "sslrootcert=/nonexistent/ca.pem",
                "sslrootcert \"/nonexistent/ca.pem\" cannot be read",
            ),
            (&format!("sslcert={cert}"), "sslcert and sslkey go together"),
            (
                &format!("sslcert={cert}&sslkey=/nonexistent.key"),
                "sslkey \"/nonexistent.key\" is not a readable file",
            ),
            (
                &format!("sslcert={cert}&sslkey={huge}"),
                &format!("sslkey {huge:?} is 2 MiB, over the limit of 1 MiB"),
            ),
        ] {
            let url = format!("postgres://u:pw-canary@db/x?{query}");
            let err = TlsParams::from_url("database_url", &url).unwrap_err();
            assert!(err.contains(fragment), "{query}: {err}");
            assert!(!err.contains("pw-canary"), "{err}");
        }
        let ok = params(&format!("postgres://u@db/x?sslcert={cert}&sslkey={cert}"));
        assert!(
            ok.decide(Endpoint::classify("db", false), None)
                .client
                .is_some()
        );
    }

    #[test]
    fn an_invalid_sslmode_in_the_settings_names_field_masked_value_and_rule() {
        let raw = crate::RawConfig::parse(
            "inventory_url: postgres://reader:pw-canary@db/inv?sslmode=on\n",
            "test.conf",
        )
        .unwrap();
        let err = crate::Settings::from_raw(&raw).unwrap_err().to_string();
        assert!(err.contains("inventory_url = "), "{err}");
        assert!(
            err.contains("sslmode \\\"on\\\" is not known")
                || err.contains("sslmode \"on\" is not known"),
            "{err}"
        );
        assert!(!err.contains("pw-canary"), "{err}");
        let raw = crate::RawConfig::parse(
            "database_url: postgres://runlog:pw-canary@db/runs?sslmode=maybe\n",
            "test.conf",
        )
        .unwrap();
        let err = crate::Settings::from_raw(&raw).unwrap_err().to_string();
        assert!(
            err.contains("database_url = ") && err.contains("is not known"),
            "{err}"
        );
        assert!(!err.contains("pw-canary"), "{err}");
    }

    #[test]
    fn explanations_say_what_to_set_and_hold_no_password() {
        let p = params("postgres://u:pw-canary@db.example.com/inv");
        let policy = p.decide(Endpoint::classify("db.example.com", false), None);
        let text = policy.explain(&TlsFailure::UntrustedCa);
        assert!(
            text.contains("not signed by a trusted CA") && text.contains("set sslrootcert="),
            "{text}"
        );
        assert!(text.contains("the default for a remote host"), "{text}");
        let text = policy.explain(&TlsFailure::NameMismatch);
        assert!(
            text.contains("host name db.example.com does not match")
                && text.contains("sslmode=verify-ca"),
            "{text}"
        );
        let text = policy.explain(&TlsFailure::NoServerTls);
        assert!(
            text.contains("does not accept TLS") && text.contains("write sslmode=disable"),
            "{text}"
        );
        for failure in [
            TlsFailure::UntrustedCa,
            TlsFailure::NameMismatch,
            TlsFailure::Expired,
            TlsFailure::NoServerTls,
        ] {
            let text = policy.explain(&failure);
            assert_eq!(text.lines().count(), 1);
            assert!(!text.contains("pw-canary"));
        }
    }
}
