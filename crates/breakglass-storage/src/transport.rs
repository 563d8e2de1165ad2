//! What the remote backends share: plain words for connection failures
//! (the cause once, from the errors' types and Display chain; the SDKs'
//! Debug dumps only in debug logs), and the file reading their uploads
//! need (MD5, one part at a time).

use md5::{Digest, Md5};
use std::io::Read;

/// How a request to a remote destination failed, in plain words: the
/// errors' Display chain (never their Debug dumps), the kind of the I/O
/// error underneath if any, and the endpoint it went to.
pub(crate) struct TransportFailure<'a> {
    /// Each error's message, outermost first, without repeats.
    pub detail: &'a str,
    /// The kind of the first I/O error in the chain (refused, timed out...).
    pub kind: Option<std::io::ErrorKind>,
    /// The certificate problem, when a rustls error is in the chain.
    pub tls: Option<TlsProblem>,
    /// The endpoint the request went to (`https://host:port`).
    pub endpoint: &'a str,
}

/// An error's cause chain as one line: each message once, outermost first.
/// Display only: the SDKs' Debug output (`DispatchFailure(…)`) belongs in
/// debug logs, not in a run result.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let message = inner.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = inner.source();
    }
    text
}

/// The kind of the first I/O error in `err`'s chain, classified by type
/// (a refused or timed-out connection), not by its text.
pub(crate) fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(err);
    while let Some(inner) = current {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = inner.source();
    }
    None
}

/// What was wrong with the server's certificate, read from the type of the
/// rustls error in a chain (not from its text, which a dependency may
/// reword).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsProblem {
    /// The chain does not end at a trusted root.
    UnknownIssuer,
    /// The certificate names another host.
    WrongName,
    /// Expired or not valid yet.
    OutOfDate,
    /// Any other certificate error.
    Other,
}

/// The certificate problem in `err`'s chain, if a rustls error is there
/// (directly, or inside an `io::Error` as TLS streams wrap it).
pub(crate) fn tls_problem(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    use rustls::CertificateError as C;
    let mut current = Some(err);
    while let Some(inner) = current {
        let rustls_error = inner.downcast_ref::<rustls::Error>().or_else(|| {
            inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(problem)) = rustls_error {
            return Some(match problem {
                C::UnknownIssuer => TlsProblem::UnknownIssuer,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongName,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => TlsProblem::OutOfDate,
                _ => TlsProblem::Other,
            });
        }
        current = inner.source();
    }
    None
}

/// Names the connection problem (TLS, DNS, refused, timeout) and its fix,
/// saying the cause once; `endpoint_setting` names the setting to check
/// (`s3_url`, ...).
pub(crate) fn explain_transport(failure: &TransportFailure<'_>, endpoint_setting: &str) -> String {
    use std::io::ErrorKind;
    let detail = failure.detail;
    let endpoint = failure.endpoint;
    let lower = detail.to_ascii_lowercase();
    // By type first; the text is the fallback for clients whose errors
    // hide their types (another rustls version inside an SDK).
    let tls = failure.tls.or_else(|| {
        if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            Some(TlsProblem::UnknownIssuer)
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            Some(TlsProblem::WrongName)
        } else if lower.contains("invalid peer certificate") && lower.contains("expired") {
            Some(TlsProblem::OutOfDate)
        } else {
            None
        }
    });
    if tls == Some(TlsProblem::UnknownIssuer) {
        format!(
            "the server's TLS certificate is not signed by a trusted CA (unknown issuer): set ca_bundle to the CA's PEM file ({detail})"
        )
    } else if tls == Some(TlsProblem::WrongName) {
        format!(
            "the server's TLS certificate is for another host name: use the name on the certificate in {endpoint_setting} ({detail})"
        )
    } else if tls == Some(TlsProblem::OutOfDate) {
        format!("the server's TLS certificate has expired or is not valid yet ({detail})")
    } else if lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("name or service not known")
    {
        format!(
            "the endpoint's host name does not resolve (DNS): check {endpoint_setting} ({detail})"
        )
    } else if failure.kind == Some(ErrorKind::ConnectionRefused)
        || lower.contains("connection refused")
    {
        format!(
            "connection refused to {endpoint}: check {endpoint_setting} and that the server runs"
        )
    } else if failure.kind == Some(ErrorKind::TimedOut)
        || lower.contains("timed out")
        || lower.contains("operation timeout")
    {
        format!("timed out: {endpoint} did not answer in time")
    } else if matches!(
        failure.kind,
        Some(
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        )
    ) {
        format!("the connection to {endpoint} was cut ({detail})")
    } else {
        detail.to_owned()
    }
}

