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
    /// False when `s3_region` was not set: for AWS the bucket's own region
    /// is then asked for before the first upload.
    pub region_configured: bool,
    /// Access key id (not secret, but not shown in full either).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Checksum behaviour.
    pub checksum: ChecksumMode,
}

/// How the Azure Blob destination authenticates.
#[derive(Clone, Debug)]
pub enum BlobCredential {
    /// The storage account's name and access key; breakglass signs a
    /// short-lived SAS from the key for each upload.
    AccountKey {
        /// Storage account name (needed in the string-to-sign).
        account: String,
        /// The base64 account key, as the portal shows it.
        key: Secret,
    },
    /// A shared access signature (the query string, without a leading `?`).
    Sas(Secret),
}

/// A validated Azure Blob destination.
#[derive(Clone, Debug)]
pub struct BlobSettings {
    /// The account's blob endpoint without a trailing slash, e.g.
    /// `https://acct.blob.core.windows.net` or, for Azurite,
    /// `http://127.0.0.1:10000/devstoreaccount1`. The container follows it.
    pub endpoint: String,
    /// Protocol of the endpoint.
    pub protocol: Protocol,
    /// Container name (checked against Azure's naming rules).
    pub container: String,
    /// Account key or SAS.
    pub credential: BlobCredential,
}

/// Azurite's well-known development account (`UseDevelopmentStorage=true`).
pub const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
pub const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The public Azure cloud's endpoint suffix.
pub const DEFAULT_ENDPOINT_SUFFIX: &str = "core.windows.net";

/// Checks a container name: 3–63 characters, lowercase letters, digits and
/// single hyphens, starting and ending with a letter or digit.
pub fn check_container_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Err("must be 3 to 63 characters long (Azure container naming rules)");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(
            "may hold only lowercase letters, digits and '-' (Azure container naming rules)",
        );
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must begin and end with a letter or digit (Azure container naming rules)");
    }
    if name.contains("--") {
        return Err("must not hold two hyphens in a row (Azure container naming rules)");
    }
    Ok(())
}

/// Checks a storage account name: 3–24 lowercase letters and digits.
pub fn check_account_name(name: &str) -> Result<(), &'static str> {
    let ok = (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("must be 3 to 24 lowercase letters and digits (Azure storage account naming rules)")
    }
}

/// Checks that an account key is base64 (as the portal shows it).
pub fn check_account_key(key: &str) -> Result<(), &'static str> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key.trim()) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err("must be the base64 account key as the Azure portal shows it (Access keys)"),
    }
}

/// Normalises a SAS token: strips a leading `?` and checks that it holds
/// the `sv` (version) and `sig` (signature) parameters.
pub fn normalise_sas_token(token: &str) -> Result<String, &'static str> {
    let token = token.trim().trim_start_matches('?');
    let names: Vec<String> = url::form_urlencoded::parse(token.as_bytes())
        .map(|(name, _)| name.into_owned())
        .collect();
    if names.iter().any(|n| n == "sig") && names.iter().any(|n| n == "sv") {
        Ok(token.to_owned())
    } else {
        Err(
            "must be a SAS token: the query string holding sv=...&sig=... (the portal's \"SAS token\")",
        )
    }
}

/// Normalises an endpoint suffix such as `core.windows.net`; a scheme and
/// trailing slash are accepted (`https://core.windows.net/`), but the scheme
/// must agree with the protocol.
pub fn normalise_endpoint_suffix(text: &str, protocol: Protocol) -> Result<String, String> {
    let url = normalise_endpoint(text, protocol)?;
    let host = url
        .split_once("://")
        .map_or(url.as_str(), |(_, host)| host)
        .to_owned();
    if host.contains(':') {
        return Err("must not hold a port; use blob_endpoint for a custom endpoint".into());
    }
    if !host.contains('.') {
        return Err("must be a domain such as core.windows.net".into());
    }
    Ok(host)
}

