//! What the remote backends share: plain words for connection failures
//! (the cause once, from the errors' types and Display chain; the SDKs'
//! Debug dumps only in debug logs), and the file reading their uploads
//! need (MD5, one part at a time).

use md5::{Digest, Md5};
use std::io::Read;
use std::path::Path;

/// How a request to a remote destination failed, in plain words: the
/// errors' Display chain (never their Debug dumps), the kind of the I/O
/// error underneath if any, and the endpoint it went to.
pub(crate) struct TransportFailure<'a> {
    /// Each error's message, outermost first, without repeats.
    pub detail: &'a str,
    /// The kind of the first I/O error in the chain (refused, timed out...).
    pub kind: Option<std::io::ErrorKind>,
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

/// Names the connection problem (TLS, DNS, refused, timeout) and its fix,
/// saying the cause once; `endpoint_setting` names the setting to check
/// (`s3_url`, ...).
pub(crate) fn explain_transport(failure: &TransportFailure<'_>, endpoint_setting: &str) -> String {
    use std::io::ErrorKind;
    let detail = failure.detail;
    let endpoint = failure.endpoint;
    let lower = detail.to_ascii_lowercase();
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        format!(
            "the server's TLS certificate is not signed by a trusted CA (unknown issuer): set ca_bundle to the CA's PEM file ({detail})"
        )
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        format!(
            "the server's TLS certificate is for another host name: use the name on the certificate in {endpoint_setting} ({detail})"
        )
    } else if lower.contains("invalid peer certificate") && lower.contains("expired") {
        format!("the server's TLS certificate has expired ({detail})")
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

/// The MD5 of a file (what `Content-MD5` carries).
pub(crate) fn md5_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().to_vec())
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
                endpoint: "https://s3.example:443",
            },
            "s3_url",
        );
        assert_eq!(
            text,
            "timed out: https://s3.example:443 did not answer in time"
        );
    }
}
