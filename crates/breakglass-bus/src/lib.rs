//! The NATS JetStream wiring every service shares.
//!
//! # Layout
//! - [`subjects`]: subject, stream, consumer and bucket names, all derived
//!   from one prefix so several installations (or tests) share one NATS.
//! - [`Bus`]: connect, make sure the stream and object store exist, publish
//!   events with `Nats-Msg-Id` dedupe and trace headers.
//! - [`payload`]: large payloads (snapshots, workbooks) in the JetStream
//!   object store, age-encrypted; the snapshot record codec.
//! - [`envelope`]: the sealed / authenticated envelope around the events
//!   the services hand each other, under a key derived from `payload_key`.
//! - [`validate`]: the field rules every event passes before use.
//! - [`worker`]: the consume loop: durable pull consumer, explicit ack,
//!   in-progress acks while working, bounded redelivery, dead letters.
//!
//! Stage libraries (collect, render, storage) never see this crate; the
//! service binaries bind a stage to it.
#![warn(missing_docs)]

pub mod envelope;
pub mod error;
pub mod payload;
pub mod permissions;
mod pipe;
pub mod settings_kv;
pub mod subjects;
pub mod validate;
pub mod worker;

pub use error::BusError;
pub use subjects::Subjects;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use breakglass_core::seal::SealKey;
use breakglass_core::{RunId, Secret};
use std::time::Duration;

/// How long the stream remembers message ids for deduplication: one day, so
/// a trigger re-published hours later (or by a second scheduler replica)
/// still starts no second run.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How long events stay in the stream.
pub const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How the services use the bus.
#[derive(Clone, Debug)]
pub struct BusOptions {
    /// NATS URL(s), comma separated. A secret: it may carry a password
    /// (`nats://user:password@host`), so `Debug` of the options masks it.
    pub url: Secret,
    /// Subject prefix (`breakglass`).
    pub prefix: String,
    /// Redelivery after this long without an ack or progress.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Object-store payload lifetime.
    pub payload_ttl: Duration,
    /// Copies JetStream keeps of the stream, the payload store and the
    /// settings bucket (1; 3 or 5 on a cluster).
    pub replicas: usize,
    /// age identity that encrypts and decrypts payloads.
    pub payload_key: Option<Secret>,
    /// Extra trusted CAs (PEM) for `tls://` NATS URLs (`ca_bundle`); the
    /// system's roots when `None`.
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// A connected bus with its stream and object store in place.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    options: BusOptions,
    /// Seals and opens the services' events ([`envelope`]); `None` for a
    /// process without `payload_key` (it may publish triggers and read
    /// `run.finished` unverified, like the Mavis core).
    event_key: Option<SealKey>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects (failing fast when NATS is unreachable) and makes sure the
    /// stream exists.
    pub async fn connect(options: BusOptions) -> Result<Self, BusError> {
        let masked = || breakglass_core::secret::mask_url_credentials(options.url.expose());
        let target = connect_target(options.url.expose()).map_err(|reason| BusError::Connect {
            url: masked(),
            reason,
        })?;
        let mut connect = async_nats::ConnectOptions::new()
            .name("breakglass")
            .connection_timeout(Duration::from_secs(5));
        // async-nats ignores credentials in the URL: hand them over, and
        // take replies on this user's own inbox prefix (its permissions
        // allow no other).
        if let Some((user, password)) = target.credentials {
            connect = connect
                .custom_inbox_prefix(permissions::inbox_prefix(&user))
                .user_and_password(user, password.expose().to_owned());
        }
        // `tls://` requires TLS; a server that requires it gets it anyway.
        // Either way `ca_bundle` is the trust root when set.
        if target.tls {
            connect = connect.require_tls(true);
        }
        if let Some(ca) = &options.ca_bundle {
            connect = connect.add_root_certificates(ca.clone());
        }
        let client = tokio::time::timeout(Duration::from_secs(10), connect.connect(target.servers))
            .await
            .map_err(|_| BusError::Connect {
                url: masked(),
                reason: "timed out after 10s".into(),
            })?
            .map_err(|err| BusError::Connect {
                url: masked(),
                reason: err.to_string().replace(options.url.expose(), "<nats_url>"),
            })?;
        let jetstream = jetstream::new(client.clone());
        let subjects = Subjects::new(&options.prefix);
        let event_key = options.payload_key.as_ref().map(envelope::event_key);
        let bus = Self {
            client,
            jetstream,
            subjects,
            options,
            event_key,
        };
        bus.ensure_stream().await?;
        bus.ensure_consumers().await?;
        Ok(bus)
    }

