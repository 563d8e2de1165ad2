//! Large payloads in the JetStream object store, encrypted.
//!
//! Snapshots and workbooks never ride in a message (DESIGN.md: over 1 MiB
//! never, and they hold passwords always). A payload is age-encrypted to the
//! services' X25519 key ([`PayloadKey`]) while it is written, straight into
//! the object store through a bounded pipe ([`Bus::store_payload_with`]:
//! no temp file), stored under the run id with the bucket's TTL, and
//! referenced from the event by name, size and SHA-256 of the stored bytes.
//! The reader decrypts and consumes it while it arrives
//! ([`Bus::read_payload`]) and sees its end only once size and hash
//! matched. No plaintext payload ever reaches NATS or a shared disk
//! location.

pub use crate::pipe::PayloadReader;
use crate::{Bus, BusError, pipe};
use async_nats::jetstream::object_store::{self, ObjectStore};
use breakglass_core::{DeviceRow, Secret, SortedItem};
use breakglass_proto::v1;
use prost::Message;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

/// The services' payload key: an age X25519 identity. Payloads are
/// encrypted to its public half and decrypted with it.
#[derive(Clone)]
pub struct PayloadKey {
    identity: age::x25519::Identity,
}

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayloadKey({})", self.identity.to_public())
    }
}

impl PayloadKey {
    /// Parses an `AGE-SECRET-KEY-1...` identity.
    pub fn parse(secret: &Secret) -> Result<Self, BusError> {
        age::x25519::Identity::from_str(secret.expose().trim())
            .map(|identity| Self { identity })
            .map_err(|_| BusError::Payload {
                name: "payload_key".into(),
                reason: "payload_key is not a valid age X25519 identity (AGE-SECRET-KEY-1...)"
                    .into(),
            })
    }

    /// A fresh key, as the secret text to put in the service config.
    pub fn generate() -> Secret {
        use age::secrecy::ExposeSecret;
        Secret::new(
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
                .to_owned(),
        )
    }

    /// The public key (`age1...`), safe to log: it identifies the key.
    pub fn public(&self) -> String {
        self.identity.to_public().to_string()
    }

    /// Creates `dest` (mode 0600), lets `fill` write plaintext into it
    /// through the age encryptor, and finishes the age stream.
    pub fn encrypt_to_file(
        &self,
        dest: &Path,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let file = private_create(dest)?;
        let recipient = self.identity.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(std::io::Error::other)?;
        let mut writer = encryptor.wrap_output(std::io::BufWriter::with_capacity(1 << 16, file))?;
        fill(&mut writer)?;
        let mut inner = writer.finish()?;
        inner.flush()?;
        inner.get_ref().sync_all()
    }

    /// Opens an encrypted file for reading its plaintext.
    pub fn decrypt_file(&self, src: &Path) -> std::io::Result<impl Read + use<>> {
        self.decrypt(std::fs::File::open(src)?)
    }

    /// Reads the plaintext of an encrypted stream (a file, or a payload
    /// being fetched: [`Bus::read_payload`]).
    pub fn decrypt<R: Read>(&self, encrypted: R) -> std::io::Result<impl Read + use<R>> {
        let buffered = BufReader::with_capacity(1 << 16, encrypted);
        let decryptor = age::Decryptor::new_buffered(buffered).map_err(std::io::Error::other)?;
        decryptor
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|err| std::io::Error::other(format!("cannot decrypt payload: {err}")))
    }
}

/// The object's next chunk at or after `sequence`; "not found" (a replica
/// behind the leader) is asked again for up to about two seconds.
async fn next_chunk(
    stream: &async_nats::jetstream::stream::Stream<()>,
    subject: &str,
    sequence: u64,
) -> Result<
    async_nats::jetstream::message::StreamMessage,
    async_nats::jetstream::stream::DirectGetError,
> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    let mut tries = 0;
    loop {
        match stream
            .direct_get_next_for_subject(subject, Some(sequence))
            .await
        {
            Err(err) if err.kind() == DirectGetErrorKind::NotFound && tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

impl Bus {
    /// The payload bucket, created with the configured TTL when missing.
    pub async fn payload_store(&self) -> Result<ObjectStore, BusError> {
        let bucket = self.subjects().payload_bucket();
        match self.jetstream().get_object_store(&bucket).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .jetstream()
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("breakglass payloads (age-encrypted)".into()),
                    max_age: self.options().payload_ttl,
                    num_replicas: self.options().replicas,
                    ..Default::default()
                })
                .await
                .map_err(|err| BusError::Setup {
                    what: format!("object store {bucket}"),
                    reason: err.to_string(),
                }),
        }
    }

    /// Stores an already encrypted file under `name`.
    pub async fn store_payload(
        &self,
        name: &str,
        encrypted: &Path,
    ) -> Result<v1::PayloadRef, BusError> {
        let fail = |reason: String| BusError::Payload {
            name: name.into(),
            reason,
        };
        let (size, sha256) =
            hash_file(encrypted).map_err(|err| fail(format!("cannot read: {err}")))?;
        let store = self.payload_store().await?;
        let mut file = tokio::fs::File::open(encrypted)
            .await
            .map_err(|err| fail(format!("cannot open: {err}")))?;
        store
            .put(self.chunked(name), &mut file)
            .await
            .map_err(|err| fail(format!("cannot store: {err}")))?;
        Ok(self.payload_ref(name, size, sha256))
    }

    /// Stores a payload while it is written: `fill` runs on a blocking
    /// thread and writes plaintext through the age encryptor (to `key`)
    /// into a bounded pipe ([`crate::pipe`]) that the object store reads
    /// from, chunk by chunk, taking size and SHA-256 on the way. So the
    /// encrypting and the storing overlap, nothing is written to disk, and
    /// memory holds a few chunks whatever the size.
    ///
    /// The name holds an object only if `fill` succeeded and the age stream
    /// was finished: a `fill` that fails or panics fails the store. (Chunks
    /// already sent then stay unnamed in the bucket until its TTL removes
    /// them, as with any interrupted put.) `fill`'s own failure is the
    /// error reported when the store stopped because of it; otherwise the
    /// store's. A panic is reported as such, without its message (it could
    /// quote the data being written).
    pub async fn store_payload_with<T: Send + 'static>(
        &self,
        name: &str,
        key: &PayloadKey,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<T> + Send + 'static,
    ) -> Result<(v1::PayloadRef, T), BusError> {
        self.store_in_chunks_with(name, key, PAYLOAD_CHUNK_SIZE, fill)
            .await
    }

    /// Stores one run of a snapshot (`SnapshotReady.runs`) while it is
    /// written, as [`Bus::store_payload_with`] does, in chunks of
    /// [`RUN_CHUNK_SIZE`]: the renderer reads all of a snapshot's runs at
    /// once, so its memory is a few of these chunks per run.
    pub async fn store_snapshot_run_with<T: Send + 'static>(
        &self,
        name: &str,
        key: &PayloadKey,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<T> + Send + 'static,
    ) -> Result<(v1::PayloadRef, T), BusError> {
        self.store_in_chunks_with(name, key, RUN_CHUNK_SIZE, fill)
            .await
    }

    /// Writes one run of a snapshot as [`Bus::store_snapshot_run_with`]
    /// does, with `fill` on the calling thread: for a caller that is on a
    /// blocking thread already (the collector's reader), so the rows it
    /// frees are freed on the thread that made them. Returns once `fill`
    /// is done, not once the server has taken every chunk: the run waits
    /// in a pipe of up to [`RUN_AHEAD_BYTES`] while the object store's
    /// `put` (one acknowledged publish after another) drains it on
    /// `runtime`, so the collector reads its next rows meanwhile; a larger
    /// run blocks only for the part beyond that. [`PendingPayload::finish`]
    /// hands back the reference once the object is stored whole. Blocks;
    /// from an async worker, call it inside `tokio::task::block_in_place`.
    pub fn start_snapshot_run_blocking<T>(
        &self,
        runtime: &tokio::runtime::Handle,
        name: &str,
        key: &PayloadKey,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
    ) -> Result<(PendingPayload, T), BusError> {
        self.start_in_chunks_blocking(
            runtime,
            name,
            key,
            RUN_CHUNK_SIZE,
            RUN_AHEAD_BYTES.div_ceil(RUN_CHUNK_SIZE),
            fill,
        )
    }

    /// [`Bus::start_in_chunks_blocking`] on a blocking thread, then waits
    /// for the put.
    async fn store_in_chunks_with<T: Send + 'static>(
        &self,
        name: &str,
        key: &PayloadKey,
        chunk_size: usize,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<T> + Send + 'static,
    ) -> Result<(v1::PayloadRef, T), BusError> {
        let (bus, key, owned_name) = (self.clone(), key.clone(), name.to_owned());
        let runtime = tokio::runtime::Handle::current();
        let (pending, value) = tokio::task::spawn_blocking(move || {
            bus.start_in_chunks_blocking(&runtime, &owned_name, &key, chunk_size, pipe::DEPTH, fill)
        })
        .await
        .map_err(|err| BusError::Payload {
            name: name.into(),
            reason: task_failed("writing", &err),
        })??;
        Ok((pending.finish().await?, value))
    }

    /// Runs `fill` here, through the age encryptor into a pipe of `depth`
    /// chunks, while the object store's `put` reads the pipe on `runtime`,
    /// hashing the chunks. Returns when `fill` is done and its last chunk
    /// is in the pipe; the put may still be running ([`PendingPayload`]).
    /// When writing fails, waits for the put to stop and settles which
    /// error counts.
    fn start_in_chunks_blocking<T>(
        &self,
        runtime: &tokio::runtime::Handle,
        name: &str,
        key: &PayloadKey,
        chunk_size: usize,
        depth: usize,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
    ) -> Result<(PendingPayload, T), BusError> {
        let (tx, rx) = pipe::pipe_of_depth(depth);
        let mut metadata = self.chunked(name);
        let chunk_size = metadata.chunk_size.unwrap_or(chunk_size).min(chunk_size);
        metadata.chunk_size = Some(chunk_size);
        // Made before the guard below, so it is dropped after it: a panic
        // stops the put before the pipe closes under it.
        let mut chunks = pipe::ChunkWriter::new(tx, chunk_size);
        let bus = self.clone();
        // The store is looked up inside the put: writing never waits for
        // the server while the pipe has room.
        let put = runtime.spawn(async move {
            let mut reader = pipe::StoreReader::new(rx);
            let stored = match bus.payload_store().await {
                Ok(store) => store
                    .put(metadata, &mut reader)
                    .await
                    .map(|_| ())
                    .map_err(|err| {
                        (
                            err.kind() == object_store::PutErrorKind::ReadChunks,
                            err.to_string(),
                        )
                    }),
                Err(err) => Err((false, err.to_string())),
            };
            // Dropping the reader (in digest) unblocks a writer still
            // sending after a failed put.
            (stored, reader.digest())
        });
        // Held from here on, so a `fill` that panics stops the put as it
        // unwinds (the guard's drop), as a failing one does below: the
        // chunks still queued are never published.
        let mut pending = PendingPayload {
            reference: self.payload_ref(name, 0, String::new()),
            put: Some(put),
        };
        let recipient = key.identity.to_public();
        let written = (|| -> std::io::Result<T> {
            let encryptor =
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(std::io::Error::other)?;
            let mut encrypting = encryptor.wrap_output(&mut chunks)?;
            let value = fill(&mut encrypting)?;
            encrypting.finish()?;
            Ok(value)
        })();
        let cause = match written {
            Ok(value) => match chunks.finish() {
                Ok(()) => return Ok((pending, value)),
                Err(cause) => cause,
            },
            // The writer failed on its own while the put still reads: the
            // put is stopped at once, not after it has published the
            // chunks still queued (up to a whole run). Without its end in
            // the pipe it could never name the object anyway.
            Err(cause)
                if cause.kind() != std::io::ErrorKind::BrokenPipe && !pending.put_finished() =>
            {
                if let Some(put) = pending.take_put() {
                    put.abort();
                    drop(chunks);
                    let _ = runtime.block_on(put);
                }
                return Err(BusError::Payload {
                    name: name.into(),
                    reason: format!("writing failed: {cause}"),
                });
            }
            Err(cause) => {
                chunks.fail(&cause);
                cause
            }
        };
        let fail = |reason: String| BusError::Payload {
            name: name.into(),
            reason,
        };
        let put = pending
            .take_put()
            .ok_or_else(|| fail("the store was already finished".into()))?;
        let (stored, _) = runtime
            .block_on(put)
            .map_err(|err| fail(task_failed("storing", &err)))?;
        Err(fail(match stored {
            // The put stopped reading the pipe on its own: its error is the
            // cause, the writer's (a closed pipe) only the consequence.
            Err((false, reason)) => format!("cannot store: {reason}"),
            _ => format!("writing failed: {cause}"),
        }))
    }

    /// The object metadata for storing `name` in chunks of
    /// [`PAYLOAD_CHUNK_SIZE`], or of half the server's message limit when
    /// that is smaller (a NATS shared with other applications may run with
    /// a lower `max_payload` than the default 1 MiB; half leaves room for
    /// the headers).
    fn chunked(&self, name: &str) -> object_store::ObjectMetadata {
        object_store::ObjectMetadata {
            name: name.into(),
            chunk_size: Some(chunk_size_for(self.client().max_payload())),
            ..Default::default()
        }
    }

    fn payload_ref(&self, name: &str, size: u64, sha256: String) -> v1::PayloadRef {
        v1::PayloadRef {
            bucket: self.subjects().payload_bucket(),
            name: name.into(),
            size,
            sha256,
        }
    }

    /// Downloads a payload into `dest` (still encrypted) and checks its size
    /// and SHA-256 against the reference ([`Bus::read_payload`] into a
    /// private file).
    pub async fn fetch_payload(
        &self,
        reference: &v1::PayloadRef,
        dest: &Path,
    ) -> Result<(), BusError> {
        let dest = dest.to_path_buf();
        self.read_payload(reference, move |mut payload| -> std::io::Result<()> {
            let mut file = private_create(&dest)?;
            std::io::copy(&mut payload, &mut file)?;
            file.sync_all()
        })
        .await?
        .map_err(|err| BusError::Payload {
            name: reference.name.clone(),
            reason: format!("cannot write the download: {err}"),
        })
    }

    /// Fetches a payload while `consume` reads it on a blocking thread:
    /// the stored (still encrypted) bytes arrive through a bounded pipe
    /// ([`crate::pipe`]), so fetching and consuming (decrypting, rendering,
    /// writing) overlap and memory holds a few chunks whatever the size.
    ///
    /// Chunk by chunk, one direct get each (`next_by_subj` on the object's
    /// chunk subject). (The object store's own `get` reads through a push
    /// consumer that the server fills as fast as it can: a reader slower
    /// than NATS held the whole payload in its buffer.) Size and SHA-256
    /// are taken as the bytes arrive; a payload longer than its reference
    /// is refused at once. A replica that has not caught up answers "not
    /// found" for a chunk it lacks yet: asked again, briefly. Links are
    /// refused (payloads are never links).
    ///
    /// The reader handed to `consume` reaches its end only after size and
    /// hash matched the reference; a failed fetch makes its next read fail.
    /// The fetch always runs to the end, even when `consume` stops early
    /// (a forged object typically fails to decrypt at its first chunk), and
    /// whatever `consume` returns, a payload that does not match its
    /// reference is the error reported: the reference in the sealed event
    /// is the only check that counts, since anyone holding the public key
    /// can make age chunks that decrypt.
    pub async fn read_payload<T: Send + 'static>(
        &self,
        reference: &v1::PayloadRef,
        consume: impl FnOnce(PayloadReader) -> T + Send + 'static,
    ) -> Result<T, BusError> {
        self.read_payloads(std::slice::from_ref(reference), move |mut readers| {
            // One reference, one reader (read_payloads' promise).
            consume(readers.remove(0))
        })
        .await
    }

    /// Fetches several payloads at once while `consume` reads them, one
    /// reader per reference in the same order, on one blocking thread (the
    /// renderer merging a snapshot's runs). Each fetch is what
    /// [`Bus::read_payload`] does: each reader ends only after its payload
    /// matched its reference, each fetch runs to its end, and the first
    /// reference (in order) whose payload failed is the error reported,
    /// whatever `consume` returned, even if it panicked. With more than one
    /// reference each pipe holds one chunk, so memory grows with their
    /// number, not their size.
    pub async fn read_payloads<T: Send + 'static>(
        &self,
        references: &[v1::PayloadRef],
        consume: impl FnOnce(Vec<PayloadReader>) -> T + Send + 'static,
    ) -> Result<T, BusError> {
        let mut located = Vec::with_capacity(references.len());
        for reference in references {
            located.push(self.locate_payload(reference).await?);
        }
        // Many runs at once: one chunk waiting per run (a chunk is about a
        // thousand rows, far longer to render than to fetch).
        let depth = if references.len() > 1 { 1 } else { pipe::DEPTH };
        let mut readers = Vec::with_capacity(references.len());
        let mut fetches = tokio::task::JoinSet::new();
        for (index, ((stream, chunk_subject, chunks), reference)) in
            located.into_iter().zip(references).enumerate()
        {
            let (mut tx, rx) = pipe::pipe_of_depth(depth);
            readers.push(PayloadReader::new(rx));
            let reference = reference.clone();
            fetches.spawn(async move {
                let fetched =
                    send_chunks(&stream, &chunk_subject, chunks, &reference, &mut tx).await;
                // Sent as soon as this payload is done (the consumer may be
                // waiting on its end to go on with the others); unheard
                // when the consumer stopped already.
                match &fetched {
                    Ok(()) => tx.send(pipe::Piece::End).await,
                    Err(reason) => tx.send(pipe::Piece::Failed(reason.clone())).await,
                };
                (index, fetched.map_err(|reason| (reference.name, reason)))
            });
        }
        let consumer = tokio::task::spawn_blocking(move || consume(readers));
        let mut failures = Vec::new();
        while let Some(done) = fetches.join_next().await {
            match done {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(failure))) => failures.push((index, failure)),
                // send_chunks does not panic; should a fetch task still
                // fail, no payload of this set counts as verified.
                Err(err) => failures.push((
                    usize::MAX,
                    (
                        format!("one of {} payloads", references.len()),
                        task_failed("fetching", &err),
                    ),
                )),
            }
        }
        let consumed = consumer.await;
        // A payload that did not match its reference is the error, even
        // over a consumer that panicked on its bytes.
        failures.sort_by_key(|(index, _)| *index);
        if let Some((_, (name, reason))) = failures.into_iter().next() {
            return Err(BusError::Payload { name, reason });
        }
        consumed.map_err(|err| BusError::Payload {
            name: references
                .first()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            reason: task_failed("reading", &err),
        })
    }

    /// Checks that `reference` names a stored, whole (not deleted, not a
    /// link) object; hands back its stream, chunk subject and chunk count.
    async fn locate_payload(
        &self,
        reference: &v1::PayloadRef,
    ) -> Result<(async_nats::jetstream::stream::Stream<()>, String, usize), BusError> {
        let fail = |reason: String| BusError::Payload {
            name: reference.name.clone(),
            reason,
        };
        let store = self.payload_store().await?;
        let info = store
            .info(&reference.name)
            .await
            .map_err(|err| fail(format!("cannot fetch: {err}")))?;
        if info.deleted {
            return Err(fail("cannot fetch: the payload was deleted".into()));
        }
        if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
            return Err(fail(
                "cannot fetch: the name is a link, and payloads are never links".into(),
            ));
        }
        if info.nuid.is_empty() || !info.nuid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(fail(format!(
                "cannot fetch: the object's chunk id {:?} is not a NATS nuid",
                info.nuid
            )));
        }
        let bucket = self.subjects().payload_bucket();
        let stream = self
            .jetstream()
            .get_stream_no_info(format!("OBJ_{bucket}"))
            .await
            .map_err(|err| fail(format!("cannot fetch: {err}")))?;
        Ok((stream, format!("$O.{bucket}.C.{}", info.nuid), info.chunks))
    }
}

