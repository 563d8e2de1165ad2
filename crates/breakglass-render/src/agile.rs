//! ECMA-376 agile encryption (MS-OFFCRYPTO §2.3.4.10–2.3.4.15), the way
//! Excel protects a workbook with a password, written in one pass and in
//! bounded memory.
//!
//! The compound file around the encrypted package is written by the `cfb`
//! crate (a release that grows a stream's sector chain without rescanning
//! it); the ciphers are RustCrypto's (`aes`, `cbc`, `sha2`, `hmac`). This
//! module only lays the documented structures out, byte for byte as
//! `ms-offcrypto-writer` (our previous writer, whose `cfb` pin made every
//! write rescan the whole chain: quadratic time) and Excel itself do:
//!
//! - `\x06DataSpaces/…`: the data-space version, map, definition and
//!   transform info (§2.1.5–2.1.9), fixed bytes;
//! - `EncryptionInfo`: version 4.4, then the XML descriptor: key data (a
//!   random salt), data integrity (HMAC-SHA512 over the whole
//!   `EncryptedPackage` stream, key and value encrypted under the package
//!   key) and one password key encryptor (SHA-512 spun 100,000 times);
//! - `EncryptedPackage`: the plaintext size (u64 LE), then each 4,096-byte
//!   segment of the package encrypted with AES-256-CBC, IV = SHA-512(salt ‖
//!   segment index)[..16], the last segment zero-padded to the block size.
//!
//! [`encrypt`] reads the plaintext once, in blocks of 64 segments, on a
//! second thread, so encrypting and storing run on two cores; [`decrypt`]
//! writes it back once, segment by segment. Neither holds more than a few
//! blocks and buffers, whatever the workbook's size.

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha512};
use std::io::{self, Read, Seek, Write};

/// Hash iterations of the password key (what Excel writes).
const SPIN_COUNT: u32 = 100_000;
/// Plaintext bytes per independently encrypted segment.
const SEGMENT: usize = 4096;
/// Plaintext bytes encrypted at a time and handed to the compound file's
/// stream: a whole number of segments. Small, because the encrypting
/// thread's heap is its own: the few blocks in flight add to the peak of a
/// renderer that has just freed its snapshot buffers on another thread.
const BLOCK: usize = 64 * SEGMENT;
/// Encrypted blocks queued between the two threads of [`encrypt`].
const BLOCKS_IN_FLIGHT: usize = 2;

const BLOCK_VERIFIER_INPUT: [u8; 8] = [0xFE, 0xA7, 0xD2, 0x76, 0x3B, 0x4B, 0x9E, 0x79];
const BLOCK_VERIFIER_VALUE: [u8; 8] = [0xD7, 0xAA, 0x0F, 0x6D, 0x30, 0x61, 0x34, 0x4E];
const BLOCK_KEY_VALUE: [u8; 8] = [0x14, 0x6E, 0x0B, 0xE7, 0xAB, 0xAC, 0xD0, 0xD6];
const BLOCK_HMAC_KEY: [u8; 8] = [0x5F, 0xB2, 0xAD, 0x01, 0x0C, 0xB9, 0xE1, 0xF6];
const BLOCK_HMAC_VALUE: [u8; 8] = [0xA0, 0x67, 0x7F, 0x02, 0xB2, 0x2C, 0x84, 0x33];

type HmacSha512 = Hmac<Sha512>;

fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(hasher.finalize().as_slice());
    out
}

fn first<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// AES-256-CBC over whole blocks, in place.
fn cbc_encrypt(data: &mut [u8], key: &[u8; 32], iv: &[u8; 16]) -> io::Result<()> {
    let len = data.len();
    cbc::Encryptor::<Aes256>::new(key.into(), iv.into())
        .encrypt_padded_mut::<NoPadding>(data, len)
        .map(|_| ())
        .map_err(|_| io::Error::other("agile: data is not a whole number of AES blocks"))
}

fn cbc_decrypt(data: &mut [u8], key: &[u8; 32], iv: &[u8; 16]) -> io::Result<()> {
    cbc::Decryptor::<Aes256>::new(key.into(), iv.into())
        .decrypt_padded_mut::<NoPadding>(data)
        .map(|_| ())
        .map_err(|_| io::Error::other("agile: data is not a whole number of AES blocks"))
}