    /// Names of this installation's subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The options the bus was connected with.
    pub fn options(&self) -> &BusOptions {
        &self.options
    }

    /// The core NATS client (for plain subscriptions, e.g. waiting for a
    /// run to finish).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        let stream = self
            .jetstream
            .get_or_create_stream(stream::Config {
                name: self.subjects.stream(),
                subjects: vec![self.subjects.all()],
                retention: stream::RetentionPolicy::Limits,
                max_age: EVENT_RETENTION,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                // Last-by-subject reads name the subject in the request
                // subject, so NATS permissions can scope them (the Mavis
                // core may read `run.finished.>` only).
                allow_direct: true,
                num_replicas: self.options.replicas,
                ..Default::default()
            })
            .await
            .map_err(|err| BusError::Setup {
                what: format!("stream {}", self.subjects.stream()),
                reason: err.to_string(),
            })?;
        // An existing stream keeps its replica count: say so rather than
        // have every service race to rescale it.
        let kept = stream.cached_info().config.num_replicas.max(1);
        if kept != self.options.replicas {
            tracing::warn!(
                stream = %self.subjects.stream(),
                kept,
                configured = self.options.replicas,
                "the stream keeps the replica count it was created with; rescale it with `nats stream edit {} --replicas {}`",
                self.subjects.stream(),
                self.options.replicas
            );
        }
        Ok(stream)
    }

    /// Publishes one event and waits for JetStream's ack. `msg_id` is the
    /// dedupe key. Returns true when the stream already had that id (the
    /// publish was a duplicate and no new message exists).
    pub async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        event: &impl prost::Message,
    ) -> Result<bool, BusError> {
        self.publish_bytes(subject, msg_id, event.encode_to_vec())
            .await
    }

    /// Publishes raw bytes; see [`Bus::publish`]. A `msg_id` that is not a
    /// valid header value (empty, over 256 bytes, or holding anything but
    /// visible ASCII: a CR/LF would make the NATS client panic) is refused
    /// before any header is built.
    pub async fn publish_bytes(
        &self,
        subject: &str,
        msg_id: &str,
        body: Vec<u8>,
    ) -> Result<bool, BusError> {
        if msg_id.is_empty() || msg_id.len() > 256 || !msg_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(BusError::Publish {
                subject: subject.into(),
                reason: format!(
                    "Nats-Msg-Id {} is not 1 to 256 visible ASCII characters",
                    validate::escaped(msg_id)
                ),
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        for (name, value) in breakglass_telemetry::inject_current() {
            headers.insert(name.as_str(), value.as_str());
        }
        let ack = self
            .jetstream
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .map_err(|err| BusError::Publish {
                subject: subject.into(),
                reason: err.to_string(),
            })?
            .await
            .map_err(|err| BusError::Publish {
                subject: subject.into(),
                reason: err.to_string(),
            })?;
        Ok(ack.duplicate)
    }

    /// Flushes pending publishes and closes the connection.
    pub async fn close(self) {
        let _ = self.client.flush().await;
        let _ = self.client.drain().await;
    }
}

/// Where and how to connect, from a `nats_url` list.
struct ConnectTarget {
    /// The server URLs without credentials.
    servers: Vec<async_nats::ServerAddr>,
    /// User and password of the first URL that has them.
    credentials: Option<(String, Secret)>,
    /// Any URL is `tls://`.
    tls: bool,
}

/// Splits `nats://user:password@host:port[,...]` into servers and
/// credentials (percent-decoded). Errors name the rule, never the password.
fn connect_target(urls: &str) -> Result<ConnectTarget, String> {
    let mut target = ConnectTarget {
        servers: Vec::new(),
        credentials: None,
        tls: false,
    };
    for (index, raw) in urls.split(',').map(str::trim).enumerate() {
        let mut url =
            url::Url::parse(raw).map_err(|err| format!("URL {} is not a URL: {err}", index + 1))?;
        if !matches!(url.scheme(), "nats" | "tls") {
            return Err(format!(
                "URL {} has scheme {:?}: use nats:// or tls://",
                index + 1,
                url.scheme()
            ));
        }
        target.tls |= url.scheme() == "tls";
        if !url.username().is_empty() && target.credentials.is_none() {
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .map(|t| t.into_owned())
                    .map_err(|_| format!("URL {}: the user or password is not UTF-8", index + 1))
            };
            let user = decode(url.username())?;
            let password = decode(url.password().unwrap_or(""))?;
            target.credentials = Some((user, Secret::new(password)));
        }
        // Dropping the credentials from the address cannot fail for nats:// and tls://.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let addr = url
            .as_str()
            .parse::<async_nats::ServerAddr>()
            .map_err(|err| format!("URL {} is not a NATS address: {err}", index + 1))?;
        target.servers.push(addr);
    }
    Ok(target)
}

