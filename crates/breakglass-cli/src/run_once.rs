//! `breakglass run-once`: collect → render → store in one process.
//!
//! The same stage libraries the services use, bound directly instead of
//! over NATS: no NATS, no PostgreSQL. Defaults: the bundled sample
//! inventory and `./breakglass-out/`. Nothing reaches the destination
//! unless the whole workbook was written and verified.

use crate::progress::Progress;
use anyhow::Context;
use breakglass_collect::{AnySource, Source};
use breakglass_config::{Encryption, RawConfig, Settings};
use breakglass_core::RunId;
use breakglass_render::{EXCEL_MAX_DATA_ROWS, RenderOptions};
use breakglass_storage::Upload;
use breakglass_storage::deliver::{self, RetryBudget};
use breakglass_storage::manifest::ProjectRows;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The prefix of run-once's working folders in the temp dir.
const WORK_DIR_PREFIX: &str = "breakglass-run-once-";

/// Flags of `run-once`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `key: value` config file (the same keys as the K3s secret).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The inventory: a `.csv` file or a SQLite database (overrides
    /// `inventory_url`). Default: the bundled sample.
    #[arg(long)]
    inventory: Option<String>,
    /// Folder for the workbook (overrides `local_dir`). Default:
    /// ./breakglass-out
    #[arg(long)]
    out: Option<PathBuf>,
    /// How to protect the stored file (overrides `encryption`): `password`
    /// (the default; a strong passphrase is made and shown once when none is
    /// configured), `age` (to `age_recipients`) or `none`.
    #[arg(long, value_parser = ["password", "age", "none"])]
    encryption: Option<String>,
}

/// Runs the job once and reports what it did: collect and sort, render
/// and seal in a private working folder, store everywhere, report.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let _telemetry =
        breakglass_telemetry::init_with_default("breakglass-cli", tracing::Level::WARN)?;
    let settings = settings(&args)?;
    let run_id = RunId::generate();
    let source = AnySource::for_settings(&settings);
    // Made ready first: with a passphrase, its two fixed-cost hashes run on
    // the idle core while the inventory is read on the other.
    let (sealer, generated) = sealer_for(&settings.encryption);
    let (progress, display) = Progress::start();

    let inventory = source
        .collect(&progress.collected)
        .await
        .context("collecting the inventory failed")?;
    let collected_at = chrono::Utc::now();
    progress.sorting();
    let sorted = inventory
        .into_sorted_stream()
        .context("sorting the inventory failed")?;
    let collect_warnings = sorted.warnings.clone();
    let collect_warning_count = sorted.warning_count;
    progress.writing(sorted.rows);

    let temp = private_work_dir()?;
    let options = RenderOptions {
        run_id: run_id.to_string(),
        generated_at: collected_at,
        source: source.describe(),
        temp_dir: temp.path().to_path_buf(),
        max_rows_per_sheet: EXCEL_MAX_DATA_ROWS,
    };
    let mut workbook = render_and_seal(sorted, options, sealer, generated, &progress).await?;
    let delivery =
        store_everywhere(&settings, &mut workbook, &run_id, collected_at, temp.path()).await?;
    progress.done();
    if let Some(display) = display {
        let _ = display.await;
    }

    outln!(
        "breakglass run-once: {} rows in {} projects from {}",
        workbook.report.rows,
        workbook.report.projects.len(),
        source.describe()
    )?;
    let failures = print_stored(&delivery)?;
    print_protection(
        workbook.generated.as_ref(),
        workbook.sealed.sealed.encryption,
        &workbook.sealed.sealed.key_id,
    )?;
    print_warnings(
        collect_warnings.iter().chain(&workbook.report.warnings),
        collect_warning_count + workbook.report.warning_count,
    );
    outln!(
        "  run {run_id} took {:.2} s",
        started.elapsed().as_secs_f64()
    )?;
    if delivery.status == deliver::Status::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        for failure in &failures {
            eprintln!("breakglass: {failure}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Stores the sealed workbook in every configured destination through
/// the one delivery function the uploader uses too.
async fn store_everywhere(
    settings: &Settings,
    workbook: &mut RenderedWorkbook,
    run_id: &RunId,
    collected_at: chrono::DateTime<chrono::Utc>,
    temp: &std::path::Path,
) -> anyhow::Result<deliver::Delivery> {
    // The sealed file is unnamed; this path opens it while it is open.
    let stored_file = breakglass_render::encrypt::reopenable_path(&mut workbook.sealed.file, temp)
        .context("reading the workbook back")?;
    let projects: Vec<ProjectRows> = workbook
        .report
        .projects
        .iter()
        .map(|p| ProjectRows {
            project: p.project.clone(),
            sheets: p.sheets.clone(),
            rows: p.rows,
        })
        .collect();
    let upload = Upload {
        file: &stored_file,
        size: workbook.sealed.size,
        sha256: &workbook.sealed.sha256,
        run_id: run_id.as_str(),
        created_at: collected_at,
        extension: workbook.sealed.sealed.extension,
        encryption: workbook.sealed.sealed.encryption,
        key_id: &workbook.sealed.sealed.key_id,
        projects: &projects,
    };
    let destinations = breakglass_storage::destinations(settings);
    Ok(deliver::store_all(
        &destinations,
        &upload,
        RetryBudget::new(settings.upload_retry_budget),
    )
    .await)
}

/// A new private working folder; first removes those a killed run-once
/// left (whatever their age, when no live run-once holds them), and on
/// Ctrl-C removes this one and stops: the working files are unnamed or
/// encrypted, so nothing readable is left either way.
fn private_work_dir() -> anyhow::Result<breakglass_render::workdir::WorkDir> {
    breakglass_render::workdir::sweep_orphans(&[WORK_DIR_PREFIX]);
    let temp = breakglass_render::workdir::WorkDir::create(WORK_DIR_PREFIX)
        .context("cannot create a private temp directory")?;
    let cleanup = temp.path().to_path_buf();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = std::fs::remove_dir_all(&cleanup);
            eprintln!(
                "breakglass: interrupted; nothing was stored and the working files are removed"
            );
            std::process::exit(130);
        }
    });
    Ok(temp)
}

