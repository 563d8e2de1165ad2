//! The scheduler's config API (`ConfigService`): the settings page's
//! `Get` / `Update` / `Validate` / `History`, stored in PostgreSQL with
//! secrets sealed under `settings_key`, and published to the services over
//! the NATS key-value bucket (see `breakglass_bus::settings_kv`).
//!
//! The mounted file wins when it holds settings-page keys (option 1): `Get`
//! shows it with source FILE and `Update` answers FAILED_PRECONDITION.
//! Validation errors come back as INVALID_ARGUMENT with one
//! `google.rpc.BadRequest` field violation per problem; values are shown
//! masked when secret. A secret sent back as the mask keeps its stored
//! value only while every field that decides where it is sent is unchanged
//! (`breakglass_config::mask`, the rule the uploader's Test applies too);
//! otherwise its violation asks for the secret again. Saving never starts a run: the schedule loop only
//! reads the new `execute_time` for its next slot.

use breakglass_bus::Bus;
use breakglass_config::source::{apply_update, is_secret_key};
use breakglass_config::{ApiSettings, Problem, Settings, SettingsSource, api_keys};
use breakglass_core::seal::SealKey;
use breakglass_core::secret::MASK;
use breakglass_proto::v1;
use breakglass_proto::v1::config_service_server::ConfigService;
use breakglass_runlog::RunLog;
use breakglass_runlog::settings_store::{
    Actor, SettingsChange, SettingsStore, SettingsStoreError, StoredSettings,
};
use breakglass_service::ConfigSource;
use std::collections::BTreeMap;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The metadata header naming the person behind a call, for the audit log.
pub const ACTOR_HEADER: &str = "x-breakglass-actor";

/// The `ConfigService`.
#[derive(Clone, Debug)]
pub struct ConfigApi {
    config: ConfigSource,
    log: watch::Receiver<Option<RunLog>>,
    key: Option<SealKey>,
    bus: Bus,
    bus_key: SealKey,
}

impl ConfigApi {
    /// Serves the settings of `config`'s file or, when it holds none, those
    /// stored in the run log's database (once `log` holds it) under `key`;
    /// publishes updates on `bus`, sealed under `bus_key`
    /// (`breakglass_bus::settings_kv::bus_settings_key`).
    pub fn new(
        config: ConfigSource,
        log: watch::Receiver<Option<RunLog>>,
        key: Option<SealKey>,
        bus: Bus,
        bus_key: SealKey,
    ) -> Self {
        Self {
            config,
            log,
            key,
            bus,
            bus_key,
        }
    }

    fn store(&self) -> Result<SettingsStore, Status> {
        let key = self.key.clone().ok_or_else(|| {
            Status::failed_precondition(
                "settings_key is not set in the scheduler's service secret: it encrypts the secret settings stored through this API (make one with `breakglass keygen --settings`)",
            )
        })?;
        let log = self.log.borrow().clone().ok_or_else(|| {
            Status::unavailable(
                "the settings database (PostgreSQL) is not connected yet; try again shortly",
            )
        })?;
        Ok(SettingsStore::new(log, key))
    }

    fn file(&self) -> Result<breakglass_config::RawConfig, Status> {
        self.config.raw_file().map_err(|err| {
            Status::failed_precondition(format!("the scheduler's config file is invalid: {err}"))
        })
    }

    /// Publishes the stored settings to the services when the bus holds an
    /// older version (or none), and applies them to this scheduler: heals a
    /// publish that failed, or a bucket that was lost. A version with a
    /// secret that does not open is not published (the services keep the
    /// one they have).
    pub async fn republish(&self) -> Result<(), Status> {
        let stored = self.store()?.current().await.map_err(store_status)?;
        if stored.settings.version == 0 {
            return Ok(());
        }
        if let Some((field, err)) = stored.unreadable.first() {
            return Err(Status::failed_precondition(format!(
                "version {} is not published: {field}: {err}",
                stored.settings.version
            )));
        }
        self.publish(&stored.settings).await
    }

    async fn publish(&self, settings: &ApiSettings) -> Result<(), Status> {
        // The scheduler applies its own update at once, bus or no bus.
        self.config.offer_api_settings(settings.clone());
        match self.bus.publish_settings(&self.bus_key, settings).await {
            Ok(published) if published.written => {
                tracing::info!(
                    version = settings.version,
                    "published settings to the services"
                );
                Ok(())
            }
            Ok(published) => match published.bus_version {
                Some(bus) if bus > settings.version => Err(Status::failed_precondition(format!(
                    "the services hold settings version {bus}, newer than the database's {} (was the database restored?): they keep it until a save, which is numbered above it",
                    settings.version
                ))),
                _ => Ok(()),
            },
            Err(err) => Err(Status::unavailable(format!(
                "cannot publish settings version {} to the services yet: {err}",
                settings.version
            ))),
        }
    }

