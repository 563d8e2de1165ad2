//! The emergency commands: `fetch`, `verify`, `show` and `drill`.
//!
//! They need nothing but a reader config file (the same `key: value` keys
//! as the service secret, holding the break-glass account's list + read
//! credential) and the passphrase or age identity: no NATS, no PostgreSQL,
//! no Mavis. docs/RUNBOOK.md walks an on-call person through them.
//!
//! Exit codes: 0 done; 1 failed (nothing usable, or a check did not pass);
//! 2 `fetch` wrote a verified copy that is older than `--max-age`.

use crate::output::StdoutClosed;
use anyhow::Context;
use breakglass_config::{Encryption, RawConfig, Settings, StorageKind};
use breakglass_core::Secret;
use breakglass_retrieve::display::{for_terminal, table_cell};
use breakglass_retrieve::drill::{StepStatus, run_drill};
use breakglass_retrieve::fetch::{decrypt_fetched, fetch_latest, human, verify_file};
use breakglass_retrieve::unseal::{OpenKey, open_sealed, read_identity_file};
use breakglass_retrieve::workbook::{ReadRow, find_device, for_each_row};
use breakglass_storage::{AnyDestination, Destination};
use chrono::TimeDelta;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the backup is and how to open it: shared by fetch and drill.
#[derive(Debug, clap::Args)]
pub struct ReaderArgs {
    /// The reader's `key: value` file: storage_provider, the bucket or
    /// container and a list + read credential, path_prefix, ca_bundle.
    #[arg(long)]
    config: PathBuf,
    /// Override a key of the file, e.g. `--set path_prefix=prod`. Secrets
    /// given here are visible to other users of this machine (ps): prefer
    /// the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Which destination to read when the file names several
    /// (`s3`, `blob`, `local`). Default: the first one listed.
    #[arg(long, value_parser = ["s3", "blob", "local"])]
    from: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
}

/// How to open an encrypted file.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// A file whose first line is the break-glass passphrase (else
    /// BREAKGLASS_PASSPHRASE, else `encryption_passphrase` of the config,
    /// else a prompt on the terminal).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// An age identity file (`AGE-SECRET-KEY-1…`), for `age` backups.
    #[arg(long)]
    identity: Option<PathBuf>,
}

/// Flags of `fetch`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    reader: ReaderArgs,
    /// Folder for the verified copy, its manifest and the decrypted
    /// workbook (created private).
    #[arg(long, required_unless_present = "stdout_table")]
    out: Option<PathBuf>,
    /// Print every row as a tab-separated table instead of writing the
    /// decrypted workbook.
    #[arg(long)]
    stdout_table: bool,
    /// Warn (and exit 2) when the newest copy is older than this many hours.
    #[arg(long, default_value_t = 26.0)]
    max_age: f64,
}

/// Flags of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The downloaded file, as stored (encrypted).
    file: PathBuf,
    /// Its manifest. Default: FILE.manifest.json beside it.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

/// Flags of `show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The device name, or part of it (case does not matter).
    device: String,
    /// A fetched or downloaded workbook: decrypted, or as stored (then
    /// with the passphrase or identity).
    #[arg(long)]
    file: PathBuf,
    /// Print the values exactly as stored, control characters included
    /// (for a pipe into a password manager). Without it, values holding
    /// control or terminal escape characters are shown escaped (`\x1b`).
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    key: KeyArgs,
}

/// Flags of `drill`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[command(flatten)]
    reader: ReaderArgs,
    /// Fail when the newest copy is older than this many hours.
    #[arg(long, default_value_t = 26.0)]
    max_age: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also record the result in the run log (`database_url` and
    /// `database_schema` of the config file), where the scheduler turns it
    /// into the `breakglass_drill_last_*_timestamp_seconds` metrics.
    #[arg(long)]
    record: bool,
}

fn hours(value: f64, flag: &str) -> anyhow::Result<TimeDelta> {
    if !value.is_finite() || value <= 0.0 {
        anyhow::bail!("{flag} {value}: must be a positive number of hours");
    }
    Ok(TimeDelta::milliseconds((value * 3_600_000.0) as i64))
}

