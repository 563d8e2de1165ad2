//! `breakglass config get|set|validate|history`: the settings page's calls
//! from a terminal, against the scheduler's config API.
//!
//! `set` reads the current settings, changes the keys given and sends the
//! whole form back with the version it read, so a concurrent change is
//! refused rather than overwritten; secrets it did not touch travel as the
//! mask, which keeps them. A secret given as `KEY=-` is prompted for
//! without echo; a secret typed on the command line draws a warning.

use crate::grpc_client::{CallHeaders, GrpcArgs};
use breakglass_proto::v1;
use breakglass_proto::v1::config_service_client::ConfigServiceClient;
use std::collections::HashMap;
use std::process::ExitCode;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Flags of `config get|set|validate|history`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    grpc: GrpcArgs,
    /// Print JSON instead of `key: value` lines.
    #[arg(long)]
    json: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Every field (secrets masked), the source and the version.
    Get,
    /// Change the given fields (`KEY=VALUE`, `KEY=` unsets, `KEY=-` prompts).
    Set,
    /// Check the current settings with the given changes; store nothing.
    Validate,
    /// Who changed which fields, newest first.
    History,
}

type Client = ConfigServiceClient<InterceptedService<Channel, CallHeaders>>;

fn parse_changes(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut changes = Vec::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("{pair:?}: expected KEY=VALUE (KEY= unsets, KEY=- prompts)");
        };
        let key = key.trim().to_owned();
        let secret = breakglass_config::SECRET_KEYS.contains(&key.as_str());
        let value = if value == "-" {
            rpassword::prompt_password(format!("{key}: "))
                .map_err(|err| anyhow::anyhow!("cannot read {key} from the terminal: {err}"))?
        } else {
            if secret && !value.is_empty() {
                eprintln!(
                    "breakglass: warning: {key} given on the command line is visible to other users of this machine (ps, shell history); prefer {key}=- to be prompted"
                );
            }
            value.to_owned()
        };
        changes.push((key, value));
    }
    Ok(changes)
}

fn source_name(source: i32) -> &'static str {
    match v1::ConfigSource::try_from(source) {
        Ok(v1::ConfigSource::File) => "file",
        Ok(v1::ConfigSource::Api) => "api",
        _ => "unknown",
    }
}

fn print_snapshot(
    snapshot: &v1::ConfigSnapshot,
    json: bool,
) -> Result<(), crate::output::StdoutClosed> {
    let mut fields: Vec<_> = snapshot.fields.iter().collect();
    fields.sort();
    if json {
        let value = serde_json::json!({
            "source": source_name(snapshot.source),
            "version": snapshot.version,
            "updated_by": snapshot.updated_by,
            "updated_at_unix_ms": snapshot.updated_at_unix_ms,
            "fields": snapshot.fields.iter().collect::<std::collections::BTreeMap<_, _>>(),
        });
        outln!("{value:#}")?;
        return Ok(());
    }
    outln!("# source: {}", source_name(snapshot.source))?;
    if snapshot.version > 0 {
        outln!(
            "# version: {} (by {} at {})",
            snapshot.version,
            snapshot.updated_by,
            crate::runs::when(snapshot.updated_at_unix_ms)
        )?;
    }
    for (key, value) in fields {
        if !value.is_empty() {
            outln!("{key}: {value}")?;
        }
    }
    Ok(())
}

/// Prints an INVALID_ARGUMENT's field violations one per line, or the
/// status; returns the exit code.
fn report(status: tonic::Status) -> anyhow::Result<ExitCode> {
    if status.code() == tonic::Code::InvalidArgument
        && let Some(bad) = status.get_error_details().bad_request()
    {
        for violation in &bad.field_violations {
            eprintln!("{}: {}", violation.field, violation.description);
        }
        return Ok(ExitCode::FAILURE);
    }
    anyhow::bail!("{}: {}", status.code(), status.message())
}

/// Runs `config ACTION [KEY=VALUE...]`.
pub async fn run(action: Action, pairs: Vec<String>, args: Args) -> anyhow::Result<ExitCode> {
    if !pairs.is_empty() && matches!(action, Action::Get | Action::History) {
        anyhow::bail!("config get and config history take no KEY=VALUE arguments");
    }
    let changes = parse_changes(&pairs)?;
    let (channel, headers) = args.grpc.connect("scheduler's config API").await?;
    let mut client: Client = ConfigServiceClient::with_interceptor(channel, headers);
    match action {
        Action::Get => match client.get(v1::GetConfigRequest {}).await {
            Ok(snapshot) => {
                print_snapshot(snapshot.get_ref(), args.json)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(status) => report(status),
        },
        Action::History => {
            let history = match client.history(v1::ConfigHistoryRequest { limit: 20 }).await {
                Ok(history) => history.into_inner(),
                Err(status) => return report(status),
            };
            for change in history.changes {
                outln!(
                    "version {} at {} by {} from {}: {}",
                    change.version,
                    crate::runs::when(change.at_unix_ms),
                    change.actor,
                    change.peer,
                    change.changed_fields.join(", ")
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Set | Action::Validate => {
            let current = match client.get(v1::GetConfigRequest {}).await {
                Ok(snapshot) => snapshot.into_inner(),
                Err(status) => return report(status),
            };
            let mut fields: HashMap<String, String> = current
                .fields
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect();
            for (key, value) in changes {
                fields.insert(key, value);
            }
            let request = v1::UpdateConfigRequest {
                fields,
                expected_version: Some(current.version),
            };
            if action == Action::Validate {
                let problems = match client.validate(request).await {
                    Ok(reply) => reply.into_inner().problems,
                    Err(status) => return report(status),
                };
                for problem in &problems {
                    eprintln!("{}: {}", problem.field, problem.description);
                }
                if problems.is_empty() {
                    outln!("settings are valid")?;
                    return Ok(ExitCode::SUCCESS);
                }
                return Ok(ExitCode::FAILURE);
            }
            match client.update(request).await {
                Ok(snapshot) => {
                    print_snapshot(snapshot.get_ref(), args.json)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(status) => report(status),
            }
        }
    }
}