/// Normalises an explicit blob endpoint: `scheme://host[:port][/path]`
/// without a trailing slash. A path is allowed (Azurite puts the account
/// there: `http://127.0.0.1:10000/devstoreaccount1`); a query, fragment or
/// credentials are not, and the scheme must agree with the protocol.
pub fn normalise_blob_endpoint(text: &str, protocol: Protocol) -> Result<String, String> {
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
        return Err("must not hold credentials; use the account key or SAS settings".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not hold a query or fragment; put a SAS in blob_sas_token".into());
    }
    let host = url.host_str().ok_or("must name a host")?;
    let path = url.path().trim_end_matches('/');
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}{path}", url.scheme()),
        None => format!("{}://{host}{path}", url.scheme()),
    })
}

/// The parts of an Azure storage connection string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionString {
    /// `DefaultEndpointsProtocol`.
    pub protocol: Option<Protocol>,
    /// `AccountName`.
    pub account_name: Option<String>,
    /// `AccountKey`.
    pub account_key: Option<Secret>,
    /// `EndpointSuffix`.
    pub endpoint_suffix: Option<String>,
    /// `BlobEndpoint`.
    pub blob_endpoint: Option<String>,
    /// `SharedAccessSignature`.
    pub sas: Option<Secret>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("protocol", &self.protocol)
            .field("account_name", &self.account_name)
            .field("account_key", &self.account_key)
            .field("endpoint_suffix", &self.endpoint_suffix)
            .field("blob_endpoint", &self.blob_endpoint)
            .field("sas", &self.sas)
            .finish()
    }
}