/// The password hash after the spin (H_n of §2.3.4.11).
fn spun_hash(salt: &[u8], password: &str) -> [u8; 64] {
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut hash = sha512(&[salt, &utf16]);
    for round in 0..SPIN_COUNT {
        hash = sha512(&[&round.to_le_bytes(), &hash]);
    }
    hash
}

/// The key that encrypts one verifier field (§2.3.4.11, 256-bit keys).
fn verifier_key(spun: &[u8; 64], block: &[u8; 8]) -> [u8; 32] {
    first(&sha512(&[spun, block]))
}

/// The IV of package segment `index` or of a data-integrity field.
fn derived_iv(key_salt: &[u8; 16], block: &[u8]) -> [u8; 16] {
    first(&sha512(&[key_salt, block]))
}

/// `UNICODE-LP-P4` (§2.1.2): byte length, UTF-16LE, padded to 4 bytes.
fn push_lp_p4(buf: &mut Vec<u8>, text: &str) {
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    buf.extend_from_slice(&(utf16.len() as u32).to_le_bytes());
    buf.extend_from_slice(&utf16);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Version 1.0 as reader, updater and writer.
fn push_versions(buf: &mut Vec<u8>) {
    for _ in 0..3 {
        buf.extend_from_slice(&1u16.to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes());
    }
}

fn data_space_version_info() -> Vec<u8> {
    let mut buf = Vec::new();
    push_lp_p4(&mut buf, "Microsoft.Container.DataSpaces");
    push_versions(&mut buf);
    buf
}

fn data_space_map() -> Vec<u8> {
    let mut entry = Vec::new();
    entry.extend_from_slice(&1u32.to_le_bytes()); // ReferenceComponentCount
    entry.extend_from_slice(&0u32.to_le_bytes()); // a stream
    push_lp_p4(&mut entry, "EncryptedPackage");
    push_lp_p4(&mut entry, "StrongEncryptionDataSpace");
    let mut buf = Vec::new();
    buf.extend_from_slice(&8u32.to_le_bytes()); // HeaderLength
    buf.extend_from_slice(&1u32.to_le_bytes()); // EntryCount
    buf.extend_from_slice(&(entry.len() as u32 + 4).to_le_bytes());
    buf.extend_from_slice(&entry);
    buf
}

fn data_space_definition() -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&8u32.to_le_bytes()); // HeaderLength
    buf.extend_from_slice(&1u32.to_le_bytes()); // TransformReferenceCount
    push_lp_p4(&mut buf, "StrongEncryptionTransform");
    buf
}

fn transform_info() -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&1u32.to_le_bytes()); // TransformType
    push_lp_p4(&mut header, "{FF9A3F03-56EF-4613-BDD5-5A41C1D07246}");
    let mut buf = Vec::new();
    buf.extend_from_slice(&(header.len() as u32 + 4).to_le_bytes()); // TransformLength
    buf.extend_from_slice(&header);
    push_lp_p4(&mut buf, "Microsoft.Container.EncryptionTransform");
    push_versions(&mut buf);
    // EncryptionTransformInfo: no name, block size, cipher mode, reserved
    // (the values Excel writes).
    for value in [0u32, 0, 0, 4] {
        buf.extend_from_slice(&value.to_le_bytes());
    }
    buf
}

/// The password's share of the key encryptor: a random verifier salt and
/// the password hashed with it 100,000 times (§2.3.4.11, about 50 ms).
/// Deriving it apart from the package lets a caller start it early (see
/// [`encrypt_with`]). Its Debug shows nothing; it is wiped when dropped.
pub struct PasswordKey {
    verifier_salt: [u8; 16],
    spun: [u8; 64],
}

impl PasswordKey {
    /// Draws a new verifier salt and spins `password` with it.
    pub fn derive(password: &str) -> Self {
        use rand::RngCore;
        let mut verifier_salt = [0u8; 16];
        rand::rng().fill_bytes(&mut verifier_salt);
        let spun = spun_hash(&verifier_salt, password);
        Self {
            verifier_salt,
            spun,
        }
    }
}

impl std::fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordKey(..)")
    }
}

impl Drop for PasswordKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.spun.zeroize();
    }
}