impl ReaderArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut raw = RawConfig::from_file(&self.config)?;
        for pair in &self.overrides {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--set {pair:?}: must be KEY=VALUE, e.g. path_prefix=prod")
            })?;
            let key = key.trim();
            if breakglass_config::SECRET_KEYS.contains(&key) {
                eprintln!(
                    "breakglass: warning: {key} given on the command line is visible to other users of this machine; put it in the config file"
                );
            }
            raw.override_with(key, value.trim(), "--set")
                .map_err(|problem| anyhow::anyhow!("{problem}"))?;
        }
        Ok(Settings::from_raw(&raw)?)
    }

    fn destination(&self, settings: &Settings) -> anyhow::Result<AnyDestination> {
        let wanted = match self.from.as_deref() {
            Some("s3") => Some(StorageKind::S3),
            Some("blob") => Some(StorageKind::Blob),
            Some("local") => Some(StorageKind::Local),
            _ => None,
        };
        let index = match wanted {
            Some(kind) => settings
                .storage
                .iter()
                .position(|k| *k == kind)
                .with_context(|| {
                    format!(
                        "--from {}: storage_provider in {} does not name it",
                        self.from.as_deref().unwrap_or_default(),
                        self.config.display()
                    )
                })?,
            None => 0,
        };
        breakglass_storage::destinations(settings)
            .into_iter()
            .nth(index)
            .with_context(|| format!("{} names no destination", self.config.display()))
    }
}

impl KeyArgs {
    /// The key for a file protected as `encryption`; prompts only when
    /// nothing else gives a passphrase and a person is at the terminal.
    fn open_key(
        &self,
        encryption: &str,
        settings: Option<&Settings>,
        interactive: bool,
    ) -> anyhow::Result<OpenKey> {
        let mut key = OpenKey::default();
        match encryption {
            "password" => {
                key.passphrase = self.passphrase(settings, interactive)?;
            }
            "age" => {
                if let Some(path) = &self.identity {
                    key.identities = read_identity_file(path)?;
                }
            }
            _ => {}
        }
        Ok(key)
    }

    fn passphrase(
        &self,
        settings: Option<&Settings>,
        interactive: bool,
    ) -> anyhow::Result<Option<Secret>> {
        if let Some(path) = &self.passphrase_file {
            let text = breakglass_core::limits::read_text(
                path,
                breakglass_core::limits::MAX_SECRET_FILE_BYTES,
                "the passphrase file",
            )?;
            let first = text.lines().next().unwrap_or_default().to_owned();
            if first.is_empty() {
                anyhow::bail!("the passphrase file {} is empty", path.display());
            }
            return Ok(Some(Secret::new(first)));
        }
        if let Ok(value) = std::env::var("BREAKGLASS_PASSPHRASE")
            && !value.is_empty()
        {
            return Ok(Some(Secret::new(value)));
        }
        if let Some(Settings {
            encryption: Encryption::Password(Some(passphrase)),
            ..
        }) = settings
        {
            return Ok(Some(passphrase.clone()));
        }
        if interactive && std::io::stdin().is_terminal() {
            let typed = rpassword::prompt_password("break-glass passphrase: ")
                .context("reading the passphrase from the terminal")?;
            return Ok(Some(Secret::new(typed)));
        }
        Ok(None)
    }
}

/// `breakglass fetch`.
pub async fn fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let settings = args.reader.settings()?;
    let destination = args.reader.destination(&settings)?;
    let max_age = hours(args.max_age, "--max-age")?;
    let scratch;
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::Builder::new()
                .prefix("breakglass-fetch-")
                .tempdir()
                .context("cannot create a private temp folder")?;
            scratch.path().to_path_buf()
        }
    };
    eprintln!("breakglass fetch: reading {}", destination.describe());
    let fetched = fetch_latest(&destination, &dir, Some(max_age), chrono::Utc::now()).await?;
    let manifest = &fetched.manifest;
    eprintln!(
        "  newest: {} (run {}, collected {}, {} old)",
        fetched.object.name,
        manifest.run_id,
        manifest.created_at.to_rfc3339(),
        human(fetched.age)
    );
    eprintln!(
        "  verified: {} bytes, SHA-256 {} as its manifest records",
        manifest.size, manifest.sha256
    );
    for warning in &fetched.warnings {
        eprintln!("  warning: {warning}");
    }
    let key = args
        .reader
        .key
        .open_key(&manifest.encryption, Some(&settings), true)?;
    let plain = decrypt_fetched(&fetched, &key)?;
    if args.stdout_table {
        print_table(&plain)?;
        if args.out.is_some() && plain != fetched.stored {
            let _ = std::fs::remove_file(&plain);
        }
    } else {
        eprintln!("  stored copy: {}", fetched.stored.display());
        eprintln!("  manifest:    {}", fetched.manifest_path.display());
        if plain == fetched.stored {
            eprintln!("  warning: the backup is NOT encrypted (encryption: none)");
        } else {
            eprintln!("  decrypted:   {}", plain.display());
        }
        eprintln!(
            "  {} rows in {} projects; `breakglass show DEVICE --file {}` prints one device",
            manifest.rows,
            manifest.projects.len(),
            plain.display()
        );
    }
    Ok(if fetched.stale {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `breakglass verify`.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let manifest_path = args.manifest.clone().unwrap_or_else(|| {
        let mut name = args.file.as_os_str().to_owned();
        name.push(breakglass_storage::manifest::SIDECAR_SUFFIX);
        PathBuf::from(name)
    });
    let manifest = verify_file(&args.file, &manifest_path)?;
    outln!(
        "{}: OK — {} bytes, SHA-256 {}, run {} collected {}, {} rows in {} projects, encryption {}{}",
        args.file.display(),
        manifest.size,
        manifest.sha256,
        manifest.run_id,
        manifest.created_at.to_rfc3339(),
        manifest.rows,
        manifest.projects.len(),
        manifest.encryption,
        if manifest.key_id.is_empty() {
            String::new()
        } else {
            format!(" (key id {})", manifest.key_id)
        }
    )?;
    Ok(ExitCode::SUCCESS)
}

/// What a file on disk is, from its first bytes.
fn sniff(path: &Path) -> anyhow::Result<&'static str> {
    let mut head = [0u8; 32];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = std::io::Read::read(&mut file, &mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let head = &head[..n];
    Ok(if head.starts_with(b"PK\x03\x04") {
        "none"
    } else if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        "password"
    } else if head.starts_with(b"age-encryption.org/") {
        "age"
    } else {
        "unknown"
    })
}

