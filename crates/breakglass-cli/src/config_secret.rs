//! `breakglass config secret`: builds the `key: value` file (option 1 of
//! the settings) from flags, a starting file, the environment or prompts,
//! validates it like the services do, and writes it as the plain file or as
//! a `kind: Secret` manifest ready for `kubectl apply -f`.
//!
//! Secrets never come from argv silently: `--set` of a secret key warns
//! (argv is visible in `ps`), and the safe ways are a prompt without echo,
//! an environment variable `BREAKGLASS_<KEY>` or `--from-file`. Nothing is
//! written unless every value passes the same checks as `config check`.

use anyhow::Context;
use breakglass_config::{KNOWN_KEYS, RawConfig, SECRET_KEYS, Settings};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `config secret`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start from this `key: value` file.
    #[arg(long)]
    from_file: Option<PathBuf>,
    /// Set a key, e.g. `--set execute_time=02:30`. Secret keys given here
    /// are visible to other users (ps) and draw a warning; prefer the
    /// prompt or `BREAKGLASS_<KEY>` (e.g. BREAKGLASS_S3_SECRET_ACCESS_KEY).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Ask for the main settings on the terminal (secrets are not echoed).
    #[arg(long, short)]
    interactive: bool,
    /// `file` (the plain `key: value` file) or `manifest` (a Kubernetes
    /// Secret with the file under `breakglass.conf`).
    #[arg(long, default_value = "manifest", value_parser = ["file", "manifest"])]
    format: String,
    /// The Secret's name.
    #[arg(long, default_value = "breakglass-config")]
    name: String,
    /// The Secret's namespace (omitted when not given).
    #[arg(long)]
    namespace: Option<String>,
    /// Write here (replaced atomically by a file readable by this user
    /// only); `-` for stdout, which is refused on a terminal (credentials
    /// would stay in the scrollback) — pipe it, e.g. `| kubectl apply -f -`.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Asked only when another key holds a value: (key, value).
type Condition = Option<(&'static str, &'static str)>;

/// The settings a prompt asks for, in order: (key, question, shown when).
const PROMPTS: &[(&str, &str, Condition)] = &[
    (
        "storage_provider",
        "storage provider (s3, blob, local; comma list for several)",
        None,
    ),
    ("s3_bucket", "S3 bucket", Some(("storage_provider", "s3"))),
    (
        "s3_url",
        "S3 endpoint URL (empty for AWS)",
        Some(("storage_provider", "s3")),
    ),
    (
        "s3_region",
        "S3 region (empty: ask the bucket)",
        Some(("storage_provider", "s3")),
    ),
    (
        "s3_access_key_id",
        "S3 access key id",
        Some(("storage_provider", "s3")),
    ),
    (
        "s3_secret_access_key",
        "S3 secret access key",
        Some(("storage_provider", "s3")),
    ),
    (
        "blob_account_name",
        "Azure storage account",
        Some(("storage_provider", "blob")),
    ),
    (
        "blob_container",
        "Azure container",
        Some(("storage_provider", "blob")),
    ),
    (
        "blob_account_key",
        "Azure account key (empty to give a SAS token)",
        Some(("storage_provider", "blob")),
    ),
    (
        "blob_sas_token",
        "Azure SAS token (empty when a key was given)",
        Some(("storage_provider", "blob")),
    ),
    (
        "local_dir",
        "local folder",
        Some(("storage_provider", "local")),
    ),
    (
        "path_prefix",
        "folder inside the bucket/container (empty for none)",
        None,
    ),
    ("execute_time", "daily run time HH:mm (24-hour)", None),
    ("time_zone", "time zone (IANA name, empty for UTC)", None),
    ("encryption", "encryption (password, age, none)", None),
    (
        "encryption_passphrase",
        "break-glass passphrase",
        Some(("encryption", "password")),
    ),
    (
        "age_recipients",
        "age recipients (comma list of age1… keys)",
        Some(("encryption", "age")),
    ),
    (
        "inventory_url",
        "inventory (postgres://…, sqlite://… or a .csv path)",
        None,
    ),
];