/// Encrypts the `plain_len` bytes read from `plain` into a new compound
/// file written to `out` (empty, readable and seekable: the compound file
/// is patched as it grows), which is returned, flushed. `plain` is read on
/// a thread of its own (see the module's notes).
pub fn encrypt<R: Read + Send, W: Read + Write + Seek>(
    plain: R,
    plain_len: u64,
    password: &str,
    out: W,
) -> io::Result<W> {
    encrypt_with(plain, plain_len, || PasswordKey::derive(password), out)
}

/// [`encrypt`] with the password's key from `password_key`, which runs on a
/// thread of its own while the package is encrypted: it may hand over a
/// key derived before the workbook was written.
pub fn encrypt_with<R, W, K>(mut plain: R, plain_len: u64, password_key: K, out: W) -> io::Result<W>
where
    R: Read + Send,
    W: Read + Write + Seek,
    K: FnOnce() -> PasswordKey + Send,
{
    use rand::RngCore;
    let mut rng = rand::rng();
    let mut key_salt = [0u8; 16];
    let mut package_key = [0u8; 32];
    let mut verifier_input = [0u8; 16];
    let mut hmac_key = [0u8; 64];
    for field in [
        &mut key_salt[..],
        &mut package_key[..],
        &mut verifier_input[..],
        &mut hmac_key[..],
    ] {
        rng.fill_bytes(field);
    }

    let out = crate::coalesce::Coalescing::new(out)?;
    let mut compound = cfb::CompoundFile::create_with_version(cfb::Version::V3, out)?;
    compound.create_storage("/\x06DataSpaces")?;
    compound.create_storage("/\x06DataSpaces/DataSpaceInfo")?;
    compound.create_storage("/\x06DataSpaces/TransformInfo")?;
    compound.create_storage("/\x06DataSpaces/TransformInfo/StrongEncryptionTransform")?;
    for (path, bytes) in [
        ("/\x06DataSpaces/Version", data_space_version_info()),
        ("/\x06DataSpaces/DataSpaceMap", data_space_map()),
        (
            "/\x06DataSpaces/DataSpaceInfo/StrongEncryptionDataSpace",
            data_space_definition(),
        ),
        (
            "/\x06DataSpaces/TransformInfo/StrongEncryptionTransform/\x06Primary",
            transform_info(),
        ),
    ] {
        compound.create_new_stream(path)?.write_all(&bytes)?;
    }

    // The package, segment by segment; the HMAC covers the stream as
    // stored (size field and ciphertext). A scoped thread reads and
    // encrypts blocks of segments while this one hashes and stores the
    // blocks before: AES on one core, HMAC and the compound file on the
    // other. The password's key (its spin: 100,000 hashes, a fixed 50 ms)
    // comes from a third thread from the start, so small workbooks do not
    // wait for it after their last block.
    let mut mac = <HmacSha512 as KeyInit>::new_from_slice(&hmac_key)
        .map_err(|_| io::Error::other("agile: HMAC key length"))?;
    let password_key = {
        let mut stream = compound.create_new_stream("/EncryptedPackage")?;
        let size = plain_len.to_le_bytes();
        stream.write_all(&size)?;
        mac.update(&size);
        let (key_salt, package_key) = (&key_salt, &package_key);
        let password_key = std::thread::scope(|scope| -> io::Result<PasswordKey> {
            let spin = std::thread::Builder::new()
                .name("agile-spin".into())
                .spawn_scoped(scope, password_key)?;
            let (full, filled) = std::sync::mpsc::sync_channel::<Vec<u8>>(BLOCKS_IN_FLIGHT);
            let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
            let encryptor = std::thread::Builder::new()
                .name("agile-encrypt".into())
                .spawn_scoped(scope, move || -> io::Result<()> {
                    let mut remaining = plain_len;
                    let mut index: u32 = 0;
                    while remaining > 0 {
                        let mut block = spare.try_recv().unwrap_or_default();
                        let take = remaining.min(BLOCK as u64) as usize;
                        block.clear();
                        block.resize(take.next_multiple_of(16), 0);
                        if let Err(err) = plain.read_exact(&mut block[..take]) {
                            block.fill(0);
                            return Err(err);
                        }
                        let mut sealed = Ok(());
                        for segment in block.chunks_mut(SEGMENT) {
                            let iv = derived_iv(key_salt, &index.to_le_bytes());
                            sealed = sealed.and_then(|()| cbc_encrypt(segment, package_key, &iv));
                            index = index.wrapping_add(1);
                        }
                        if let Err(err) = sealed {
                            block.fill(0);
                            return Err(err);
                        }
                        remaining -= take as u64;
                        if full.send(block).is_err() {
                            // The storing side stopped; its error says why.
                            break;
                        }
                    }
                    Ok(())
                })?;
            let mut stored = Ok(());
            while let Ok(block) = filled.recv() {
                stored = stream.write_all(&block);
                if stored.is_err() {
                    break;
                }
                mac.update(&block);
                let _ = give_back.send(block);
            }
            drop(filled);
            let encrypted = encryptor
                .join()
                .map_err(|_| io::Error::other("agile: the encrypting thread panicked"))?;
            let password_key = spin
                .join()
                .map_err(|_| io::Error::other("agile: the password hashing thread panicked"))?;
            stored?;
            encrypted?;
            Ok(password_key)
        })?;
        stream.flush()?;
        password_key
    };
    let (verifier_salt, spun) = (password_key.verifier_salt, &password_key.spun);
    let mut hmac_value = [0u8; 64];
    hmac_value.copy_from_slice(mac.finalize().into_bytes().as_slice());

    let mut encrypted_hmac_key = hmac_key;
    cbc_encrypt(
        &mut encrypted_hmac_key,
        &package_key,
        &derived_iv(&key_salt, &BLOCK_HMAC_KEY),
    )?;
    let mut encrypted_hmac_value = hmac_value;
    cbc_encrypt(
        &mut encrypted_hmac_value,
        &package_key,
        &derived_iv(&key_salt, &BLOCK_HMAC_VALUE),
    )?;
    let mut encrypted_input = verifier_input;
    cbc_encrypt(
        &mut encrypted_input,
        &verifier_key(spun, &BLOCK_VERIFIER_INPUT),
        &verifier_salt,
    )?;
    let mut encrypted_value = sha512(&[&verifier_input]);
    cbc_encrypt(
        &mut encrypted_value,
        &verifier_key(spun, &BLOCK_VERIFIER_VALUE),
        &verifier_salt,
    )?;
    let mut encrypted_key = package_key;
    cbc_encrypt(
        &mut encrypted_key,
        &verifier_key(spun, &BLOCK_KEY_VALUE),
        &verifier_salt,
    )?;
    package_key.fill(0);
    hmac_key.fill(0);

    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\r\n\
         <encryption xmlns=\"http://schemas.microsoft.com/office/2006/encryption\" \
         xmlns:p=\"http://schemas.microsoft.com/office/2006/keyEncryptor/password\" \
         xmlns:c=\"http://schemas.microsoft.com/office/2006/keyEncryptor/certificate\">\
         <keyData saltSize=\"16\" blockSize=\"16\" keyBits=\"256\" hashSize=\"64\" \
         cipherAlgorithm=\"AES\" cipherChaining=\"ChainingModeCBC\" hashAlgorithm=\"SHA512\" \
         saltValue=\"{}\"/>\
         <dataIntegrity encryptedHmacKey=\"{}\" encryptedHmacValue=\"{}\"/>\
         <keyEncryptors><keyEncryptor uri=\"http://schemas.microsoft.com/office/2006/keyEncryptor/password\">\
         <p:encryptedKey spinCount=\"{SPIN_COUNT}\" saltSize=\"16\" blockSize=\"16\" keyBits=\"256\" \
         hashSize=\"64\" cipherAlgorithm=\"AES\" cipherChaining=\"ChainingModeCBC\" \
         hashAlgorithm=\"SHA512\" saltValue=\"{}\" encryptedVerifierHashInput=\"{}\" \
         encryptedVerifierHashValue=\"{}\" encryptedKeyValue=\"{}\"/>\
         </keyEncryptor></keyEncryptors></encryption>",
        b64(&key_salt),
        b64(&encrypted_hmac_key),
        b64(&encrypted_hmac_value),
        b64(&verifier_salt),
        b64(&encrypted_input),
        b64(&encrypted_value),
        b64(&encrypted_key),
    );
    let mut info = Vec::with_capacity(8 + xml.len());
    info.extend_from_slice(&4u16.to_le_bytes());
    info.extend_from_slice(&4u16.to_le_bytes());
    info.extend_from_slice(&0x40u32.to_le_bytes());
    info.extend_from_slice(xml.as_bytes());
    compound
        .create_new_stream("/EncryptionInfo")?
        .write_all(&info)?;
    compound.flush()?;
    compound.into_inner().into_inner()
}

