//! `breakglass`: the command an admin or an on-call person types.
//!
//! - `run-once`: the whole job in this process, no servers needed.
//! - `trigger`: ask the running services for a run, as the Mavis core does.
//! - `status`: how fresh the copy in each destination is.
//! - `generate`: a synthetic inventory for benchmarks.
//! - `keygen`: a payload key (or `--settings`: a settings key) for the
//!   services' config.
//! - `config check`: validate a config file offline; `config secret`:
//!   build one (or a Kubernetes Secret manifest) from flags or prompts;
//!   `config get|set|validate|history`: the scheduler's config API.
//! - `fetch`, `verify`, `show`, `drill`: the emergency path (docs/RUNBOOK.md).
//! - `runs`: the run history from the scheduler's gRPC API.
//! - `test`: the destination Test, stage by stage (exit 1 when one failed).
//!
//! Errors print as one line on stderr and exit non-zero. A reader that
//! closes standard output early (`| head`) ends the command quietly with
//! exit code 141 (see `output`).

/// mimalloc: collecting, sorting and rendering make millions of small
/// allocations; glibc's malloc and free were a fifth of the main thread's
/// time at 1M rows (issue #13, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[macro_use]
mod output;

mod bus_args;
mod config_api;
mod config_secret;
mod grpc_client;
mod progress;
mod retrieve;
mod run_once;
mod runs;
mod status;
mod test_destination;
mod trigger;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The emergency-access backup of Mavis: snapshot every device's logins
/// into one workbook and keep the latest copy safe.
#[derive(Debug, Parser)]
#[command(name = "breakglass", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Collect, render and store one workbook in this process (no NATS, no
    /// PostgreSQL). Defaults: the bundled sample inventory, ./breakglass-out/.
    RunOnce(run_once::Args),
    /// Publish an on-demand trigger to the running services, optionally
    /// waiting for the run to finish.
    Trigger(trigger::Args),
    /// Per destination: the newest verified copy, the last failure; exits 1
    /// when a copy is older than --max-age hours (a cron or monitoring check).
    Status(status::Args),
    /// Write a synthetic inventory CSV (deterministic) for benchmarks.
    Generate {
        /// Rows to write.
        #[arg(long)]
        rows: u64,
        /// Projects to spread them over.
        #[arg(long, default_value_t = 1000)]
        projects: u64,
        /// Seed; the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new payload key (an age X25519 identity) for the services'
    /// `payload_key` setting, or with `--settings` a `settings_key`, into a
    /// new private file (`--out`) or a pipe; never onto the terminal.
    Keygen(KeygenArgs),
    /// Print the `authorization` block of a nats-server configuration: one
    /// user per service and the Mavis core, each allowed only the subjects
    /// its work needs (docs/KUBERNETES.md, "NATS users"). Passwords are
    /// `$BREAKGLASS_NATS_PASSWORD_<USER>` variables the server resolves
    /// from its environment.
    NatsConfig {
        /// The services' `bus_prefix`.
        #[arg(long, default_value = "breakglass")]
        prefix: String,
    },
    /// Emergency: download the newest backup with the break-glass (read)
    /// credential, verify it against its manifest and decrypt it.
    Fetch(retrieve::FetchArgs),
    /// Check a downloaded file against its manifest (size and SHA-256).
    Verify(retrieve::VerifyArgs),
    /// Print one device's login from a fetched workbook, for quick copy.
    Show(retrieve::ShowArgs),
    /// Rehearse the emergency path: list, download, verify, decrypt and
    /// count rows against the manifest; exits 1 when any step fails.
    Drill(retrieve::DrillArgs),
    /// The run history from the scheduler's gRPC API: list (default),
    /// `show ID`, `watch ID`, `trigger`.
    Runs(runs::Args),
    /// Test every destination of a config file stage by stage
    /// (connection, authentication, bucket/container, upload, least
    /// privilege, retention); exits 1 when a stage failed.
    Test(test_destination::Args),
    /// Configuration file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// Flags of `keygen`.
#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Make the scheduler's `settings_key` (32 random bytes, base64),
    /// which seals secret settings stored through the config API.
    #[arg(long)]
    settings: bool,
    /// Write the key to this new file, mode 0600 (else standard output,
    /// which must not be a terminal).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace FILE when it exists (the key in it is then lost).
    #[arg(long, requires = "out")]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a `key: value` file and print every problem at once.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Build the `key: value` file from flags, the environment or prompts,
    /// validated, as the plain file or a Kubernetes Secret manifest.
    Secret(config_secret::Args),
    /// Every settings field from the scheduler's config API (the settings
    /// page), secrets masked, with the source (file or api) and version.
    Get(config_api::Args),
    /// Change settings through the config API: KEY=VALUE, KEY= (unset),
    /// KEY=- (prompt without echo). Refused when the mounted file holds the
    /// settings.
    Set {
        /// The changes.
        #[arg(required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        args: config_api::Args,
    },
    /// Check the current settings with the given changes; nothing is
    /// stored. Exit 1 with one line per problem.
    Validate {
        /// The changes (none: check the stored settings as they are).
        pairs: Vec<String>,
        #[command(flatten)]
        args: config_api::Args,
    },
    /// Who changed which settings through the API, newest first.
    History(config_api::Args),
    /// Every key of the file: where it may come from, what it means, its
    /// default (the table of docs/CONFIGURATION.md, in Markdown).
    Keys,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("breakglass: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::RunOnce(args) => run_once::run(args).await,
            Command::Trigger(args) => trigger::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Fetch(args) => retrieve::fetch(args).await,
            Command::Verify(args) => retrieve::verify(args),
            Command::Show(args) => retrieve::show(args),
            Command::Drill(args) => retrieve::drill(args).await,
            Command::Test(args) => test_destination::run(args).await,
            Command::Runs(args) => runs::run(args).await,
            Command::Generate {
                rows,
                projects,
                seed,
                out,
            } => generate(rows, projects, seed, &out),
            Command::Keygen(args) => keygen(&args),
            Command::NatsConfig { prefix } => {
                use breakglass_bus::permissions::{Role, User, authorization_block};
                // The same rule as the services' bus_prefix setting.
                let raw = breakglass_config::RawConfig::parse(
                    &format!("bus_prefix: {prefix}\n"),
                    "--prefix",
                )?;
                let prefix = breakglass_config::Settings::from_raw(&raw)?.bus_prefix;
                let users: Vec<User> = Role::ALL.into_iter().map(User::from_env).collect();
                print!("{}", authorization_block(&prefix, &users));
                Ok(ExitCode::SUCCESS)
            }
            Command::Config {
                command: ConfigCommand::Check { file },
            } => config_check(&file),
            Command::Config {
                command: ConfigCommand::Secret(args),
            } => config_secret::run(args),
            Command::Config {
                command: ConfigCommand::Get(args),
            } => config_api::run(config_api::Action::Get, Vec::new(), args).await,
            Command::Config {
                command: ConfigCommand::Set { pairs, args },
            } => config_api::run(config_api::Action::Set, pairs, args).await,
            Command::Config {
                command: ConfigCommand::Validate { pairs, args },
            } => config_api::run(config_api::Action::Validate, pairs, args).await,
            Command::Config {
                command: ConfigCommand::History(args),
            } => config_api::run(config_api::Action::History, Vec::new(), args).await,
            Command::Config {
                command: ConfigCommand::Keys,
            } => {
                outln!("{}", breakglass_config::keys::markdown_table().trim_end())?;
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): nothing to say, like `cat`.
        Err(err) if output::is_closed_stdout(&err) => ExitCode::from(output::CLOSED_EXIT),
        Err(err) => {
            eprintln!(
                "breakglass: {}",
                format!("{err:#}").replace('\n', "\nbreakglass: ")
            );
            ExitCode::FAILURE
        }
    }
}