impl ConnectionString {
    /// Parses `Key=Value;Key=Value...` as the Azure portal shows it. Queue,
    /// table and file endpoints are ignored; `UseDevelopmentStorage=true`
    /// means Azurite on its default port. Errors never quote a value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parsed = Self::default();
        let mut development = false;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err("must be Name=Value pairs separated by ';'".into());
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => {
                    parsed.protocol = Some(
                        Protocol::parse(value)
                            .map_err(|rule| format!("DefaultEndpointsProtocol {rule}"))?,
                    );
                }
                "accountname" => parsed.account_name = Some(value.to_owned()),
                "accountkey" => parsed.account_key = Some(Secret::new(value)),
                "endpointsuffix" => parsed.endpoint_suffix = Some(value.to_owned()),
                "blobendpoint" => parsed.blob_endpoint = Some(value.to_owned()),
                "sharedaccesssignature" => parsed.sas = Some(Secret::new(value)),
                "usedevelopmentstorage" => development = value.eq_ignore_ascii_case("true"),
                "queueendpoint"
                | "tableendpoint"
                | "fileendpoint"
                | "developmentstorageproxyuri" => {}
                other => {
                    return Err(format!(
                        "holds an unknown part `{other}` (known: DefaultEndpointsProtocol, AccountName, AccountKey, EndpointSuffix, BlobEndpoint, SharedAccessSignature)"
                    ));
                }
            }
        }
        if development {
            parsed.protocol.get_or_insert(Protocol::Http);
            parsed
                .account_name
                .get_or_insert(DEVELOPMENT_ACCOUNT.into());
            if parsed.account_key.is_none() && parsed.sas.is_none() {
                parsed.account_key = Some(Secret::new(DEVELOPMENT_KEY));
            }
            parsed
                .blob_endpoint
                .get_or_insert(format!("http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT}"));
        }
        if parsed.protocol.is_none()
            && let Some(endpoint) = &parsed.blob_endpoint
        {
            let lower = endpoint.to_ascii_lowercase();
            if lower.starts_with("http://") {
                parsed.protocol = Some(Protocol::Http);
            } else if lower.starts_with("https://") {
                parsed.protocol = Some(Protocol::Https);
            }
        }
        Ok(parsed)
    }
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
    use breakglass_core::limits::{MAX_PEM_FILE_BYTES, read_file};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = read_file(std::path::Path::new(path), MAX_PEM_FILE_BYTES, "ca_bundle")
        .map_err(|err| err.rule())?;
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
    fn container_names_follow_azure_rules() {
        for good in ["backups", "my-container-1", "abc", &"a".repeat(63)] {
            assert_eq!(check_container_name(good), Ok(()), "{good}");
        }
        for (bad, rule) in [
            ("ab", "3 to 63"),
            (&"a".repeat(64), "3 to 63"),
            ("Backups", "lowercase"),
            ("my_container", "lowercase"),
            ("my.container", "lowercase"),
            ("-backup", "begin and end"),
            ("backup-", "begin and end"),
            ("a--b", "two hyphens"),
        ] {
            let err = check_container_name(bad).unwrap_err();
            assert!(err.contains(rule), "{bad}: {err}");
        }
    }

    #[test]
    fn blob_endpoints_keep_a_path_and_suffixes_accept_a_scheme() {
        assert_eq!(
            normalise_blob_endpoint("http://127.0.0.1:10000/devstoreaccount1/", Protocol::Http)
                .unwrap(),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_eq!(
            normalise_blob_endpoint("acct.blob.core.chinacloudapi.cn", Protocol::Https).unwrap(),
            "https://acct.blob.core.chinacloudapi.cn"
        );
        assert!(
            normalise_blob_endpoint("http://x", Protocol::Https)
                .unwrap_err()
                .contains("contradicts protocol https")
        );
        assert!(
            normalise_blob_endpoint("https://x/?sv=1", Protocol::Https)
                .unwrap_err()
                .contains("query")
        );
        for text in [
            "core.windows.net",
            "https://core.windows.net/",
            "core.windows.net/",
        ] {
            assert_eq!(
                normalise_endpoint_suffix(text, Protocol::Https).unwrap(),
                "core.windows.net",
                "{text}"
            );
        }
        assert!(
            normalise_endpoint_suffix("http://core.windows.net", Protocol::Https)
                .unwrap_err()
                .contains("contradicts")
        );
    }

    #[test]
    fn keys_tokens_and_connection_strings_are_checked() {
        assert_eq!(check_account_key(DEVELOPMENT_KEY), Ok(()));
        assert!(check_account_key("not base64!").is_err());
        assert_eq!(check_account_name("devstoreaccount1"), Ok(()));
        assert!(check_account_name("My_Account").is_err());
        assert_eq!(
            normalise_sas_token("?sv=2022-11-02&sp=cw&sig=abc%3D").unwrap(),
            "sv=2022-11-02&sp=cw&sig=abc%3D"
        );
        assert!(normalise_sas_token("sp=cw").is_err());
        let parsed = ConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={DEVELOPMENT_KEY};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(parsed.protocol, Some(Protocol::Https));
        assert_eq!(parsed.account_name.as_deref(), Some("acct"));
        assert_eq!(
            parsed.account_key.as_ref().unwrap().expose(),
            DEVELOPMENT_KEY
        );
        assert!(!format!("{parsed:?}").contains(DEVELOPMENT_KEY));
        let azurite = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(
            azurite.blob_endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        let sas = ConnectionString::parse(
            "BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=x",
        )
        .unwrap();
        assert_eq!(sas.protocol, Some(Protocol::Https));
        assert_eq!(sas.sas.unwrap().expose(), "sv=1&sig=x");
        let err = ConnectionString::parse("AccountKey=secretvalue;Bogus=1").unwrap_err();
        assert!(
            err.contains("unknown part `bogus`") && !err.contains("secretvalue"),
            "{err}"
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
        // A bundle bigger than any real one, or an endless file, is refused
        // without being read whole.
        let huge = dir.join("huge.pem");
        std::fs::write(&huge, vec![b'a'; 2 << 20]).unwrap();
        let err = read_ca_bundle(huge.to_str().unwrap()).unwrap_err();
        assert_eq!(err, "is 2 MiB, over the limit of 1 MiB");
        let err = read_ca_bundle("/dev/zero").unwrap_err();
        assert!(err.contains("over the limit of 1 MiB"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