/// The MD5 (for `Content-MD5`) of a file, after checking that its bytes
/// are the ones `upload` names (size and SHA-256): what is sent is what
/// the run made, or nothing is sent.
pub(crate) fn md5_checked(upload: &crate::Upload<'_>) -> Result<Vec<u8>, CheckFailure> {
    let mut file = std::fs::File::open(upload.file).map_err(CheckFailure::Io)?;
    let mut md5 = Md5::new();
    let mut sha = <sha2::Sha256 as sha2::Digest>::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(CheckFailure::Io)?;
        if n == 0 {
            break;
        }
        md5.update(&buffer[..n]);
        sha2::Digest::update(&mut sha, &buffer[..n]);
        size += n as u64;
    }
    let sha = hex::encode(sha2::Digest::finalize(sha));
    if size != upload.size || !sha.eq_ignore_ascii_case(upload.sha256) {
        return Err(CheckFailure::Mismatch(mismatch(upload, size, &sha)));
    }
    Ok(md5.finalize().to_vec())
}

/// Words for bytes that are not the run's workbook.
pub(crate) fn mismatch(upload: &crate::Upload<'_>, size: u64, sha256: &str) -> String {
    format!(
        "the workbook to send is {size} bytes with SHA-256 {sha256}, but the run made {} bytes with SHA-256 {}; nothing was stored",
        upload.size, upload.sha256
    )
}

/// Why [`md5_checked`] refused.
pub(crate) enum CheckFailure {
    /// The file could not be read.
    Io(std::io::Error),
    /// Its bytes are not the run's (the words say how).
    Mismatch(String),
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
pub(crate) fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("dispatch failure")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_refused_connection_is_named_once_by_its_type() {
        let err = Wrapper(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error",
        ));
        let detail = error_chain(&err);
        assert_eq!(detail, "dispatch failure: tcp connect error");
        let text = explain_transport(
            &TransportFailure {
                detail: &detail,
                kind: io_kind(&err),
                tls: tls_problem(&err),
                endpoint: "http://127.0.0.1:9",
            },
            "s3_url",
        );
        assert_eq!(
            text,
            "connection refused to http://127.0.0.1:9: check s3_url and that the server runs"
        );
    }

    #[test]
    fn a_timeout_is_named_by_its_type() {
        let err = Wrapper(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        let detail = error_chain(&err);
        let text = explain_transport(
            &TransportFailure {
                detail: &detail,
                kind: io_kind(&err),
                tls: tls_problem(&err),
                endpoint: "https://s3.example:443",
            },
            "s3_url",
        );
        assert_eq!(
            text,
            "timed out: https://s3.example:443 did not answer in time"
        );
    }

    /// A rustls certificate error wrapped in an `io::Error` under a client's
    /// own error whose messages no longer say "UnknownIssuer" or
    /// "NotValidForName": the type still names the fix.
    #[test]
    fn certificate_problems_are_named_by_type_whatever_the_text() {
        use rustls::CertificateError as C;
        for (problem, expected) in [
            (C::UnknownIssuer, "not signed by a trusted CA"),
            (C::NotValidForName, "is for another host name"),
            (C::Expired, "has expired or is not valid yet"),
        ] {
            let err = Wrapper(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(problem),
            ));
            let tls = tls_problem(&err);
            assert!(tls.is_some(), "{err:?}");
            let text = explain_transport(
                &TransportFailure {
                    detail: "handshake failed",
                    kind: io_kind(&err),
                    tls,
                    endpoint: "https://s3.example:443",
                },
                "s3_url",
            );
            assert!(text.contains(expected), "{text}");
        }
        let plain = Wrapper(std::io::Error::other("not tls at all"));
        assert_eq!(tls_problem(&plain), None);
    }
}