/// `breakglass keygen`: the key into a new `0600` file, or into a pipe
/// (`breakglass keygen > file`, `| kubectl create secret …`); a key is
/// never printed onto a terminal, where scroll-back and screen sharing
/// keep it.
fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use std::io::{IsTerminal, Write};
    // Held as a Secret: wiped from memory when dropped.
    let text = breakglass_core::Secret::new(if args.settings {
        let secret = breakglass_core::seal::SealKey::generate();
        let key = breakglass_core::seal::SealKey::parse(&secret)?;
        format!(
            "# key id: {}\nsettings_key: {}\n",
            key.id(),
            secret.expose()
        )
    } else {
        let secret = breakglass_bus::payload::PayloadKey::generate();
        let key = breakglass_bus::payload::PayloadKey::parse(&secret)?;
        format!(
            "# public key: {}\npayload_key: {}\n",
            key.public(),
            secret.expose()
        )
    });
    let Some(path) = &args.out else {
        if std::io::stdout().is_terminal() {
            anyhow::bail!(
                "not printing a key to the terminal: give --out FILE (written with mode 0600), or redirect the output"
            );
        }
        out!("{}", text.expose())?;
        return Ok(ExitCode::SUCCESS);
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    // A temp file (0600) beside the target, renamed into place: the key is
    // never in a file others can read, and never half written.
    let mut temp = tempfile::Builder::new()
        .prefix(".breakglass-key-")
        .tempfile_in(dir)
        .with_context(|| format!("--out {}: cannot write in its folder", path.display()))?;
    temp.write_all(text.expose().as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("--out {}: cannot write", path.display()))?;
    if args.force {
        temp.persist(path)
            .map_err(|err| err.error)
            .with_context(|| format!("--out {}: cannot write", path.display()))?;
    } else {
        temp.persist_noclobber(path).map_err(|err| {
            if err.error.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "--out {}: the file exists and may hold the key in use; choose another name or add --force to replace it",
                    path.display()
                )
            } else {
                anyhow::anyhow!("--out {}: cannot write: {}", path.display(), err.error)
            }
        })?;
    }
    eprintln!(
        "wrote {} (mode 0600); it holds a secret key: keep it out of version control",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn generate(
    rows: u64,
    projects: u64,
    seed: u64,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    breakglass_collect::synthetic::write_csv(
        std::io::BufWriter::with_capacity(1 << 20, file),
        rows,
        projects,
        seed,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {rows} rows over {projects} projects to {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn config_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let result = breakglass_config::RawConfig::from_file(file)
        .and_then(|raw| breakglass_config::Settings::from_raw(&raw));
    match result {
        Ok(_) => {
            outln!("{}: ok", file.display())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            for problem in &err.problems {
                eprintln!("{problem}");
            }
            eprintln!("{} problem(s) found", err.problems.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
