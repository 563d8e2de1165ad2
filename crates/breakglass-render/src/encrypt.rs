//! Protecting the finished workbook before it leaves the machine.
//!
//! - `password`: ECMA-376 agile encryption (AES-256, SHA-512), the way Excel
//!   itself encrypts (see [`crate::agile`]): the file opens in Excel or
//!   LibreOffice with the break-glass passphrase. It is still named
//!   `.xlsx`, as Excel names such files.
//! - `age`: the age format to one or more X25519 recipients (`.xlsx.age`),
//!   for teams that keep the private keys offline; this side only ever holds
//!   public keys.
//! - `none`: the plain workbook; callers warn on every run.
//!
//! Both encryptors stream (4 KiB segments / 64 KiB age chunks): memory
//! stays flat whatever the workbook's size.
//!
//! [`seal_file`] works on unnamed files (the plain workbook from
//! [`crate::WorkbookBuilder::finish_unnamed`] in, an unnamed sealed file
//! out), so neither has a name another process could open, and a crash
//! leaves nothing behind; [`seal`] is the same between two named files.

use breakglass_config::Encryption;
use breakglass_core::Secret;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What was applied, for the manifest and the object name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// `password`, `age` or `none`.
    pub encryption: &'static str,
    /// The stored file's ending: `.xlsx` or `.xlsx.age`.
    pub extension: &'static str,
    /// Which key opens it, without revealing it: the age recipients, or a
    /// label for the passphrase.
    pub key_id: String,
}

/// Why the workbook could not be encrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Reading the workbook or writing the encrypted file failed.
    #[error("encrypting the workbook failed: {0}")]
    Io(String),
    /// The settings cannot be used (no passphrase, a bad recipient).
    #[error("encryption is misconfigured: {0}")]
    Config(String),
    /// The stored file could not be read back for its size and hash.
    #[error("reading the stored workbook back failed: {0}")]
    ReadBack(String),
}

/// Encrypts `plain` into `out` as the settings say. `out` is created new,
/// readable only by this user, and removed again if anything fails.
///
/// Traced as one `encrypt` span (see [`seal_file`]).
pub fn seal(plain: &Path, out: &Path, encryption: &Encryption) -> Result<Sealed, SealError> {
    let io = |err: std::io::Error| SealError::Io(err.to_string());
    let input = File::open(plain).map_err(io)?;
    let temp_dir = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (sealed, mut file) = seal_file(input, encryption, temp_dir)?;
    let mut copy = || -> std::io::Result<()> {
        let mut output = breakglass_core::private_fs::create_new(out)?;
        std::io::copy(&mut file, &mut output)?;
        output.sync_all()
    };
    copy().map_err(|err| {
        let _ = std::fs::remove_file(out);
        io(err)
    })?;
    Ok(sealed)
}

/// Protects the plain workbook `plain` (read from its current position to
/// its end) as the settings say, into a new unnamed file in `temp_dir`,
/// handed back positioned at its start. With `encryption: none` the result
/// is `plain` itself, rewound.
///
/// Traced as one `encrypt` span with the mode (`encryption`), the
/// workbook's size (`bytes`) and the sealed file's (`sealed_bytes`); never a
/// key or passphrase.
pub fn seal_file(
    plain: File,
    encryption: &Encryption,
    temp_dir: &Path,
) -> Result<(Sealed, File), SealError> {
    seal_file_with(plain, encryption, None, temp_dir)
}

/// [`seal_file`] with the passphrase's hashing done ahead (see [`Sealer`]).
fn seal_file_with(
    mut plain: File,
    encryption: &Encryption,
    ahead: Option<HashedAhead>,
    temp_dir: &Path,
) -> Result<(Sealed, File), SealError> {
    let io = |err: std::io::Error| SealError::Io(err.to_string());
    let start = plain.stream_position().map_err(io)?;
    let len = plain.metadata().map_err(io)?.len().saturating_sub(start);
    let span = tracing::info_span!(
        "encrypt",
        encryption = mode_name(encryption),
        bytes = len,
        sealed_bytes = tracing::field::Empty,
    );
    let _entered = span.enter();
    let (sealed, mut file) = seal_into(plain, len, encryption, ahead, temp_dir)?;
    file.rewind().map_err(io)?;
    if let Ok(meta) = file.metadata() {
        span.record("sealed_bytes", meta.len());
    }
    Ok((sealed, file))
}