/// How much of a snapshot run may wait in memory for the object store
/// ([`Bus::start_snapshot_run_blocking`]): a run of the collector's 40,000
/// rows is about 4 MiB encrypted, so a whole run is handed over while the
/// server still acknowledges the previous one's chunks.
pub const RUN_AHEAD_BYTES: usize = 8 * 1024 * 1024;

/// What the put of a [`PendingPayload`] ends with: `Err((cut, reason))`,
/// `cut` when it stopped because the writer did; then size and SHA-256 of
/// the bytes it read.
type PutOutcome = (Result<(), (bool, String)>, (u64, String));

/// A payload written whole into its pipe ([`Bus::start_snapshot_run_blocking`])
/// that the object store may still be taking in. Dropped unfinished, its
/// put is stopped: nothing refers to the object, and the chunks already
/// sent stay unnamed until the bucket's TTL removes them.
#[derive(Debug)]
#[must_use = "the payload is stored only once `finish` says so"]
pub struct PendingPayload {
    /// Bucket and name; size and hash come from the put.
    reference: v1::PayloadRef,
    /// The put; taken by [`PendingPayload::finish`].
    put: Option<tokio::task::JoinHandle<PutOutcome>>,
}

impl PendingPayload {
    /// Whether the put has ended (or was taken); a put that ended before
    /// its writer did stopped on its own.
    fn put_finished(&self) -> bool {
        self.put.as_ref().is_none_or(|put| put.is_finished())
    }