/// `breakglass show`.
pub fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let kind = sniff(&args.file)?;
    let scratch = tempfile::Builder::new()
        .prefix("breakglass-show-")
        .tempdir()
        .context("cannot create a private temp folder")?;
    let workbook = match kind {
        "none" => args.file.clone(),
        "password" | "age" => {
            let key = args.key.open_key(kind, None, true)?;
            let out = scratch.path().join("workbook.xlsx");
            open_sealed(&args.file, &out, kind, "", &key)?;
            out
        }
        _ => anyhow::bail!(
            "{} is neither a workbook nor a breakglass-encrypted one",
            args.file.display()
        ),
    };
    let found = find_device(&workbook, &args.device)?;
    if found.is_empty() {
        eprintln!(
            "breakglass: no device name contains {:?} in {}",
            args.device,
            args.file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut out = std::io::stdout().lock();
    let mut escaped = false;
    for row in &found {
        escaped |= print_device(&mut out, row, args.raw).map_err(StdoutClosed)?;
    }
    if escaped {
        writeln!(
            out,
            "* escaped: the value holds control characters, shown as \\xHH or \\u{{H}} (one character each), \\t \\n \\r (tab, newline, CR) and \\\\ (one backslash); --raw prints values as stored"
        )
        .map_err(StdoutClosed)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one device; returns whether a value was shown escaped. An
/// escaped value's label gets a `*` (never the value itself, which the
/// reader copies).
fn print_device(out: &mut impl Write, row: &ReadRow, raw: bool) -> std::io::Result<bool> {
    let mut any = false;
    let mut shown = |value: &str| -> (String, bool) {
        if raw {
            return (value.to_owned(), false);
        }
        match for_terminal(value) {
            std::borrow::Cow::Borrowed(plain) => (plain.to_owned(), false),
            std::borrow::Cow::Owned(text) => {
                any = true;
                (text, true)
            }
        }
    };
    let (device, device_escaped) = shown(row.get("Device name"));
    let (sheet, sheet_escaped) = shown(&row.sheet);
    let note = if device_escaped || sheet_escaped {
        ", escaped*"
    } else {
        ""
    };
    writeln!(out, "{device}   (tab {sheet}{note})")?;
    let mut address_escaped = false;
    let addresses = [
        row.get("Public IP address"),
        row.get("Private IP address"),
        row.get("URL"),
    ]
    .into_iter()
    .filter(|a| !a.is_empty())
    .map(|a| {
        let (text, escaped) = shown(a);
        address_escaped |= escaped;
        text
    })
    .collect::<Vec<_>>()
    .join("  ");
    let mut lines = vec![("address", addresses, address_escaped)];
    for (label, value) in [
        ("protocol", row.get("Protocol")),
        ("port", row.get("Port")),
        ("account", row.get("Account")),
        ("password", row.get("Password")),
        ("pem file", row.get("PEM file name")),
        ("extra", row.get("Extra credential")),
    ] {
        let (text, escaped) = shown(value);
        lines.push((label, text, escaped));
    }
    lines.swap(0, 1); // protocol first, then the address, as before
    for (label, value, escaped) in lines {
        if !value.is_empty() {
            let label = if escaped {
                format!("{label}*")
            } else {
                label.to_owned()
            };
            writeln!(out, "  {label:<9} {value}")?;
        }
    }
    writeln!(out)?;
    Ok(any)
}

/// Every row as tab-separated text: cells escaped as PostgreSQL's `COPY`
/// text format does (so a row stays one line and no control character
/// reaches the terminal) and formula-looking cells marked with a leading
/// `'` (OWASP CSV injection), see `breakglass_retrieve::display`.
fn print_table(workbook: &Path) -> anyhow::Result<()> {
    eprintln!(
        "  table: tab-separated; \\t \\n \\r \\\\ \\xHH \\u{{H}} are escapes; a cell starting with = + - @ or ' got one leading ' (remove it for the value)"
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "Tab\t{}", breakglass_core::COLUMNS.join("\t")).map_err(StdoutClosed)?;
    let mut result = Ok(());
    for_each_row(workbook, |row| {
        if result.is_ok() {
            let cells: Vec<String> = row.cells.iter().map(|c| table_cell(c)).collect();
            result = writeln!(out, "{}\t{}", table_cell(&row.sheet), cells.join("\t"));
        }
    })?;
    result.map_err(StdoutClosed)?;
    out.flush().map_err(StdoutClosed)?;
    Ok(())
}

/// `breakglass drill`.
pub async fn drill(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let settings = args.reader.settings()?;
    let destination = args.reader.destination(&settings)?;
    let max_age = hours(args.max_age, "--max-age")?;
    // A drill runs unattended: no prompt. Every key it may need is loaded
    // up front; which one the file needs is known only after download.
    let mut key = args
        .reader
        .key
        .open_key("password", Some(&settings), false)?;
    key.identities = args.reader.key.open_key("age", None, false)?.identities;
    let database = match (args.record, &settings.database_url) {
        (false, _) => None,
        (true, Some(url)) => Some((url.clone(), settings.database_schema.clone())),
        (true, None) => anyhow::bail!(
            "--record writes to the run log: set database_url in {}",
            args.reader.config.display()
        ),
    };
    let report = run_drill(&destination, &key, max_age).await;
    if args.json {
        let steps: Vec<serde_json::Value> = report
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "step": s.name,
                    "status": match s.status {
                        StepStatus::Ok => "ok",
                        StepStatus::Failed => "failed",
                        StepStatus::Skipped => "skipped",
                    },
                    "detail": s.detail,
                    "seconds": s.seconds,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "destination": report.destination,
                "passed": report.passed(),
                "run_id": report.run_id,
                "created_at": report.created_at.map(|t| t.to_rfc3339()),
                "steps": steps,
            })
        )?;
    } else {
        outln!("breakglass drill: {}", report.destination)?;
        for step in &report.steps {
            let mark = match step.status {
                StepStatus::Ok => "ok     ",
                StepStatus::Failed => "FAILED ",
                StepStatus::Skipped => "skipped",
            };
            outln!(
                "  {mark} {:<20} {:>6.2} s  {}",
                step.name,
                step.seconds,
                step.detail
            )?;
        }
        outln!(
            "  {}",
            if report.passed() {
                "PASSED: the emergency path works"
            } else {
                "FAILED: the emergency path is broken; fix it before you need it"
            }
        )?;
    }
    // Recorded after the report is printed: a drill that passed is shown
    // as passed even when the run log cannot take the record (exit 3).
    if let Some((url, schema)) = database {
        let failed = report.steps.iter().find(|s| s.status == StepStatus::Failed);
        let record = breakglass_runlog::DrillRecord {
            at: chrono::Utc::now(),
            destination: report.destination.clone(),
            passed: report.passed(),
            failed_step: failed.map(|s| s.name.to_owned()).unwrap_or_default(),
            detail: failed
                .or(report.steps.last())
                .map(|s| s.detail.clone())
                .unwrap_or_default(),
            backup_run_id: report.run_id.clone().unwrap_or_default(),
            backup_created_at: report.created_at,
        };
        let recorded = async {
            breakglass_runlog::RunLog::connect_existing_with_ca(
                url.expose(),
                &schema,
                settings.ca_bundle.as_ref(),
            )
            .await?
            .record_drill(&record)
            .await
        }
        .await;
        if let Err(err) = recorded {
            eprintln!("breakglass: the drill result was not recorded in the run log: {err}");
            if report.passed() {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