/// The file the destinations will hold: the sealed workbook, open and
/// positioned at its start, with the size and SHA-256 every upload is
/// verified by.
#[derive(Debug)]
pub struct SealedWorkbook {
    /// What was applied.
    pub sealed: Sealed,
    /// The sealed content (unnamed unless `encryption: none` on a named input).
    pub file: File,
    /// Its length in bytes.
    pub size: u64,
    /// Its lowercase hex SHA-256.
    pub sha256: String,
}

/// The one render-to-store step the renderer service and `run-once` share:
/// [`seal_file`] then [`hash_open_file`].
pub fn seal_and_hash(
    plain: File,
    encryption: &Encryption,
    temp_dir: &Path,
) -> Result<SealedWorkbook, SealError> {
    Sealer::new(encryption.clone()).seal_and_hash(plain, temp_dir)
}

/// The passphrase's two fixed-cost hashes, each on a thread of its own:
/// its key id and the agile password key.
#[derive(Debug)]
struct HashedAhead {
    key_id: std::thread::JoinHandle<String>,
    password_key: std::thread::JoinHandle<crate::agile::PasswordKey>,
}

/// [`seal_and_hash`] made ready before the workbook is written: with
/// `encryption: password`, the passphrase's key id (600,000 PBKDF2 rounds,
/// a tenth of a second) and its agile key (100,000 SHA-512 rounds, 50 ms)
/// are hashed meanwhile on threads of their own, so these fixed costs do
/// not add to every run after the workbook is done.
#[derive(Debug)]
pub struct Sealer {
    encryption: Encryption,
    ahead: Option<HashedAhead>,
}

/// Starts `work` on a thread of its own at the lowest CPU priority (nice
/// 19, Linux; elsewhere the default): it runs on whatever core the render
/// leaves idle and never slows it. Never waited for alone (see [`Raced`]):
/// on a busy host it may barely run at all.
fn spawn_yielding<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // On Linux the nice value is per thread: this one only. Best
            // effort: at the default priority it is merely not in the shadow.
            #[cfg(target_os = "linux")]
            let _ = rustix::process::setpriority_process(None, 19);
            work()
        })
}

/// The key id hash of `passphrase`, to run on a thread of its own.
fn key_id_of(passphrase: Secret) -> impl FnOnce() -> String + Send + 'static {
    move || passphrase_key_id(&passphrase)
}

/// The agile password key hash of `passphrase`, to run on a thread of its
/// own.
fn password_key_of(
    passphrase: Secret,
) -> impl FnOnce() -> crate::agile::PasswordKey + Send + 'static {
    move || crate::agile::PasswordKey::derive(passphrase.expose())
}