    /// The put, no longer stopped when `self` is dropped.
    fn take_put(&mut self) -> Option<tokio::task::JoinHandle<PutOutcome>> {
        self.put.take()
    }

    /// Waits until the object is stored whole; its reference (size and
    /// SHA-256 of the stored bytes).
    pub async fn finish(mut self) -> Result<v1::PayloadRef, BusError> {
        let put = self.put.take();
        let name = self.reference.name.clone();
        let fail = |reason: String| BusError::Payload {
            name: name.clone(),
            reason,
        };
        // Taken only here, and `finish` consumes the value.
        let put = put.ok_or_else(|| fail("the store was already finished".into()))?;
        let (stored, (size, sha256)) = put
            .await
            .map_err(|err| fail(task_failed("storing", &err)))?;
        stored.map_err(|(_, reason)| fail(format!("cannot store: {reason}")))?;
        Ok(v1::PayloadRef {
            size,
            sha256,
            ..self.reference.clone()
        })
    }
}

impl Drop for PendingPayload {
    fn drop(&mut self) {
        if let Some(put) = self.put.take() {
            put.abort();
        }
    }
}

/// The size of the chunks payloads are stored in: half of NATS's default
/// 1 MiB message limit (DESIGN.md: a payload never rides in one message),
/// four times the object store's default, so a 75 MB workbook is 140
/// acknowledged publishes rather than 570. Smaller on a server whose limit
/// is lower (half of it).
pub const PAYLOAD_CHUNK_SIZE: usize = 512 * 1024;