/// Why a file could not be decrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not an agile-encrypted file of the kind [`encrypt`] (or Excel) writes.
    #[error("not an agile-encrypted workbook: {0}")]
    Format(String),
    /// The passphrase does not open this file.
    #[error("the passphrase does not open this file")]
    WrongPassword,
    /// The package does not match its HMAC: damaged or tampered with.
    #[error("the encrypted package fails its integrity check (damaged or altered)")]
    Integrity,
}

/// The fields of `EncryptionInfo` [`decrypt`] needs.
struct Descriptor {
    key_salt: Vec<u8>,
    encrypted_hmac_key: Vec<u8>,
    encrypted_hmac_value: Vec<u8>,
    spin_count: u32,
    verifier_salt: Vec<u8>,
    encrypted_input: Vec<u8>,
    encrypted_value: Vec<u8>,
    encrypted_key: Vec<u8>,
}

/// The value of attribute `name` in the first element named `element`
/// (prefix ignored) of the descriptor.
fn attribute(xml: &str, element: &str, name: &str) -> Result<String, DecryptError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(tag) | Event::Empty(tag))
                if tag.local_name().as_ref() == element.as_bytes() =>
            {
                for attr in tag.attributes().flatten() {
                    if attr.key.local_name().as_ref() == name.as_bytes() {
                        return attr
                            .unescape_value()
                            .map(|v| v.into_owned())
                            .map_err(|err| DecryptError::Format(err.to_string()));
                    }
                }
                return Err(DecryptError::Format(format!("{element} has no {name}")));
            }
            Ok(Event::Eof) => return Err(DecryptError::Format(format!("no {element} element"))),
            Err(err) => return Err(DecryptError::Format(err.to_string())),
            Ok(_) => {}
        }
    }
}