/// The rendered and sealed workbook of this run.
struct RenderedWorkbook {
    report: breakglass_render::RenderReport,
    sealed: breakglass_render::encrypt::SealedWorkbook,
    /// The passphrase made for this run when `encryption: password` has
    /// none configured; shown once in the report.
    generated: Option<breakglass_core::Secret>,
}

/// The sealer of this run, hashing ahead: a strong passphrase is made
/// when `encryption: password` has none configured (handed back to be
/// shown once).
fn sealer_for(
    encryption: &Encryption,
) -> (
    breakglass_render::encrypt::Sealer,
    Option<breakglass_core::Secret>,
) {
    let mut encryption = encryption.clone();
    let mut generated = None;
    if encryption == Encryption::Password(None) {
        let passphrase = breakglass_render::encrypt::generate_passphrase();
        generated = Some(passphrase.clone());
        encryption = Encryption::Password(Some(passphrase));
    }
    (
        breakglass_render::encrypt::Sealer::new(encryption),
        generated,
    )
}

/// Writes the workbook (an unnamed file: it never has a name another
/// process could open, and vanishes with this process whatever happens)
/// and protects it with `sealer` before it goes anywhere.
async fn render_and_seal(
    sorted: breakglass_core::SortedRows,
    options: RenderOptions,
    sealer: breakglass_render::encrypt::Sealer,
    generated: Option<breakglass_core::Secret>,
    progress: &Progress,
) -> anyhow::Result<RenderedWorkbook> {
    let dir = options.temp_dir.clone();
    let progress = progress.clone();
    let (report, plain) = tokio::task::spawn_blocking(move || {
        breakglass_render::render_stream(sorted, options, || progress.row_written())
    })
    .await
    .context("the render task failed")?
    .context("writing the workbook failed")?;
    let sealed = tokio::task::spawn_blocking(move || sealer.seal_and_hash(plain, &dir))
        .await
        .context("the encryption task failed")??;
    Ok(RenderedWorkbook {
        report,
        sealed,
        generated,
    })
}

/// Prints each stored copy; hands back the failures, one sentence each.
fn print_stored(delivery: &deliver::Delivery) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    if delivery.outcomes.is_empty() {
        failures.push(delivery.error.clone());
    }
    for outcome in &delivery.outcomes {
        match &outcome.result {
            Ok(receipt) => outln!(
                "  stored {} ({} bytes, sha256 {})",
                receipt.location,
                receipt.size,
                receipt.sha256
            )?,
            Err(err) => failures.push(err.to_string()),
        }
    }
    Ok(failures)
}

/// Says how the stored file is protected; a passphrase made for this run
/// is shown here once and nowhere else (not logged, not stored).
fn print_protection(
    generated: Option<&breakglass_core::Secret>,
    encryption: &str,
    key_id: &str,
) -> anyhow::Result<()> {
    match (generated, encryption) {
        (Some(passphrase), _) => {
            outln!(
                "  encrypted with a new passphrase, shown only now: {}",
                passphrase.expose()
            )?;
            outln!(
                "  store it in your password manager; set encryption_passphrase to keep one for every run"
            )?;
        }
        (None, "password") => outln!("  encrypted with the configured passphrase")?,
        (None, "age") => outln!("  encrypted with age to {key_id}")?,
        _ => eprintln!("  warning: the workbook is stored UNENCRYPTED (encryption: none)"),
    }
    Ok(())
}

/// Lists the first 20 warnings of the run on stderr, and how many more the
/// workbook's Summary tab holds.
fn print_warnings<'a>(warnings: impl Iterator<Item = &'a breakglass_core::RowWarning>, count: u64) {
    for warning in warnings.take(20) {
        if warning.project.is_empty() && warning.device.is_empty() {
            // A warning about the run itself (e.g. inventory_url's TLS).
            eprintln!("  warning: {}: {}", warning.field, warning.message);
        } else {
            eprintln!(
                "  warning: project {:?}, device {:?}, {}: {}",
                warning.project, warning.device, warning.field, warning.message
            );
        }
    }
    if count > 20 {
        eprintln!(
            "  ... and {} more warnings (all listed on the workbook's Summary tab)",
            count - 20
        );
    }
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::new(),
    };
    if let Some(inventory) = &args.inventory {
        raw.override_with("inventory_url", inventory, "--inventory")
            .map_err(|problem| anyhow::anyhow!("{problem}"))?;
    }
    if let Some(encryption) = &args.encryption {
        raw.override_with("encryption", encryption, "--encryption")
            .map_err(|problem| anyhow::anyhow!("{problem}"))?;
    }
    if let Some(out) = &args.out {
        raw.override_with("local_dir", &out.display().to_string(), "--out")
            .map_err(|problem| anyhow::anyhow!("{problem}"))?;
    }
    Ok(Settings::from_raw(&raw)?)
}