    /// The newest version the services can see on the bus (0 for none).
    async fn bus_version(&self) -> u64 {
        match self.bus.published_settings(&self.bus_key).await {
            Ok(held) => held.map_or(0, |s| s.version),
            Err(_) => 0,
        }
    }

    /// Checks an update against the current settings: every problem, each
    /// with its field, at once.
    fn check(
        &self,
        current: &StoredSettings,
        fields: &BTreeMap<String, String>,
    ) -> Result<ApiSettings, Vec<Problem>> {
        // A stored secret that does not open cannot be kept with the mask:
        // it must be typed again (after a settings_key change).
        let mut problems = Vec::new();
        let mut fields = fields.clone();
        for (field, err) in &current.unreadable {
            if fields.get(field).is_some_and(|v| v == MASK) {
                fields.remove(field);
                problems.push(Problem {
                    location: None,
                    field: field.clone(),
                    shown_value: MASK.into(),
                    rule: format!("{err}"),
                });
            }
        }
        let (next, refused) = apply_update(&current.settings, &fields);
        problems.extend(refused);
        let wiring = self.file().map_err(|status| {
            vec![Problem {
                location: None,
                field: "config file".into(),
                shown_value: String::new(),
                rule: status.message().to_owned(),
            }]
        })?;
        let more = match Settings::from_raw(&next.over(&wiring)) {
            // What the services would refuse at start-up with a file.
            Ok(settings) => settings.services_problem().into_iter().collect(),
            Err(err) => err.problems,
        };
        // A field already refused is not reported twice.
        for problem in more {
            if !problems.iter().any(|p| p.field == problem.field) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(next)
        } else {
            Err(problems)
        }
    }
}

fn store_status(err: SettingsStoreError) -> Status {
    match err {
        SettingsStoreError::VersionMoved { .. } => Status::aborted(err.to_string()),
        SettingsStoreError::Seal(_) => {
            tracing::error!(error = %err, "stored settings cannot be opened");
            Status::failed_precondition(err.to_string())
        }
        err => {
            tracing::error!(error = %err, "a config API call failed");
            Status::unavailable(err.to_string())
        }
    }
}

fn invalid(problems: &[Problem]) -> Status {
    let mut details = ErrorDetails::new();
    for problem in problems {
        details.add_bad_request_violation(
            problem.field.clone(),
            format!("{:?}: {}", problem.shown_value, problem.rule),
        );
    }
    let summary = problems
        .iter()
        .map(|p| p.field.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid settings: {summary}"),
        details,
    )
}

fn to_problems(problems: &[Problem]) -> Vec<v1::FieldProblem> {
    problems
        .iter()
        .map(|p| v1::FieldProblem {
            field: p.field.clone(),
            description: format!("{:?}: {}", p.shown_value, p.rule),
        })
        .collect()
}

fn snapshot(
    source: v1::ConfigSource,
    version: u64,
    shown: impl Fn(&str) -> String,
    last: Option<&SettingsChange>,
) -> v1::ConfigSnapshot {
    v1::ConfigSnapshot {
        source: source as i32,
        version,
        fields: api_keys().map(|key| (key.to_owned(), shown(key))).collect(),
        secret_keys: api_keys()
            .filter(|key| is_secret_key(key))
            .map(str::to_owned)
            .collect(),
        updated_at_unix_ms: last.map_or(0, |c| c.at.timestamp_millis()),
        updated_by: last.map(|c| c.actor.clone()).unwrap_or_default(),
    }
}

