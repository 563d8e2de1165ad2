//! Settings of the remote destinations (S3, Azure Blob) and the TLS trust
//! they share, validated with the rule named in every error.
//!
//! Endpoints are normalised to `scheme://host[:port]`; a scheme that
//! contradicts the configured protocol is an error, never silently fixed.

use breakglass_core::Secret;
use std::path::PathBuf;

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Plain HTTP: credentials and data travel in clear; every Test warns.
    Http,
    /// HTTPS with certificate verification (the default).
    Https,
}

impl Protocol {
    /// Parses `http` / `https` (any case).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match text.to_ascii_lowercase().as_str() {
            "http" => Ok(Self::Http),
            "https" => Ok(Self::Https),
            _ => Err("must be http or https"),
        }
    }

    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// How the S3 client computes request checksums and validates responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Only where the operation requires one: S3-compatible servers that
    /// store the SDK's aws-chunked framing as data or reject the newer
    /// checksum headers (MinIO, Ceph, B2, R2 have all hit this) need this.
    WhenRequired,
    /// Whenever supported (AWS itself).
    WhenSupported,
}

/// A validated S3 destination.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// Bucket name (checked against S3's naming rules).
    pub bucket: String,
    /// `scheme://host[:port]` of an S3-compatible endpoint; `None` = AWS.
    pub endpoint: Option<String>,
    /// Protocol (for AWS: the scheme used to reach it).
    pub protocol: Protocol,
    /// Region: configured, else `us-east-1`.
    pub region: String,
    /// Access key id (not secret, but not shown in full either).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Checksum behaviour.
    pub checksum: ChecksumMode,
}

/// Extra trusted CA certificates (PEM), read and checked at load time.
#[derive(Clone)]
pub struct CaBundle {
    /// Where they came from.
    pub path: PathBuf,
    /// The PEM text, one or more certificates.
    pub pem: Vec<u8>,
    /// How many certificates it holds.
    pub certificates: usize,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.certificates
        )
    }
}

/// Reads and checks a PEM CA bundle.
pub fn read_ca_bundle(path: &str) -> Result<CaBundle, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|err| format!("cannot be read: {err}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("is not a valid PEM certificate file: {err:?}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(CaBundle {
        path: PathBuf::from(path),
        pem,
        certificates: certificates.len(),
    })
}

/// Checks a bucket name against S3's rules for general purpose buckets.
pub fn check_bucket_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Err("must be 3 to 63 characters long (S3 bucket naming rules)");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
    {
        return Err(
            "may hold only lowercase letters, digits, '.' and '-' (S3 bucket naming rules)",
        );
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must begin and end with a letter or digit (S3 bucket naming rules)");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err(
            "must not hold two adjacent periods or a period next to a hyphen (S3 bucket naming rules)",
        );
    }
    if name.split('.').count() == 4 && name.split('.').all(|part| part.parse::<u8>().is_ok()) {
        return Err("must not look like an IP address (S3 bucket naming rules)");
    }
    if name.starts_with("xn--")
        || name.starts_with("sthree-")
        || name.ends_with("-s3alias")
        || name.ends_with("--ol-s3")
    {
        return Err("uses a prefix or suffix S3 reserves (xn--, sthree-, -s3alias, --ol-s3)");
    }
    Ok(())
}

/// Normalises an endpoint URL to `scheme://host[:port]`. A URL without a
/// scheme takes the protocol's; one whose scheme contradicts the protocol,
/// or that holds a path, query, fragment or credentials, is an error.
pub fn normalise_endpoint(text: &str, protocol: Protocol) -> Result<String, String> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("{}://{text}", protocol.scheme())
    };
    let url = url::Url::parse(&with_scheme).map_err(|err| format!("is not a valid URL: {err}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("scheme must be http or https, not {other}")),
    }
    if url.scheme() != protocol.scheme() {
        return Err(format!(
            "scheme {} contradicts protocol {}: make them agree",
            url.scheme(),
            protocol.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials; use the access key settings".into());
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err("must not hold a path; put the folder in path_prefix".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not hold a query or fragment".into());
    }
    let host = url.host_str().ok_or("must name a host")?;
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["backups", "my.bucket-1", "abc"] {
            assert_eq!(check_bucket_name(good), Ok(()), "{good}");
        }
        for (bad, rule) in [
            ("ab", "3 to 63"),
            ("Backups", "lowercase"),
            ("-backup", "begin and end"),
            ("a..b", "adjacent"),
            ("192.168.5.4", "IP address"),
            ("xn--abc", "reserves"),
            ("my_bucket", "lowercase"),
        ] {
            let err = check_bucket_name(bad).unwrap_err();
            assert!(err.contains(rule), "{bad}: {err}");
        }
    }

    #[test]
    fn endpoints_are_normalised_and_checked() {
        assert_eq!(
            normalise_endpoint("s3.example.com:9000", Protocol::Https).unwrap(),
            "https://s3.example.com:9000"
        );
        assert_eq!(
            normalise_endpoint("http://127.0.0.1:5000/", Protocol::Http).unwrap(),
            "http://127.0.0.1:5000"
        );
        assert!(
            normalise_endpoint("http://x", Protocol::Https)
                .unwrap_err()
                .contains("contradicts protocol https")
        );
        assert!(
            normalise_endpoint("https://x/bucket", Protocol::Https)
                .unwrap_err()
                .contains("path")
        );
        assert!(
            normalise_endpoint("https://x/?a=1", Protocol::Https)
                .unwrap_err()
                .contains("query")
        );
        assert!(
            normalise_endpoint("https://u:p@x", Protocol::Https)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            normalise_endpoint("ftp://x", Protocol::Https)
                .unwrap_err()
                .contains("http or https")
        );
    }

    #[test]
    fn a_ca_bundle_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("bg-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(
            read_ca_bundle(empty.to_str().unwrap())
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(
            read_ca_bundle("/nonexistent/ca.pem")
                .unwrap_err()
                .contains("cannot be read")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
