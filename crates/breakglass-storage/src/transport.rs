//! What the remote backends share: plain words for connection failures, and
//! the file reading their uploads need (MD5, one part at a time).

use md5::{Digest, Md5};
use std::io::Read;
use std::path::Path;

/// Names the connection problem (TLS, DNS, refused, timeout) and its fix;
/// `endpoint_setting` names the setting to check (`s3_url`, ...).
pub(crate) fn explain_transport(detail: &str, endpoint_setting: &str) -> String {
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
    } else if lower.contains("connection refused") {
        format!(
            "the endpoint refused the connection: check {endpoint_setting} and that the server runs ({detail})"
        )
    } else if lower.contains("timed out") || lower.contains("operation timeout") {
        format!("the endpoint did not answer in time ({detail})")
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