fn parse_descriptor(info: &[u8]) -> Result<Descriptor, DecryptError> {
    if info.len() < 8 || info[..4] != [4, 0, 4, 0] {
        return Err(DecryptError::Format(
            "EncryptionInfo is not version 4.4 (agile)".into(),
        ));
    }
    let xml = std::str::from_utf8(&info[8..])
        .map_err(|_| DecryptError::Format("EncryptionInfo is not UTF-8".into()))?;
    let b64 = |element: &str, name: &str| -> Result<Vec<u8>, DecryptError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(attribute(xml, element, name)?)
            .map_err(|_| DecryptError::Format(format!("{element} {name} is not base64")))
    };
    for (element, name, want) in [
        ("keyData", "cipherAlgorithm", "AES"),
        ("keyData", "hashAlgorithm", "SHA512"),
        ("keyData", "keyBits", "256"),
        ("encryptedKey", "hashAlgorithm", "SHA512"),
        ("encryptedKey", "keyBits", "256"),
    ] {
        let got = attribute(xml, element, name)?;
        if got != want {
            return Err(DecryptError::Format(format!(
                "{element} {name} is {got:?}; this reader supports {want:?}"
            )));
        }
    }
    let spin_count = attribute(xml, "encryptedKey", "spinCount")?
        .parse::<u32>()
        .ok()
        .filter(|&n| n <= 10_000_000)
        .ok_or_else(|| DecryptError::Format("spinCount is not a number up to 10,000,000".into()))?;
    let descriptor = Descriptor {
        key_salt: b64("keyData", "saltValue")?,
        encrypted_hmac_key: b64("dataIntegrity", "encryptedHmacKey")?,
        encrypted_hmac_value: b64("dataIntegrity", "encryptedHmacValue")?,
        spin_count,
        verifier_salt: b64("encryptedKey", "saltValue")?,
        encrypted_input: b64("encryptedKey", "encryptedVerifierHashInput")?,
        encrypted_value: b64("encryptedKey", "encryptedVerifierHashValue")?,
        encrypted_key: b64("encryptedKey", "encryptedKeyValue")?,
    };
    let whole = |v: &[u8], min: usize| v.len() >= min && v.len().is_multiple_of(16);
    if descriptor.key_salt.len() != 16
        || descriptor.verifier_salt.len() != 16
        || !whole(&descriptor.encrypted_hmac_key, 64)
        || !whole(&descriptor.encrypted_hmac_value, 64)
        || !whole(&descriptor.encrypted_input, 16)
        || !whole(&descriptor.encrypted_value, 64)
        || !whole(&descriptor.encrypted_key, 32)
    {
        return Err(DecryptError::Format(
            "a salt or key field has the wrong length".into(),
        ));
    }
    Ok(descriptor)
}