/// The trace-context pairs carried by a received message's headers.
pub fn trace_headers(headers: Option<&HeaderMap>) -> Vec<(&str, &str)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    breakglass_telemetry::TRACE_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name).map(|value| (*name, value.as_str())))
        .collect()
}

/// The events the services hand each other, each with its subject,
/// `Nats-Msg-Id` and protection ([`envelope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `snapshot.ready`, sealed, `Nats-Msg-Id: snapshot-<run id>`.
    SnapshotReady,
    /// `workbook.ready`, sealed, `Nats-Msg-Id: workbook-<run id>`.
    WorkbookReady,
    /// `run.finished.<run id>`, authenticated, `Nats-Msg-Id: finished-<run id>`.
    RunFinished,
}

impl EventKind {
    /// How it is protected.
    pub fn mode(self) -> envelope::Mode {
        match self {
            EventKind::SnapshotReady | EventKind::WorkbookReady => envelope::Mode::Sealed,
            EventKind::RunFinished => envelope::Mode::Authenticated,
        }
    }

    /// The protobuf message inside.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SnapshotReady => "SnapshotReady",
            EventKind::WorkbookReady => "WorkbookReady",
            EventKind::RunFinished => "RunFinished",
        }
    }

    /// The subject an event of run `run_id` is published on.
    pub fn subject(self, subjects: &Subjects, run_id: &str) -> String {
        match self {
            EventKind::SnapshotReady => subjects.snapshot_ready(),
            EventKind::WorkbookReady => subjects.workbook_ready(),
            EventKind::RunFinished => subjects.run_finished(run_id),
        }
    }

    /// Its `Nats-Msg-Id`.
    pub fn msg_id(self, run_id: &str) -> String {
        let kind = match self {
            EventKind::SnapshotReady => "snapshot",
            EventKind::WorkbookReady => "workbook",
            EventKind::RunFinished => "finished",
        };
        format!("{kind}-{run_id}")
    }
}

/// An event whose envelope opened.
#[derive(Debug)]
pub struct Authentic<T> {
    /// The event.
    pub event: T,
    /// The run its envelope is bound to (the caller checks the event
    /// names the same run).
    pub run_id: RunId,
    /// When it was made.
    pub created_at_unix_ms: i64,
}

/// Whether [`Bus::open_event`] refuses events older than
/// [`envelope::MAX_EVENT_AGE`]: a stage acting on an event does; reading
/// the week of run history does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Age {
    /// Refuse stale events.
    MustBeFresh,
    /// Any age.
    Any,
}

fn rejected(subject: &str, reason: impl std::fmt::Display) -> BusError {
    BusError::Rejected {
        subject: validate::escaped(subject),
        reason: reason.to_string(),
    }
}

