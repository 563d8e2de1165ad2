//! Bounded pipes between a blocking thread and the object store, so a
//! payload is stored while it is being written and consumed while it is
//! being fetched: no temp file, no second pass over the bytes, and a few
//! chunks in memory whatever the payload's size ([`DEPTH`] in flight).
//!
//! Both pipes are strict about how a stream ends, because a truncated
//! payload must never pass for a whole one:
//! - **storing**: the object store reads the end of the payload only when
//!   the writer said it is complete ([`ChunkWriter::finish`]). A writer
//!   that fails, panics or is dropped midway makes the read fail, so the
//!   store fails instead of keeping a truncated object under the name.
//! - **fetching**: the consumer reads the end of the payload only after the
//!   fetch checked its size and SHA-256 against the reference
//!   ([`PayloadReader`]). A fetch that fails makes the next read fail, so
//!   no consumer mistakes a cut or forged stream for a complete one.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// Chunks in flight between the two ends of a pipe.
pub(crate) const DEPTH: usize = 4;

/// What travels through a pipe.
pub(crate) enum Piece {
    /// The next bytes.
    Data(Vec<u8>),
    /// The stream is complete (written whole, or fetched and verified).
    End,
    /// The other end failed; the stream is not complete.
    Failed(String),
}

/// A new pipe of `depth` chunks in flight (at least one): [`DEPTH`] as a
/// rule, one for readers that hold many pipes at once (the renderer
/// merging snapshot runs), more for a writer that hands a whole snapshot
/// run over without waiting for the server. Its buffers go round: the
/// receiving end hands each emptied buffer back for the sending end to
/// fill again, so a payload of any size is carried in a handful of
/// allocations, and buffers are not freed, chunk after chunk, on another
/// thread than the one that made them (which the allocator held on to for
/// a while).
pub(crate) fn pipe_of_depth(depth: usize) -> (PipeSender, PipeReceiver) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    let (spare_tx, spare_rx) = mpsc::unbounded_channel();
    (
        PipeSender {
            tx,
            spare: spare_rx,
        },
        PipeReceiver {
            rx,
            spare: spare_tx,
            current: Vec::new(),
            position: 0,
            ended: false,
        },
    )
}

/// The sending end of a pipe.
pub(crate) struct PipeSender {
    tx: mpsc::Sender<Piece>,
    spare: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl PipeSender {
    /// An empty buffer: one handed back by the receiver, or a new one.
    pub(crate) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// Sends from a blocking thread; `false` when the receiver is gone.
    pub(crate) fn send_blocking(&self, piece: Piece) -> bool {
        self.tx.blocking_send(piece).is_ok()
    }

    /// Sends from async code; `false` when the receiver is gone.
    pub(crate) async fn send(&self, piece: Piece) -> bool {
        self.tx.send(piece).await.is_ok()
    }
}

/// The receiving end of a pipe: the bytes in order, and how they ended.
pub(crate) struct PipeReceiver {
    rx: mpsc::Receiver<Piece>,
    spare: mpsc::UnboundedSender<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
    ended: bool,
}

/// What the receiver holds next.
enum Next<'a> {
    Bytes(&'a [u8]),
    End,
}

impl PipeReceiver {
    /// Takes in one received piece; an error for a failed or cut stream.
    fn accept(&mut self, piece: Option<Piece>, cut: &'static str) -> io::Result<()> {
        match piece {
            Some(Piece::Data(bytes)) => {
                let used = std::mem::replace(&mut self.current, bytes);
                self.position = 0;
                self.recycle(used);
                Ok(())
            }
            Some(Piece::End) => {
                self.ended = true;
                Ok(())
            }
            Some(Piece::Failed(reason)) => Err(io::Error::other(reason)),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, cut)),
        }
    }

    fn recycle(&mut self, mut used: Vec<u8>) {
        if used.capacity() > 0 {
            used.clear();
            // The sender may be gone already; the buffer is then just freed.
            let _ = self.spare.send(used);
        }
    }

    /// The unread bytes held, or the end, without waiting; `None` when the
    /// next piece must be received first.
    fn ready(&self) -> Option<Next<'_>> {
        if self.position < self.current.len() {
            Some(Next::Bytes(&self.current[self.position..]))
        } else if self.ended {
            Some(Next::End)
        } else {
            None
        }
    }
}

/// The blocking writer's end of a storing pipe: collects writes into
/// chunks of `chunk` bytes and sends each when full.
pub(crate) struct ChunkWriter {
    tx: PipeSender,
    buffer: Vec<u8>,
    chunk: usize,
}

impl ChunkWriter {
    /// A writer sending chunks of `chunk` bytes into `tx`.
    pub(crate) fn new(mut tx: PipeSender, chunk: usize) -> Self {
        let buffer = tx.buffer(chunk);
        Self { tx, buffer, chunk }
    }