/// The size of the chunks a snapshot's runs are stored in
/// ([`Bus::store_snapshot_run_with`]): the renderer holds a few chunks of
/// every run at once while it merges them.
pub const RUN_CHUNK_SIZE: usize = 128 * 1024;

/// The chunk size for a server whose message limit is `max_payload`.
fn chunk_size_for(max_payload: usize) -> usize {
    PAYLOAD_CHUNK_SIZE.min(max_payload / 2).max(1)
}

/// Why a blocking task did not return: a panic is named as such, without
/// its message (which could quote the data it was handling).
fn task_failed(what: &str, err: &tokio::task::JoinError) -> String {
    if err.is_panic() {
        format!("the {what} task panicked")
    } else {
        format!("the {what} task was cancelled")
    }
}

/// Sends the object's chunks into `tx`, checking size and hash as they
/// go, to the end even after the consumer stopped reading (its verdict
/// must not stand in for the payload's). `Err`: why the payload is refused
/// or cut.
async fn send_chunks(
    stream: &async_nats::jetstream::stream::Stream<()>,
    chunk_subject: &str,
    chunks: usize,
    reference: &v1::PayloadRef,
    tx: &mut pipe::PipeSender,
) -> Result<(), String> {
    let mut consumer_reading = true;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut next_sequence = 1;
    for _ in 0..chunks {
        let chunk = next_chunk(stream, chunk_subject, next_sequence)
            .await
            .map_err(|err| format!("download interrupted: {err}"))?;
        size += chunk.payload.len() as u64;
        if size > reference.size {
            return Err(format!(
                "integrity check failed: more than the expected {} bytes",
                reference.size
            ));
        }
        hasher.update(&chunk.payload);
        next_sequence = chunk.sequence + 1;
        if consumer_reading {
            // Copied into a buffer that goes round the pipe; the message is
            // freed here, on the thread that received it.
            let mut buffer = tx.buffer(chunk.payload.len());
            buffer.extend_from_slice(&chunk.payload);
            drop(chunk);
            consumer_reading = tx.send(pipe::Piece::Data(buffer)).await;
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    if size != reference.size || sha256 != reference.sha256 {
        return Err(format!(
            "integrity check failed: expected {} bytes with SHA-256 {}, got {size} bytes with SHA-256 {sha256}",
            reference.size, reference.sha256
        ));
    }
    Ok(())
}

/// Writes an inventory in workbook order as a snapshot stream: for each
/// project a `ProjectStart`, then its rows, each a length-delimited
/// `SnapshotRecord`. Returns each project's name and row count, in order.
pub fn write_snapshot(
    items: impl Iterator<Item = std::io::Result<SortedItem>>,
    out: &mut dyn Write,
) -> std::io::Result<Vec<(String, u64)>> {
    let mut buffer = Vec::with_capacity(512);
    let mut projects = Vec::new();
    for item in items {
        let record = match item? {
            SortedItem::Project { name, rows } => {
                projects.push((name.clone(), rows));
                v1::snapshot_record::Record::Project(v1::ProjectStart { name, rows })
            }
            SortedItem::Row(row) => v1::snapshot_record::Record::Row(row_to_proto(row)),
        };
        buffer.clear();
        v1::SnapshotRecord {
            record: Some(record),
        }
        .encode_length_delimited(&mut buffer)
        .map_err(std::io::Error::other)?;
        out.write_all(&buffer)?;
    }
    Ok(projects)
}

/// One item of a snapshot stream.
// Items are handled one at a time and never stored in bulk, so the size of
// the row variant costs nothing; boxing it would cost an allocation per row.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SnapshotItem {
    /// A project starts; `rows` rows follow.
    Project {
        /// Project name.
        name: String,
        /// Number of rows that follow.
        rows: u64,
    },
    /// The next row of the current project.
    Row(DeviceRow),
}

/// Reads a snapshot stream record by record (bounded memory).
pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    buffer: Vec<u8>,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads records from `input`.
    pub fn new(input: R) -> Self {
        Self {
            input: BufReader::with_capacity(1 << 16, input),
            buffer: Vec::new(),
        }
    }

    /// The next item, or `None` at the end of the stream.
    pub fn next_item(&mut self) -> std::io::Result<Option<SnapshotItem>> {
        let Some(length) = self.read_varint()? else {
            return Ok(None);
        };
        let length = usize::try_from(length).map_err(std::io::Error::other)?;
        if length > 64 << 20 {
            return Err(std::io::Error::other("snapshot record larger than 64 MiB"));
        }
        self.buffer.resize(length, 0);
        self.input.read_exact(&mut self.buffer)?;
        let record =
            v1::SnapshotRecord::decode(self.buffer.as_slice()).map_err(std::io::Error::other)?;
        match record.record {
            Some(v1::snapshot_record::Record::Project(project)) => {
                Ok(Some(SnapshotItem::Project {
                    name: project.name,
                    rows: project.rows,
                }))
            }
            Some(v1::snapshot_record::Record::Row(row)) => {
                Ok(Some(SnapshotItem::Row(row_from_proto(row))))
            }
            None => Err(std::io::Error::other("empty snapshot record")),
        }
    }

    fn read_varint(&mut self) -> std::io::Result<Option<u64>> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = match self.input.fill_buf()?.first() {
                Some(&byte) => byte,
                None if shift == 0 => return Ok(None),
                None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
            self.input.consume(1);
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(std::io::Error::other("snapshot length prefix too long"))
    }
}