impl Bus {
    /// The `Nats-Msg-Id` of a received message, if any.
    pub fn msg_id(headers: Option<&HeaderMap>) -> Option<&str> {
        headers
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str())
    }

    /// Publishes `event` of run `run_id` as `kind`: in its envelope, on its
    /// subject, with its message id. Needs `payload_key`.
    pub async fn publish_event(
        &self,
        kind: EventKind,
        run_id: &RunId,
        event: &impl prost::Message,
    ) -> Result<bool, BusError> {
        let subject = kind.subject(&self.subjects, run_id.as_str());
        let Some(key) = &self.event_key else {
            return Err(BusError::Publish {
                subject,
                reason: "this process has no payload_key, which seals the services' events".into(),
            });
        };
        let msg_id = kind.msg_id(run_id.as_str());
        let sealed = envelope::seal(
            key,
            kind.mode(),
            envelope::Binding {
                subject: &subject,
                msg_id: &msg_id,
                run_id: run_id.as_str(),
            },
            worker::chrono_now_ms(),
            &event.encode_to_vec(),
        )
        .map_err(|err| BusError::Publish {
            subject: subject.clone(),
            reason: err.to_string(),
        })?;
        self.publish(&subject, &msg_id, &sealed).await
    }

    /// Opens a received event of `kind`: the envelope must parse, be bound
    /// to the subject and `Nats-Msg-Id` it arrived with, which must be the
    /// ones `kind` prescribes for the run it names, open under the event key
    /// and (with [`Age::MustBeFresh`]) not be stale; then the event must
    /// decode. Field rules are the caller's ([`validate`]).
    pub fn open_event<T: prost::Message + Default>(
        &self,
        kind: EventKind,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        age: Age,
    ) -> Result<Authentic<T>, BusError> {
        let Some(key) = &self.event_key else {
            return Err(rejected(
                subject,
                "this process has no payload_key to open the services' events",
            ));
        };
        let parsed = envelope::parse(payload).map_err(|err| rejected(subject, err))?;
        let run_id = validate::run_id("envelope.run_id", &parsed.run_id)
            .map_err(|err| rejected(subject, err))?;
        let expected_subject = kind.subject(&self.subjects, run_id.as_str());
        if subject != expected_subject {
            return Err(rejected(
                subject,
                format!(
                    "a {} of run {run_id} belongs on {expected_subject}",
                    kind.name()
                ),
            ));
        }
        let expected_id = kind.msg_id(run_id.as_str());
        let msg_id = Self::msg_id(headers).unwrap_or_default();
        if msg_id != expected_id {
            return Err(rejected(
                subject,
                format!(
                    "Nats-Msg-Id {} where {expected_id} is required",
                    validate::escaped(msg_id)
                ),
            ));
        }
        let opened = envelope::open(key, kind.mode(), subject, msg_id, &parsed)
            .map_err(|err| rejected(subject, err))?;
        if age == Age::MustBeFresh {
            envelope::check_fresh(opened.created_at_unix_ms, worker::chrono_now_ms())
                .map_err(|err| rejected(subject, err))?;
        }
        let event = T::decode(opened.event.as_slice()).map_err(|err| {
            rejected(
                subject,
                format!("the envelope opened but is not a {}: {err}", kind.name()),
            )
        })?;
        Ok(Authentic {
            event,
            run_id,
            created_at_unix_ms: opened.created_at_unix_ms,
        })
    }

    /// Reads a `run.finished` message: verified and validated when this
    /// process holds `payload_key`; without it (the Mavis core's position),
    /// the clear body of the authenticated envelope, still validated.
    pub fn read_run_finished(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<breakglass_proto::v1::RunFinished, BusError> {
        use prost::Message;
        let finished = if self.event_key.is_some() {
            let opened = self.open_event::<breakglass_proto::v1::RunFinished>(
                EventKind::RunFinished,
                subject,
                headers,
                payload,
                Age::Any,
            )?;
            if opened.event.run_id != opened.run_id.as_str() {
                return Err(rejected(
                    subject,
                    format!(
                        "the event names run {} but its envelope run {}",
                        validate::escaped(&opened.event.run_id),
                        opened.run_id
                    ),
                ));
            }
            opened.event
        } else {
            let parsed = envelope::parse(payload).map_err(|err| rejected(subject, err))?;
            let body = envelope::read_unverified(&parsed).map_err(|err| rejected(subject, err))?;
            breakglass_proto::v1::RunFinished::decode(body.as_slice())
                .map_err(|err| rejected(subject, err))?
        };
        validate::run_finished(&finished, worker::chrono_now_ms())
            .map_err(|err| rejected(subject, err))?;
        if subject != self.subjects.run_finished(&finished.run_id) {
            return Err(rejected(subject, "run.finished of another run"));
        }
        Ok(finished)
    }

    /// Publishes `dead` (what `stage` gave up on, stream sequence
    /// `stream_sequence`) in an authenticated envelope: any operator reads
    /// it, and the run log believes it only when the tag proves a service
    /// with `payload_key` wrote it, so whoever may publish on `dead.*`
    /// cannot mark a run failed in the log.
    pub async fn publish_dead_letter(
        &self,
        stream_sequence: u64,
        dead: &breakglass_proto::v1::DeadLetter,
    ) -> Result<bool, BusError> {
        use prost::Message;
        let subject = self.subjects.dead_letter(&dead.stage);
        let Some(key) = &self.event_key else {
            return Err(BusError::Publish {
                subject,
                reason: "this process has no payload_key, which authenticates dead letters".into(),
            });
        };
        let msg_id = format!("dead-{}-{stream_sequence}", dead.stage);
        let wrapped = envelope::seal(
            key,
            envelope::Mode::Authenticated,
            envelope::Binding {
                subject: &subject,
                msg_id: &msg_id,
                run_id: &dead.run_id,
            },
            worker::chrono_now_ms(),
            &dead.encode_to_vec(),
        )
        .map_err(|err| BusError::Publish {
            subject: subject.clone(),
            reason: err.to_string(),
        })?;
        self.publish(&subject, &msg_id, &wrapped).await
    }

    /// Opens a received dead letter: an authenticated envelope bound to the
    /// subject and `Nats-Msg-Id` it arrived with, fresh, whose event names
    /// the stage of its subject and the run of its envelope. The fields are
    /// then checked by [`validate::dead_letter`].
    pub fn open_dead_letter(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<breakglass_proto::v1::DeadLetter, BusError> {
        use prost::Message;
        let Some(key) = &self.event_key else {
            return Err(rejected(
                subject,
                "this process has no payload_key to verify dead letters",
            ));
        };
        let Some(stage) = subject.strip_prefix(&self.subjects.dead_letter("")) else {
            return Err(rejected(subject, "not a dead-letter subject"));
        };
        let msg_id = Self::msg_id(headers).unwrap_or_default();
        if !msg_id
            .strip_prefix(&format!("dead-{stage}-"))
            .is_some_and(|seq| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(rejected(
                subject,
                format!(
                    "Nats-Msg-Id {} where dead-{stage}-<stream sequence> is required",
                    validate::escaped(msg_id)
                ),
            ));
        }
        let parsed = envelope::parse(payload).map_err(|err| rejected(subject, err))?;
        let opened = envelope::open(key, envelope::Mode::Authenticated, subject, msg_id, &parsed)
            .map_err(|err| rejected(subject, err))?;
        envelope::check_fresh(opened.created_at_unix_ms, worker::chrono_now_ms())
            .map_err(|err| rejected(subject, err))?;
        let dead =
            breakglass_proto::v1::DeadLetter::decode(opened.event.as_slice()).map_err(|err| {
                rejected(
                    subject,
                    format!("the envelope opened but is not a DeadLetter: {err}"),
                )
            })?;
        if dead.stage != stage || dead.run_id != opened.run_id {
            return Err(rejected(
                subject,
                "the dead letter names another stage or run than its envelope",
            ));
        }
        Ok(dead)
    }

    /// The dead letter in a received message without checking its tag:
    /// what an operator without `payload_key` reads.
    pub fn read_dead_letter_unverified(
        payload: &[u8],
    ) -> Result<breakglass_proto::v1::DeadLetter, envelope::EnvelopeError> {
        use prost::Message;
        let parsed = envelope::parse(payload)?;
        let body = envelope::read_unverified(&parsed)?;
        breakglass_proto::v1::DeadLetter::decode(body.as_slice())
            .map_err(|err| envelope::EnvelopeError::Malformed(err.to_string()))
    }

    /// Publishes an on-demand trigger the way the Mavis core does: a plain
    /// `TriggerRequested` with `Nats-Msg-Id` = run id. Returns true when the
    /// run id was already in the stream's duplicate window (no second run
    /// starts). The trigger is validated first, as the collector will.
    pub async fn trigger(
        &self,
        trigger: &breakglass_proto::v1::TriggerRequested,
    ) -> Result<bool, BusError> {
        let subject = self.subjects().trigger();
        validate::trigger("", trigger, worker::chrono_now_ms()).map_err(|err| {
            BusError::Publish {
                subject: subject.clone(),
                reason: err.to_string(),
            }
        })?;
        self.publish(&subject, &trigger.run_id, trigger).await
    }

    /// Waits until run `run_id` has finished and returns its outcome, or
    /// `None` after `timeout`. Finds runs that finished before the call too.
    /// A message on the run's subject that is not a valid (with
    /// `payload_key`: authentic) outcome is skipped with a warning.
    pub async fn wait_for_run(
        &self,
        run_id: &str,
        timeout: Duration,
    ) -> Result<Option<breakglass_proto::v1::RunFinished>, BusError> {
        use futures::StreamExt;
        let run_id = validate::run_id("run_id", run_id).map_err(|err| BusError::Consume {
            consumer: "run.finished".into(),
            reason: err.to_string(),
        })?;
        let subject = self.subjects().run_finished(run_id.as_str());
        // Subscribe first, then look back: no window where the event is missed.
        let mut live = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|err| BusError::Consume {
                consumer: subject.clone(),
                reason: err.to_string(),
            })?;
        // The stream is looked at now and every few seconds: an outcome
        // published while this client reconnected (a NATS node went away,
        // the stream's leader moved) is not missed, and a lookup that fails
        // during a leader election is simply tried again.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(finished) = self.last_run_finished(&subject).await {
                return Ok(Some(finished));
            }
            let look_again = (tokio::time::Instant::now() + LOOK_BACK_EVERY).min(deadline);
            loop {
                match tokio::time::timeout_at(look_again, live.next()).await {
                    Ok(Some(message)) => {
                        match self.read_run_finished(
                            &message.subject,
                            message.headers.as_ref(),
                            &message.payload,
                        ) {
                            Ok(finished) => return Ok(Some(finished)),
                            Err(err) => {
                                tracing::warn!(error = %err, "ignoring a run.finished that does not check out")
                            }
                        }
                    }
                    Ok(None) => return Ok(None),
                    Err(_) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The stored `run.finished` on `subject` that checks out, if any; a
    /// lookup that fails (no leader yet, a reconnect) counts as none.
    async fn last_run_finished(&self, subject: &str) -> Option<breakglass_proto::v1::RunFinished> {
        let stream = match self.jetstream.get_stream(self.subjects().stream()).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "the stream cannot be read now; looking again shortly");
                return None;
            }
        };
        // A direct get names the subject in the request subject, which the
        // Mavis core's NATS user is allowed for `run.finished.>` only;
        // streams created before `allow_direct` answer the leader's get.
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let stored = match stream.direct_get_last_for_subject(subject.to_owned()).await {
            Ok(stored) => stored,
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => return None,
            Err(_) => stream.get_last_raw_message_by_subject(subject).await.ok()?,
        };
        match self.read_run_finished(&stored.subject, Some(&stored.headers), &stored.payload) {
            Ok(finished) => Some(finished),
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a run.finished that does not check out");
                None
            }
        }
    }
}

