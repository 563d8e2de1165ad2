//! A string that must never be printed: passwords, keys, tokens.
//!
//! `Debug` and `Display` both print [`MASK`]; the value is reached only by
//! the explicit [`Secret::expose`], which makes every place that handles
//! plaintext easy to find with `grep expose`. The memory is zeroed on drop.

use std::fmt;
use zeroize::Zeroize;

/// What a secret prints as, everywhere.
pub const MASK: &str = "********";

/// A secret string. Cloning copies the secret; dropping wipes it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call it only where the value must be used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hands the plaintext over to a value that must own it (a message
    /// being encoded), without a copy; this wrapper is left empty.
    pub fn into_exposed(mut self) -> String {
        std::mem::take(&mut self.0)
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in characters, for rules such as the Excel cell limit.
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Query parameters whose values are credentials.
const SECRET_PARAMS: [&str; 7] = [
    "password",
    "pass",
    "pwd",
    "token",
    "sslpassword",
    "secret",
    "sig",
];

/// Masks every credential in a URL, or a comma list of URLs, before it is
/// shown anywhere: the whole userinfo when it is a bare token
/// (`nats://TOKEN@host`), the password of `user:password@`, and the values
/// of query parameters such as `password=` or `sig=`. Masks too much rather
/// than too little: everything before the last `@` counts as userinfo, so a
/// password holding `/`, `?` or `#` is still hidden.
pub fn mask_url_credentials(text: &str) -> String {
    split_url_list(text)
        .into_iter()
        .map(mask_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits on commas that start another URL (`,scheme://`), so commas inside
/// a password do not split.
fn split_url_list(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (index, _) in text.match_indices(',') {
        let next = &text[index + 1..];
        let starts_url = next.find("://").is_some_and(|end| {
            end > 0
                && next[..end]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        });
        if starts_url && index >= start {
            parts.push(&text[start..index]);
            start = index + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

fn mask_one_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(end) => url.split_at(end + 3),
        None => ("", url),
    };
    // Userinfo is masked with or without a scheme (`s3_url` may be written
    // `user:password@host:port`).
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}"),
                None => MASK.to_owned(),
            };
            format!("{shown}{}", &rest[at..])
        }
        None => rest.to_owned(),
    };
    let masked = format!("{head}{rest}");
    match masked.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if SECRET_PARAMS.contains(&key.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{key}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_masked_in_every_form() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/inv?x=1",
                format!("postgres://app:{MASK}@db:5432/inv?x=1"),
            ),
            (
                "postgres://app:p@ss/w@db/inv",
                format!("postgres://app:{MASK}@db/inv"),
            ),
            (
                "nats://TOKEN123@nats:4222",
                format!("nats://{MASK}@nats:4222"),
            ),
            (
                "postgres://db/inv?user=a&password=hunter2",
                format!("postgres://db/inv?user=a&password={MASK}"),
            ),
            (
                "nats://u:p1@a:4222,nats://u:p2@b:4222",
                format!("nats://u:{MASK}@a:4222,nats://u:{MASK}@b:4222"),
            ),
            (
                "postgres://app:a,b@db/x",
                format!("postgres://app:{MASK}@db/x"),
            ),
            ("postgres://db/inv", "postgres://db/inv".to_string()),
            ("/data/inv.csv", "/data/inv.csv".to_string()),
        ];
        for (url, want) in cases {
            assert_eq!(mask_url_credentials(url), want, "{url}");
        }
    }

    #[test]
    fn debug_and_display_print_the_mask_only() {
        let secret = Secret::new("hunter2-canary");
        assert_eq!(format!("{secret:?}"), MASK);
        assert_eq!(format!("{secret}"), MASK);
        assert_eq!(
            format!("{:?}", Some(secret.clone())),
            format!("Some({MASK})")
        );
        assert_eq!(secret.expose(), "hunter2-canary");
    }
}