/// A hash made ahead at nice 19, and when it was not done as sealing
/// began, the same hash started again at full priority: the first to
/// finish is used (both are valid; each draws its own salt), so sealing
/// never waits on a thread a busy host may starve, nor throws away one
/// that was nearly done on an idle one.
struct Raced<T> {
    ahead: std::thread::JoinHandle<T>,
    again: Option<std::thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Raced<T> {
    /// Races `ahead` against `hash` on a new thread, unless `ahead` is done.
    fn start(ahead: std::thread::JoinHandle<T>, hash: impl FnOnce() -> T + Send + 'static) -> Self {
        let again = if ahead.is_finished() {
            None
        } else {
            // Without a thread, the one made ahead is all there is.
            std::thread::Builder::new()
                .name("hash-again".into())
                .spawn(hash)
                .ok()
        };
        Self { ahead, again }
    }

    /// The first result; the other thread is let go and ends on its own.
    fn first(self) -> std::thread::Result<T> {
        let Some(again) = self.again else {
            return self.ahead.join();
        };
        loop {
            if self.ahead.is_finished() {
                match self.ahead.join() {
                    Ok(value) => return Ok(value),
                    Err(_) => return again.join(),
                }
            }
            if again.is_finished() {
                return again.join();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Sealer {
    /// Starts hashing the key id and the agile password key when
    /// `encryption` is a passphrase (a thread that cannot be started only
    /// means they are hashed later).
    pub fn new(encryption: Encryption) -> Self {
        let ahead = match &encryption {
            Encryption::Password(Some(passphrase)) => {
                let key_id = spawn_yielding("key-id", key_id_of(passphrase.clone())).ok();
                let password_key =
                    spawn_yielding("password-key", password_key_of(passphrase.clone())).ok();
                match (key_id, password_key) {
                    (Some(key_id), Some(password_key)) => Some(HashedAhead {
                        key_id,
                        password_key,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        Self { encryption, ahead }
    }

    /// Protects `plain` as the settings say ([`seal_file`]), then measures
    /// and hashes the result ([`hash_open_file`]).
    pub fn seal_and_hash(self, plain: File, temp_dir: &Path) -> Result<SealedWorkbook, SealError> {
        let (sealed, mut file) = seal_file_with(plain, &self.encryption, self.ahead, temp_dir)?;
        let (size, sha256) =
            hash_open_file(&mut file).map_err(|err| SealError::ReadBack(err.to_string()))?;
        Ok(SealedWorkbook {
            sealed,
            file,
            size,
            sha256,
        })
    }
}

/// A path that opens `file` for reading while it is open, though it has no
/// name: `/proc/self/fd/N` on Linux. Elsewhere the file is copied into a
/// new named file in `fallback_dir` (sealed content only should go there).
pub fn reopenable_path(file: &mut File, fallback_dir: &Path) -> std::io::Result<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        let _ = fallback_dir;
        use std::os::fd::AsRawFd;
        Ok(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let path = fallback_dir.join("workbook.sealed");
        let mut out = breakglass_core::private_fs::create_new(&path)?;
        file.rewind()?;
        std::io::copy(file, &mut out)?;
        file.rewind()?;
        out.sync_all()?;
        Ok(path)
    }
}

/// Size and lowercase hex SHA-256 of an open file's whole content; leaves
/// it positioned at its start.
pub fn hash_open_file(file: &mut File) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    file.rewind()?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    file.rewind()?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// The mode's name as the manifest spells it.
fn mode_name(encryption: &Encryption) -> &'static str {
    match encryption {
        Encryption::None => "none",
        Encryption::Password(_) => "password",
        Encryption::Age(_) => "age",
    }
}

fn seal_into(
    mut plain: File,
    len: u64,
    encryption: &Encryption,
    ahead: Option<HashedAhead>,
    temp_dir: &Path,
) -> Result<(Sealed, File), SealError> {
    let io = |err: std::io::Error| SealError::Io(err.to_string());
    let unnamed = || {
        tempfile::tempfile_in(temp_dir).map_err(|err| {
            SealError::Io(format!("creating a file in {}: {err}", temp_dir.display()))
        })
    };
    match encryption {
        Encryption::None => Ok((
            Sealed {
                encryption: "none",
                extension: ".xlsx",
                key_id: String::new(),
            },
            plain,
        )),
        Encryption::Password(passphrase) => {
            let passphrase = passphrase.as_ref().ok_or_else(|| {
                SealError::Config(
                    "encryption is password but no encryption_passphrase is set".into(),
                )
            })?;
            let out = unnamed()?;
            // The passphrase's hashing (fixed costs) runs beside the
            // encryption when it was not started before the workbook, and
            // races the threads made ahead that have not finished (a thread
            // at nice 19 may get almost no CPU on a busy host).
            let (key_id_ahead, key_ahead) = match ahead {
                Some(ahead) => (
                    Some(Raced::start(ahead.key_id, key_id_of(passphrase.clone()))),
                    Some(Raced::start(
                        ahead.password_key,
                        password_key_of(passphrase.clone()),
                    )),
                ),
                None => (None, None),
            };
            let password_key = move || {
                key_ahead
                    .and_then(|raced| raced.first().ok())
                    .unwrap_or_else(|| crate::agile::PasswordKey::derive(passphrase.expose()))
            };
            let (file, key_id) = std::thread::scope(|scope| {
                let here = key_id_ahead
                    .is_none()
                    .then(|| scope.spawn(|| passphrase_key_id(passphrase)));
                let file = crate::agile::encrypt_with(&mut plain, len, password_key, out);
                let key_id = match (key_id_ahead, here) {
                    (Some(raced), _) => raced.first(),
                    (None, Some(here)) => here.join(),
                    (None, None) => Ok(passphrase_key_id(passphrase)),
                }
                .map_err(|_| SealError::Io("hashing the passphrase's key id panicked".into()))?;
                Ok::<_, SealError>((file.map_err(io)?, key_id))
            })?;
            Ok((
                Sealed {
                    encryption: "password",
                    extension: ".xlsx",
                    key_id,
                },
                file,
            ))
        }
        Encryption::Age(recipients) => {
            if recipients.is_empty() {
                return Err(SealError::Config(
                    "encryption is age but age_recipients is empty".into(),
                ));
            }
            let parsed = recipients
                .iter()
                .map(|r| {
                    age::x25519::Recipient::from_str(r).map_err(|_| {
                        SealError::Config(format!("{r:?} is not an age X25519 public key"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let encryptor =
                age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|err| SealError::Config(err.to_string()))?;
            let mut input = BufReader::with_capacity(1 << 16, &mut plain);
            let mut writer = encryptor
                .wrap_output(BufWriter::with_capacity(1 << 16, unnamed()?))
                .map_err(io)?;
            std::io::copy(&mut input, &mut writer).map_err(io)?;
            let mut inner = writer.finish().map_err(io)?;
            inner.flush().map_err(io)?;
            let file = inner.into_inner().map_err(|err| io(err.into_error()))?;
            Ok((
                Sealed {
                    encryption: "age",
                    extension: ".xlsx.age",
                    key_id: recipients.join(","),
                },
                file,
            ))
        }
    }
}

/// PBKDF2-HMAC-SHA256 iterations of the key id: OWASP's 2023 figure for
/// this hash. Each guess against a key id costs more than a guess against
/// the file's own ECMA-376 verifier (100,000 SHA-512 spins).
const KEY_ID_ROUNDS: u32 = 600_000;
/// The key id's format tag. `v2` (an iterated SHA-512 made here) is no
/// longer produced or checked: its files still open, without the early
/// "wrong passphrase" answer.
const KEY_ID_PREFIX: &str = "passphrase v3 ";
/// Bytes of the random per-file salt (NIST SP 800-132: at least 128 bits).
const KEY_ID_SALT_BYTES: usize = 16;
/// Bytes of the derived tag kept in the id: enough to tell the right
/// passphrase from a few others, too few to confirm a strong one offline.
const KEY_ID_TAG_BYTES: usize = 4;

fn key_id_tag(salt: &[u8], passphrase: &Secret) -> [u8; KEY_ID_TAG_BYTES] {
    pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, KEY_ID_TAG_BYTES>(
        passphrase.expose().as_bytes(),
        salt,
        KEY_ID_ROUNDS,
    )
}

/// Names a passphrase without revealing it, for one sealed file:
/// `passphrase v3 <32 hex salt>:<8 hex>`, the first 32 bits of
/// PBKDF2-HMAC-SHA256 (600,000 iterations) over a random 128-bit per-file
/// salt. The salt makes every file's id different, so one dictionary pass
/// cannot serve many files; a guess costs more than against the file's own
/// verifier, and 32 bits leave billions of false candidates for a strong
/// passphrase. Recorded in the manifest beside the file so `fetch` and
/// `drill` can say "this passphrase does not open this file" (see
/// [`passphrase_matches`]) before decrypting the whole workbook in memory.
pub fn passphrase_key_id(passphrase: &Secret) -> String {
    use rand::RngCore;
    let mut salt = [0u8; KEY_ID_SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    format!(
        "{KEY_ID_PREFIX}{}:{}",
        hex::encode(salt),
        hex::encode(key_id_tag(&salt, passphrase))
    )
}

/// Whether `passphrase` is the one `key_id` names (compared in constant
/// time); `None` when `key_id` is not a passphrase key id of this format
/// (an older `v2` file, age, or none): then only decrypting tells.
pub fn passphrase_matches(passphrase: &Secret, key_id: &str) -> Option<bool> {
    use subtle::ConstantTimeEq;
    let (salt, tag) = key_id.strip_prefix(KEY_ID_PREFIX)?.split_once(':')?;
    let salt = hex::decode(salt).ok()?;
    let tag = hex::decode(tag).ok()?;
    if salt.len() != KEY_ID_SALT_BYTES || tag.len() != KEY_ID_TAG_BYTES {
        return None;
    }
    Some(bool::from(key_id_tag(&salt, passphrase).ct_eq(&tag[..])))
}

/// A strong passphrase for `run-once` when none is configured: 24
/// characters from an unambiguous alphabet (about 137 bits).
pub fn generate_passphrase() -> Secret {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let text: String = (0..24)
        .map(|i| {
            let c = ALPHABET[rng.random_range(0..ALPHABET.len())] as char;
            if i > 0 && i % 6 == 0 {
                format!("-{c}")
            } else {
                c.to_string()
            }
        })
        .collect();
    Secret::new(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes a [`Sealer`] makes ahead yield the CPU to the render:
    /// their threads run at the lowest priority, and only they do. Read
    /// from the kernel's own view of the threads (`/proc/self/task`) while
    /// the key id is hashed (600,000 rounds: seconds in a test build).
    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_ahead_runs_at_the_lowest_priority() {
        let caller = rustix::process::getpriority_process(None).unwrap();
        let sealer = Sealer::new(Encryption::Password(Some(Secret::new(
            "correct horse battery staple",
        ))));
        // The thread names itself, then lowers its priority: looked at
        // until both show, or for ten seconds.
        let key_id_nice = || {
            let mut seen = Vec::new();
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let task = task.unwrap().path();
                let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
                let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
                    continue;
                };
                if name.trim() == "key-id" {
                    // Fields after the name: state is field 3, nice field 19.
                    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                    seen.push(after_name.split(' ').nth(16).unwrap().to_owned());
                }
            }
            seen
        };
        // Every key id thread (other tests in this process may hash too).
        let all_niced = |seen: &[String]| !seen.is_empty() && seen.iter().all(|n| n == "19");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut niced = key_id_nice();
        while !all_niced(&niced) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            niced = key_id_nice();
        }
        assert!(
            all_niced(&niced),
            "key id threads at nice {niced:?}, not 19"
        );
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), caller);
        drop(sealer);
    }

    #[test]
    fn the_key_id_is_pbkdf2_sha256_over_a_per_file_salt() {
        let passphrase = Secret::new("correct horse battery staple");
        let id = passphrase_key_id(&passphrase);
        let (salt, tag) = id
            .strip_prefix("passphrase v3 ")
            .unwrap()
            .split_once(':')
            .unwrap();
        assert_eq!((salt.len(), tag.len()), (32, 8), "{id}");
        // Recomputed with the kept crate, independently of this module.
        let expected = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(
            b"correct horse battery staple",
            &hex::decode(salt).unwrap(),
            600_000,
        );
        assert_eq!(tag, hex::encode(&expected[..4]));
        assert_eq!(passphrase_matches(&passphrase, &id), Some(true));
        assert_eq!(
            passphrase_matches(&Secret::new("correct horse battery stapler"), &id),
            Some(false)
        );
        assert_ne!(id, passphrase_key_id(&passphrase), "a new salt per file");
        // Old v2 ids (hand-made iterated SHA-512) are no longer checked;
        // malformed ids are not either.
        for old in [
            "passphrase v2 0011223344556677:8899aabb",
            "passphrase v3 00:8899aabb",
            "passphrase v3 zz:zz",
            "age1xyz",
        ] {
            assert_eq!(passphrase_matches(&passphrase, old), None, "{old}");
        }
    }

    /// Some bytes standing in for a workbook, and an unnamed file holding
    /// them, positioned at its start.
    fn plain_workbook(dir: &Path) -> (Vec<u8>, File) {
        let bytes = b"PK\x03\x04 a workbook ".repeat(2_000);
        let mut file = tempfile::tempfile_in(dir).unwrap();
        file.write_all(&bytes).unwrap();
        file.rewind().unwrap();
        (bytes, file)
    }

    /// A sealer made ready before the workbook names the passphrase it
    /// seals with (the key id hashed ahead), and the file opens with it.
    #[test]
    fn a_sealer_made_ready_ahead_seals_with_its_own_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let (plain_bytes, plain) = plain_workbook(dir.path());
        let passphrase = Secret::new("correct horse battery staple");
        let sealer = Sealer::new(Encryption::Password(Some(passphrase.clone())));
        let mut sealed = sealer.seal_and_hash(plain, dir.path()).unwrap();
        assert_eq!(sealed.sealed.encryption, "password");
        assert_eq!(
            passphrase_matches(&passphrase, &sealed.sealed.key_id),
            Some(true)
        );
        let other = Secret::new("another passphrase entirely");
        assert_eq!(
            passphrase_matches(&other, &sealed.sealed.key_id),
            Some(false)
        );
        let mut bytes = Vec::new();
        sealed.file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, sealed.size);
        let mut back = Vec::new();
        crate::agile::decrypt(std::io::Cursor::new(bytes), passphrase.expose(), &mut back).unwrap();
        assert_eq!(back, plain_bytes);
    }

    /// Sealing never waits for a hash still running at nice 19 (on a busy
    /// host it may get almost no CPU): it hashes again at full priority
    /// and takes whichever ends first. Here the threads made ahead cannot
    /// finish until the test lets them.
    #[test]
    fn sealing_does_not_wait_for_hashes_still_running_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (plain_bytes, plain) = plain_workbook(dir.path());
        let passphrase = Secret::new("correct horse battery staple");
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = std::sync::Arc::new(std::sync::Mutex::new(stuck));
        let stuck_too = stuck.clone();
        let for_key = passphrase.clone();
        let sealer = Sealer {
            encryption: Encryption::Password(Some(passphrase.clone())),
            ahead: Some(HashedAhead {
                key_id: std::thread::spawn(move || {
                    let _ = stuck.lock().unwrap().recv();
                    "never used".to_owned()
                }),
                password_key: std::thread::spawn(move || {
                    let _ = stuck_too.lock().unwrap().recv();
                    crate::agile::PasswordKey::derive(for_key.expose())
                }),
            }),
        };
        let temp = dir.path().to_path_buf();
        let (done, sealed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(sealer.seal_and_hash(plain, &temp));
        });
        let outcome = sealed.recv_timeout(std::time::Duration::from_secs(60));
        drop(release);
        let mut sealed = outcome
            .expect("sealing waited for the hashes made ahead")
            .unwrap();
        assert_eq!(
            passphrase_matches(&passphrase, &sealed.sealed.key_id),
            Some(true)
        );
        let mut bytes = Vec::new();
        sealed.file.read_to_end(&mut bytes).unwrap();
        let mut back = Vec::new();
        crate::agile::decrypt(std::io::Cursor::new(bytes), passphrase.expose(), &mut back).unwrap();
        assert_eq!(back, plain_bytes);
    }

    /// A race takes a hash made ahead when it is done, a hash started
    /// again when the one ahead is stuck, and the one ahead when it ends
    /// first though it was not done as the race began.
    #[test]
    fn a_race_takes_whichever_hash_is_done_first() {
        let done = std::thread::spawn(|| 1);
        while !done.is_finished() {
            std::thread::yield_now();
        }
        let raced = Raced::start(done, || 2);
        assert!(raced.again.is_none());
        assert_eq!(raced.first().unwrap(), 1);

        let (_keep, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _ = stuck.recv();
            1
        });
        assert_eq!(Raced::start(stuck, || 2).first().unwrap(), 2);

        let (release, waiting) = std::sync::mpsc::channel::<()>();
        let nearly = std::thread::spawn(move || {
            let _ = waiting.recv();
            1
        });
        let (_hold, slow) = std::sync::mpsc::channel::<()>();
        let raced = Raced::start(nearly, move || {
            let _ = slow.recv();
            2
        });
        drop(release);
        assert_eq!(raced.first().unwrap(), 1);
    }

    #[test]
    fn generated_passphrases_are_long_and_different() {
        let a = generate_passphrase();
        let b = generate_passphrase();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 27);
        assert!(a.expose().chars().count() >= breakglass_config::settings::MIN_PASSPHRASE_CHARS);
    }

    #[test]
    fn every_mode_writes_a_private_file_without_the_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.xlsx");
        std::fs::write(
            &plain,
            b"PK\x03\x04 canary-password-in-a-workbook ".repeat(300),
        )
        .unwrap();
        let identity = age::x25519::Identity::generate();
        let modes = [
            Encryption::Password(Some(Secret::new("correct horse battery staple"))),
            Encryption::Age(vec![identity.to_public().to_string()]),
        ];
        for (i, mode) in modes.iter().enumerate() {
            let out = dir.path().join(format!("sealed-{i}"));
            let sealed = seal(&plain, &out, mode).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            assert!(
                !bytes.windows(8).any(|w| w == b"canary-p"),
                "{} leaked plaintext",
                sealed.encryption
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(
                    std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
        }
        let err = seal(&plain, &dir.path().join("x"), &Encryption::Password(None)).unwrap_err();
        assert!(
            err.to_string().contains("no encryption_passphrase"),
            "{err}"
        );
    }
}