/// How often [`Bus::wait_for_run`] looks the outcome up in the stream
/// besides listening for it.
const LOOK_BACK_EVERY: Duration = Duration::from_secs(2);

impl Bus {
    /// Every run outcome the stream still holds (its retention is a week),
    /// oldest first. Feeds `breakglass status` and the uploader's
    /// last-success gauges after a restart. Outcomes that do not check out
    /// (with `payload_key`: that are not authentic) are left out.
    pub async fn recent_runs(&self) -> Result<Vec<breakglass_proto::v1::RunFinished>, BusError> {
        use futures::StreamExt;
        let setup = |err: &dyn std::fmt::Display| BusError::Setup {
            what: self.subjects().stream(),
            reason: err.to_string(),
        };
        let stream = self
            .jetstream
            .get_stream(self.subjects().stream())
            .await
            .map_err(|err| setup(&err))?;
        let mut subjects = stream
            .info_with_subjects(self.subjects().run_finished_all())
            .await
            .map_err(|err| setup(&err))?;
        let mut names = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.map_err(|err| setup(&err))?;
            names.push(subject);
        }
        let mut runs = Vec::new();
        for subject in names {
            let Ok(stored) = stream.get_last_raw_message_by_subject(&subject).await else {
                continue;
            };
            match self.read_run_finished(&stored.subject, Some(&stored.headers), &stored.payload) {
                Ok(run) => runs.push(run),
                Err(err) => {
                    tracing::warn!(error = %err, "leaving out a run outcome that does not check out")
                }
            }
        }
        runs.sort_by_key(|run| run.finished_at_unix_ms);
        Ok(runs)
    }
}