    fn send(&mut self, piece: Piece) -> io::Result<()> {
        if self.tx.send_blocking(piece) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the object store stopped reading the payload",
            ))
        }
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        let next = self.tx.buffer(self.chunk);
        let full = std::mem::replace(&mut self.buffer, next);
        self.send(Piece::Data(full))
    }

    /// Sends what is left and marks the payload complete.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.send_buffer()?;
        }
        self.send(Piece::End)
    }

    /// Marks the payload failed, so the store does not keep it.
    pub(crate) fn fail(mut self, reason: &io::Error) {
        let _ = self.send(Piece::Failed(reason.to_string()));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let taken = (self.chunk - self.buffer.len()).min(data.len());
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == self.chunk {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    /// Chunks leave when full; [`ChunkWriter::finish`] sends the rest.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The object store's end of a storing pipe: reads the chunks, taking
/// their size and SHA-256 on the way (the reference the event carries).
pub(crate) struct StoreReader {
    pipe: PipeReceiver,
    hasher: Sha256,
    size: u64,
}

impl StoreReader {
    /// Reads what the pipe receives.
    pub(crate) fn new(pipe: PipeReceiver) -> Self {
        Self {
            pipe,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Size and lowercase hex SHA-256 of everything read.
    pub(crate) fn digest(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

impl AsyncRead for StoreReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.pipe.ready() {
                Some(Next::Bytes(bytes)) => {
                    let n = buf.remaining().min(bytes.len());
                    this.hasher.update(&bytes[..n]);
                    buf.put_slice(&bytes[..n]);
                    this.size += n as u64;
                    this.pipe.position += n;
                    return Poll::Ready(Ok(()));
                }
                Some(Next::End) => return Poll::Ready(Ok(())),
                None => {
                    let piece = std::task::ready!(this.pipe.rx.poll_recv(cx));
                    this.pipe
                        .accept(piece, "the payload's writer stopped before the end")?;
                }
            }
        }
    }
}

/// The consumer's end of a fetching pipe: a blocking [`Read`] of the
/// stored (still encrypted) bytes, which reaches its end only once the
/// fetch has checked the payload's size and SHA-256 against its reference.
pub struct PayloadReader {
    pipe: PipeReceiver,
}

impl PayloadReader {
    /// Reads what the pipe receives.
    pub(crate) fn new(pipe: PipeReceiver) -> Self {
        Self { pipe }
    }
}

impl Read for PayloadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.pipe.ready() {
                Some(Next::Bytes(bytes)) => {
                    let n = out.len().min(bytes.len());
                    out[..n].copy_from_slice(&bytes[..n]);
                    self.pipe.position += n;
                    return Ok(n);
                }
                Some(Next::End) => return Ok(0),
                None => {
                    let piece = self.pipe.rx.blocking_recv();
                    self.pipe
                        .accept(piece, "the payload's fetch stopped before the end")?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Only a finished writer ends the stream; a failed or dropped one
    /// makes the store's read fail.
    #[tokio::test]
    async fn the_store_sees_the_end_only_of_a_finished_writer() {
        for how in ["finish", "fail", "drop"] {
            let (tx, rx) = pipe_of_depth(DEPTH);
            let writer = tokio::task::spawn_blocking(move || {
                let mut writer = ChunkWriter::new(tx, 1000);
                writer.write_all(&[7u8; 2500]).unwrap();
                match how {
                    "finish" => writer.finish().unwrap(),
                    "fail" => writer.fail(&io::Error::other("render failed")),
                    _ => drop(writer),
                }
            });
            let mut reader = StoreReader::new(rx);
            let mut read = Vec::new();
            let result = reader.read_to_end(&mut read).await;
            writer.await.unwrap();
            match how {
                "finish" => {
                    assert_eq!(result.unwrap(), 2500);
                    let (size, sha) = reader.digest();
                    assert_eq!(size, 2500);
                    assert_eq!(sha, hex::encode(Sha256::digest([7u8; 2500])));
                }
                "fail" => assert!(result.unwrap_err().to_string().contains("render failed")),
                _ => assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof),
            }
        }
    }

    /// The consumer reads the end only when the fetch sent it; a fetch
    /// that fails or stops is an error, never a clean end.
    #[tokio::test]
    async fn the_consumer_sees_the_end_only_of_a_verified_fetch() {
        for how in ["end", "failed", "dropped"] {
            let (tx, rx) = pipe_of_depth(DEPTH);
            let consumer = tokio::task::spawn_blocking(move || {
                let mut read = Vec::new();
                PayloadReader::new(rx).read_to_end(&mut read).map(|_| read)
            });
            assert!(tx.send(Piece::Data(b"abc".to_vec())).await);
            match how {
                "end" => assert!(tx.send(Piece::End).await),
                "failed" => assert!(
                    tx.send(Piece::Failed("integrity check failed".into()))
                        .await
                ),
                _ => drop(tx),
            }
            let result = consumer.await.unwrap();
            match how {
                "end" => assert_eq!(result.unwrap(), b"abc"),
                "failed" => assert!(
                    result
                        .unwrap_err()
                        .to_string()
                        .contains("integrity check failed")
                ),
                _ => assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof),
            }
        }
    }
}