/// Builds, checks and writes the file or manifest.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut raw = match &args.from_file {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::new(),
    };
    for pair in &args.overrides {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--set {pair:?}: must be KEY=VALUE, e.g. execute_time=02:30")
        })?;
        let key = key.trim();
        if SECRET_KEYS.contains(&key) {
            eprintln!(
                "breakglass: warning: {key} given on the command line is visible to other users of this machine (ps, shell history); prefer the prompt or BREAKGLASS_{}",
                key.to_uppercase()
            );
        }
        raw.override_with(key, value.trim(), "--set")
            .map_err(|problem| anyhow::anyhow!("{problem}"))?;
    }
    for key in SECRET_KEYS {
        let variable = format!("BREAKGLASS_{}", key.to_uppercase());
        if raw.get(key).is_none()
            && let Ok(value) = std::env::var(&variable)
            && !value.is_empty()
        {
            raw.override_with(key, &value, &variable)
                .map_err(|problem| anyhow::anyhow!("{problem}"))?;
        }
    }
    if args.interactive {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "--interactive needs a terminal; give the values with --set or --from-file"
            );
        }
        prompt(&mut raw)?;
    }
    for key in raw.keys() {
        if let Some(value) = raw.get(key)
            && value.value.contains(['\n', '\r'])
        {
            anyhow::bail!("{key}: a value must be a single line");
        }
    }
    // The same checks as the services and `config check`: all at once.
    Settings::from_raw(&raw)?;
    let body = render_file(&raw);
    let text = if args.format == "manifest" {
        manifest(&args.name, args.namespace.as_deref(), &body)?
    } else {
        body
    };
    match args
        .out
        .as_deref()
        .filter(|path| *path != std::path::Path::new("-"))
    {
        Some(path) => {
            write_private(path, text.as_bytes())?;
            eprintln!(
                "wrote {} ({}); it holds credentials: keep it out of version control",
                path.display(),
                if args.format == "manifest" {
                    "apply with `kubectl apply -f`"
                } else {
                    "mount it as /etc/breakglass/breakglass.conf"
                }
            );
        }
        None => {
            if std::io::stdout().is_terminal() {
                anyhow::bail!(
                    "not printing credentials to the terminal: give --out FILE, or pipe the output (e.g. `| kubectl apply -f -`)"
                );
            }
            out!("{text}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces `path` atomically with a new `0600` file holding `bytes`: an
/// existing file keeps neither its (perhaps wider) mode nor a symlink.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".breakglass-secret-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write next to {}", path.display()))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    temp.persist(path)
        .map_err(|err| err.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The `key: value` file, keys in the documented order. Every value is
/// quoted: the parser strips exactly one outer pair, so blanks at either
/// end and quotes inside survive the round trip.
fn render_file(raw: &RawConfig) -> String {
    let mut text =
        String::from("# breakglass settings (`breakglass config check` validates this file)\n");
    for key in KNOWN_KEYS {
        if let Some(value) = raw.get(key) {
            text.push_str(&format!("{key}: \"{}\"\n", value.value));
        }
    }
    text
}

/// A Secret manifest holding the file as `breakglass.conf` (stringData, a
/// literal block, so no value needs YAML quoting).
fn manifest(name: &str, namespace: Option<&str>, body: &str) -> anyhow::Result<String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !valid(name) {
        anyhow::bail!(
            "--name {name:?}: must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
        );
    }
    if let Some(namespace) = namespace
        && (!valid(namespace) || namespace.contains('.') || namespace.len() > 63)
    {
        anyhow::bail!(
            "--namespace {namespace:?}: must be a DNS label (lower-case letters, digits and '-', at most 63)"
        );
    }
    let mut text = format!(
        "# The breakglass settings, mounted into every pod as /etc/breakglass/breakglass.conf.\n\
         # It holds credentials: keep it out of version control.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n"
    );
    if let Some(namespace) = namespace {
        text.push_str(&format!("  namespace: {namespace}\n"));
    }
    text.push_str("  labels: {app.kubernetes.io/part-of: breakglass}\ntype: Opaque\nstringData:\n  breakglass.conf: |\n");
    for line in body.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    Ok(text)
}

/// Asks for every setting that applies and is not set yet.
fn prompt(raw: &mut RawConfig) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    for (key, question, when) in PROMPTS {
        if raw.get(key).is_some() {
            continue;
        }
        if let Some((other, wanted)) = when {
            let applies = raw
                .get(other)
                .is_some_and(|v| v.value.split(',').any(|part| part.trim() == *wanted))
                || (*other == "encryption"
                    && *wanted == "password"
                    && raw.get("encryption").is_none());
            if !applies {
                continue;
            }
        }
        let value = if SECRET_KEYS.contains(key) {
            rpassword::prompt_password(format!("{question} (not shown): "))
                .with_context(|| format!("reading {key}"))?
        } else {
            eprint!("{question}: ");
            std::io::stderr().flush().ok();
            lines
                .next()
                .transpose()
                .with_context(|| format!("reading {key}"))?
                .unwrap_or_default()
        };
        let value = value.trim();
        if !value.is_empty() {
            raw.override_with(key, value, "prompt")
                .map_err(|problem| anyhow::anyhow!("{problem}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_survives_the_round_trip_through_the_file() {
        let mut raw = RawConfig::new();
        for (key, value) in [
            ("encryption_passphrase", " spaced pass "),
            ("s3_secret_access_key", "\"quoted\""),
            ("execute_time", "02:30"),
            ("s3_url", "https://s3.example:9000"),
        ] {
            raw.set(key, value, "test").unwrap();
        }
        let back = RawConfig::parse(&render_file(&raw), "rendered").unwrap();
        for key in [
            "encryption_passphrase",
            "s3_secret_access_key",
            "execute_time",
            "s3_url",
        ] {
            assert_eq!(
                back.get(key).unwrap().value,
                raw.get(key).unwrap().value,
                "{key}"
            );
        }
    }

    #[test]
    fn the_manifest_indents_the_file_under_string_data() {
        let text = manifest(
            "breakglass-config",
            Some("mavis"),
            "a: 1\nexecute_time: 02:30\n",
        )
        .unwrap();
        assert!(text.contains("  namespace: mavis\n"));
        assert!(
            text.ends_with("  breakglass.conf: |\n    a: 1\n    execute_time: 02:30\n"),
            "{text}"
        );
        assert!(manifest("Bad_Name", None, "").is_err());
        assert!(manifest("ok", Some("a.b"), "").is_err());
    }
}