/// Who called: the `x-breakglass-actor` header (printable, at most 128
/// characters), the peer address and, over mutual TLS, the client
/// certificate's fingerprint.
fn actor<T>(request: &Request<T>) -> Actor {
    let name = request
        .metadata()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if let Some(cert) = request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
    {
        use sha2::Digest as _;
        let fingerprint = hex::encode(sha2::Sha256::digest(cert.as_ref()));
        peer = format!("{peer} client-cert sha256:{fingerprint}");
    }
    Actor { name, peer }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get(
        &self,
        _request: Request<v1::GetConfigRequest>,
    ) -> Result<Response<v1::ConfigSnapshot>, Status> {
        let file = self.file()?;
        if SettingsSource::of(&file) == SettingsSource::File {
            return Ok(Response::new(snapshot(
                v1::ConfigSource::File,
                0,
                |key| {
                    file.get(key)
                        .map(|v| breakglass_config::file::show_value(key, &v.value))
                        .unwrap_or_default()
                },
                None,
            )));
        }
        let stored = self.store()?.current().await.map_err(store_status)?;
        for (field, err) in &stored.unreadable {
            tracing::error!(field = %field, error = %err, "a stored secret setting does not open");
        }
        Ok(Response::new(snapshot(
            v1::ConfigSource::Api,
            stored.settings.version,
            |key| {
                if stored.unreadable(key).is_some() {
                    MASK.into()
                } else {
                    stored.settings.shown(key)
                }
            },
            stored.last.as_ref(),
        )))
    }

    async fn update(
        &self,
        request: Request<v1::UpdateConfigRequest>,
    ) -> Result<Response<v1::ConfigSnapshot>, Status> {
        let who = actor(&request);
        if SettingsSource::of(&self.file()?) == SettingsSource::File {
            tracing::info!(actor = %who.name, "refused a settings update: the mounted file holds the settings");
            return Err(Status::failed_precondition(format!(
                "the settings come from the mounted config file{} (option 1), which wins: change that secret, or remove its settings-page keys to manage the settings here",
                self.config
                    .path()
                    .map(|p| format!(" {}", p.display()))
                    .unwrap_or_default()
            )));
        }
        let store = self.store()?;
        let current = store.current().await.map_err(store_status)?;
        let body = request.into_inner();
        let fields: BTreeMap<String, String> = body.fields.into_iter().collect();
        let next = self.check(&current, &fields).map_err(|problems| {
            tracing::info!(actor = %who.name, problems = problems.len(), "refused invalid settings");
            invalid(&problems)
        })?;
        let expected = body.expected_version.unwrap_or(current.settings.version);
        // A secret that no longer opens and is not typed again is dropped:
        // the audit row names it too.
        let mut changed = current.settings.changed_keys(&next);
        for (field, _) in &current.unreadable {
            if next.get(field).is_none() && !changed.contains(field) {
                changed.push(field.clone());
            }
        }
        changed.sort();
        let stored = store
            .update(expected, self.bus_version().await, &next, &changed, &who)
            .await
            .map_err(store_status)?;
        tracing::info!(
            actor = %who.name,
            peer = %who.peer,
            version = stored.version,
            changed = ?changed,
            "settings updated"
        );
        if let Err(status) = self.publish(&stored).await {
            // Saved and applied here; the services get it from the
            // periodic re-publish (`republish_periodically`).
            tracing::warn!(error = %status.message(), "settings saved; publishing to the services is retried");
        }
        let last = store
            .history(1)
            .await
            .map_err(store_status)?
            .into_iter()
            .next();
        Ok(Response::new(snapshot(
            v1::ConfigSource::Api,
            stored.version,
            |key| stored.shown(key),
            last.as_ref(),
        )))
    }

    async fn validate(
        &self,
        request: Request<v1::UpdateConfigRequest>,
    ) -> Result<Response<v1::ValidateConfigResponse>, Status> {
        // With option 1, masks stand for the file's secrets.
        let file = self.file()?;
        let current = match SettingsSource::of(&file) {
            SettingsSource::File => StoredSettings {
                settings: ApiSettings::from_file(&file),
                ..StoredSettings::default()
            },
            SettingsSource::Api => self.store()?.current().await.map_err(store_status)?,
        };
        let fields: BTreeMap<String, String> = request.into_inner().fields.into_iter().collect();
        let problems = match self.check(&current, &fields) {
            Ok(_) => Vec::new(),
            Err(problems) => to_problems(&problems),
        };
        Ok(Response::new(v1::ValidateConfigResponse { problems }))
    }

    async fn history(
        &self,
        request: Request<v1::ConfigHistoryRequest>,
    ) -> Result<Response<v1::ConfigHistoryResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => 20,
            n => n.min(500),
        };
        let changes = self
            .store()?
            .history(limit)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|c| v1::ConfigChange {
                version: c.version,
                at_unix_ms: c.at.timestamp_millis(),
                actor: c.actor,
                peer: c.peer,
                changed_fields: c.changed,
            })
            .collect();
        Ok(Response::new(v1::ConfigHistoryResponse { changes }))
    }
}

/// How often the stored settings are offered to the services again.
const REPUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Publishes the stored settings once the database is connected and every
/// [`REPUBLISH_EVERY`] after, so the services get them even when a publish
/// failed or the bucket is new. Each round costs one read of PostgreSQL and
/// one of the bucket, and writes only when the bus is behind. Without
/// `settings_key` there is nothing to publish.
pub async fn republish_periodically(
    api: ConfigApi,
    mut log: watch::Receiver<Option<RunLog>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if api.key.is_none() {
        return;
    }
    tokio::select! {
        _ = shutdown.cancelled() => return,
        connected = log.wait_for(Option::is_some) => if connected.is_err() { return },
    }
    let mut last_error = String::new();
    loop {
        match api.republish().await {
            Ok(()) => last_error.clear(),
            Err(status) => {
                if status.message() != last_error {
                    tracing::warn!(error = %status.message(), "cannot publish the stored settings to the services");
                    last_error = status.message().to_owned();
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REPUBLISH_EVERY) => {}
        }
    }
}