/// The wire row, taking the row's text without copying it.
fn row_to_proto(row: DeviceRow) -> v1::DeviceRow {
    v1::DeviceRow {
        provider: row.provider,
        device_name: row.device_name,
        protocol: row.protocol,
        public_ip: row.public_ip,
        private_ip: row.private_ip,
        url: row.url,
        port: row.port,
        access_type: row.access_type,
        account: row.account,
        password: row.password.into_exposed(),
        pem_file_name: row.pem_file_name,
        extra_credential: row.extra_credential.into_exposed(),
    }
}

fn row_from_proto(row: v1::DeviceRow) -> DeviceRow {
    DeviceRow {
        provider: row.provider,
        device_name: row.device_name,
        protocol: row.protocol,
        public_ip: row.public_ip,
        private_ip: row.private_ip,
        url: row.url,
        port: row.port,
        access_type: row.access_type,
        account: row.account,
        password: Secret::new(row.password),
        pem_file_name: row.pem_file_name,
        extra_credential: Secret::new(row.extra_credential),
    }
}

/// The object name of one attempt's payload: the run id plus a fresh
/// unique suffix. A redelivered message stores under a new name, so it can
/// never replace an object that an already published event points to;
/// leftovers expire with the bucket's TTL.
pub fn attempt_object_name(run_id: &breakglass_core::RunId, kind: &str) -> String {
    format!("{run_id}.{}.{kind}.age", uuid::Uuid::new_v4().simple())
}