/// Decrypts an agile-encrypted file into `out`, segment by segment, after
/// checking the passphrase and the package's HMAC (a first pass over the
/// ciphertext, so nothing is written for a damaged file). Returns the
/// plaintext size.
pub fn decrypt<R: Read + Seek, W: Write>(
    encrypted: R,
    password: &str,
    mut out: W,
) -> Result<u64, DecryptError> {
    let mut compound = cfb::CompoundFile::open(encrypted)
        .map_err(|err| DecryptError::Format(format!("not a compound file: {err}")))?;
    let mut info = Vec::new();
    compound
        .open_stream("/EncryptionInfo")
        .map_err(|_| DecryptError::Format("no EncryptionInfo stream".into()))?
        .take(1 << 20)
        .read_to_end(&mut info)?;
    let d = parse_descriptor(&info)?;

    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut spun = sha512(&[&d.verifier_salt, &utf16]);
    for round in 0..d.spin_count {
        spun = sha512(&[&round.to_le_bytes(), &spun]);
    }
    let iv: [u8; 16] = first(&d.verifier_salt);
    let mut input = d.encrypted_input.clone();
    cbc_decrypt(&mut input, &verifier_key(&spun, &BLOCK_VERIFIER_INPUT), &iv)?;
    let mut value = d.encrypted_value.clone();
    cbc_decrypt(&mut value, &verifier_key(&spun, &BLOCK_VERIFIER_VALUE), &iv)?;
    if sha512(&[&input[..16]]) != value[..64] {
        return Err(DecryptError::WrongPassword);
    }
    let mut key = d.encrypted_key.clone();
    cbc_decrypt(&mut key, &verifier_key(&spun, &BLOCK_KEY_VALUE), &iv)?;
    let package_key: [u8; 32] = first(&key);
    key.fill(0);
    let key_salt: [u8; 16] = first(&d.key_salt);

    let mut hmac_key = d.encrypted_hmac_key.clone();
    cbc_decrypt(
        &mut hmac_key,
        &package_key,
        &derived_iv(&key_salt, &BLOCK_HMAC_KEY),
    )?;
    let mut hmac_value = d.encrypted_hmac_value.clone();
    cbc_decrypt(
        &mut hmac_value,
        &package_key,
        &derived_iv(&key_salt, &BLOCK_HMAC_VALUE),
    )?;
    let mut mac = <HmacSha512 as KeyInit>::new_from_slice(&hmac_key[..64])
        .map_err(|_| DecryptError::Format("HMAC key length".into()))?;
    hmac_key.fill(0);

    let mut stream = compound
        .open_stream("/EncryptedPackage")
        .map_err(|_| DecryptError::Format("no EncryptedPackage stream".into()))?;
    let stream_len = stream.len();
    let mut size = [0u8; 8];
    stream.read_exact(&mut size)?;
    let plain_len = u64::from_le_bytes(size);
    if plain_len.next_multiple_of(16) > stream_len.saturating_sub(8) {
        return Err(DecryptError::Format(
            "the package is shorter than its size field".into(),
        ));
    }
    // First pass: the HMAC over the stream as stored.
    mac.update(&size);
    let mut buffer = vec![0u8; 1 << 16];
    let mut left = stream_len - 8;
    while left > 0 {
        let take = left.min(buffer.len() as u64) as usize;
        stream.read_exact(&mut buffer[..take])?;
        mac.update(&buffer[..take]);
        left -= take as u64;
    }
    if mac.verify_slice(&hmac_value[..64]).is_err() {
        return Err(DecryptError::Integrity);
    }
    // Second pass: decrypt.
    stream.seek(io::SeekFrom::Start(8))?;
    let mut segment = vec![0u8; SEGMENT];
    let mut remaining = plain_len;
    let mut index: u32 = 0;
    while remaining > 0 {
        let take = remaining.min(SEGMENT as u64) as usize;
        let padded = take.next_multiple_of(16);
        stream.read_exact(&mut segment[..padded])?;
        cbc_decrypt(
            &mut segment[..padded],
            &package_key,
            &derived_iv(&key_salt, &index.to_le_bytes()),
        )?;
        out.write_all(&segment[..take])?;
        remaining -= take as u64;
        index = index.wrapping_add(1);
    }
    segment.fill(0);
    out.flush()?;
    Ok(plain_len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Cursor;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn round_trips_every_size_class() {
        for len in [
            0,
            1,
            15,
            16,
            4095,
            4096,
            4097,
            3 * 4096 + 5,
            200_000,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK + 4097,
        ] {
            let plain = sample(len);
            let file = encrypt(
                &plain[..],
                len as u64,
                "pässwörd 🔐",
                Cursor::new(Vec::new()),
            )
            .unwrap();
            let mut back = Vec::new();
            let n = decrypt(Cursor::new(file.into_inner()), "pässwörd 🔐", &mut back).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(back, plain, "length {len}");
        }
    }

    #[test]
    fn an_independent_reader_opens_it() {
        // office-crypto: a separate implementation of the same standard,
        // over more than one block of the encrypting thread.
        let plain = sample(2 * BLOCK + 50_000);
        let file = encrypt(
            &plain[..],
            plain.len() as u64,
            "correct horse",
            Cursor::new(Vec::new()),
        )
        .unwrap();
        let back = office_crypto::decrypt_from_bytes(file.into_inner(), "correct horse").unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn a_plaintext_shorter_than_announced_fails_and_a_failing_store_stops_the_reading() {
        // The reading thread fails: the error comes back, nothing hangs.
        let plain = sample(BLOCK + 10);
        let err = encrypt(&plain[..], 3 * BLOCK as u64, "pw", Cursor::new(Vec::new())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");

        // The storing side fails after a few writes: its error comes back
        // and the reading thread stops.
        #[derive(Debug)]
        struct FailingStore {
            inner: Cursor<Vec<u8>>,
            budget: usize,
        }
        impl Read for FailingStore {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.inner.read(buf)
            }
        }
        impl Seek for FailingStore {
            fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
                self.inner.seek(pos)
            }
        }
        impl Write for FailingStore {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.budget < buf.len() {
                    return Err(io::Error::other("disk full"));
                }
                self.budget -= buf.len();
                self.inner.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let plain = sample(8 * BLOCK);
        let store = FailingStore {
            inner: Cursor::new(Vec::new()),
            budget: 2 * BLOCK,
        };
        let err = encrypt(&plain[..], plain.len() as u64, "pw", store).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn a_wrong_password_or_a_flipped_bit_is_refused() {
        let plain = sample(10_000);
        let bytes = encrypt(
            &plain[..],
            plain.len() as u64,
            "right",
            Cursor::new(Vec::new()),
        )
        .unwrap()
        .into_inner();
        let err = decrypt(Cursor::new(bytes.clone()), "wrong", io::sink()).unwrap_err();
        assert!(matches!(err, DecryptError::WrongPassword), "{err}");
        // Flip a ciphertext bit inside the package: find it by its size
        // field followed by ciphertext (the plaintext never appears).
        let mut tampered = bytes.clone();
        let at = tampered
            .windows(8)
            .position(|w| w == (plain.len() as u64).to_le_bytes())
            .unwrap();
        tampered[at + 8 + 100] ^= 1;
        let mut out = Vec::new();
        let err = decrypt(Cursor::new(tampered), "right", &mut out).unwrap_err();
        assert!(matches!(err, DecryptError::Integrity), "{err}");
        assert!(out.is_empty(), "nothing is written for a damaged file");
    }

    #[test]
    fn the_file_holds_no_plaintext() {
        let plain = b"canary-password-in-a-workbook ".repeat(500);
        let bytes = encrypt(
            &plain[..],
            plain.len() as u64,
            "pw",
            Cursor::new(Vec::new()),
        )
        .unwrap()
        .into_inner();
        assert!(!bytes.windows(8).any(|w| w == b"canary-p"));
        assert_eq!(
            &bytes[..8],
            &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]
        );
    }
}