/// A core warning as the wire type.
pub fn warning_to_proto(warning: &breakglass_core::RowWarning) -> v1::Warning {
    v1::Warning {
        project: warning.project.clone(),
        device: warning.device.clone(),
        field: warning.field.clone(),
        message: warning.message.clone(),
    }
}

/// A wire warning as the core type.
pub fn warning_from_proto(warning: &v1::Warning) -> breakglass_core::RowWarning {
    breakglass_core::RowWarning {
        project: warning.project.clone(),
        device: warning.device.clone(),
        field: warning.field.clone(),
        message: warning.message.clone(),
    }
}

use breakglass_core::private_fs::create_or_truncate as private_create;
pub use breakglass_core::private_fs::hash_file;

#[cfg(test)]
mod tests {
    use super::*;
    use breakglass_core::Inventory;

    #[test]
    fn snapshot_round_trips_through_encryption_without_plaintext_on_disk() {
        let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
        let mut inventory = Inventory::new();
        for (project, device, password) in [
            ("b", "web-10", "canary-pw-1"),
            ("b", "web-2", "x"),
            ("a", "db", "=1+1"),
        ] {
            inventory
                .push(
                    project,
                    DeviceRow {
                        device_name: device.into(),
                        password: Secret::new(password),
                        ..DeviceRow::default()
                    },
                )
                .unwrap();
        }
        let sorted = inventory.into_sorted_stream().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.age");
        key.encrypt_to_file(&path, |out| write_snapshot(sorted.stream, out).map(|_| ()))
            .unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert!(
            !stored.windows(11).any(|w| w == b"canary-pw-1"),
            "plaintext found in the encrypted file"
        );

        let mut reader = SnapshotReader::new(key.decrypt_file(&path).unwrap());
        let mut seen = Vec::new();
        while let Some(item) = reader.next_item().unwrap() {
            seen.push(match item {
                SnapshotItem::Project { name, rows } => format!("P {name} {rows}"),
                SnapshotItem::Row(row) => {
                    format!("R {} {}", row.device_name, row.password.expose())
                }
            });
        }
        assert_eq!(
            seen,
            [
                "P a 1",
                "R db =1+1",
                "P b 2",
                "R web-2 x",
                "R web-10 canary-pw-1"
            ]
        );

        let other = PayloadKey::parse(&PayloadKey::generate()).unwrap();
        let err = other
            .decrypt_file(&path)
            .err()
            .expect("a wrong key must fail");
        assert!(err.to_string().contains("cannot decrypt"), "{err}");
    }
}
