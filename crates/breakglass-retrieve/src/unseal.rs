//! Decrypting a stored backup with what the on-call person holds.
//!
//! - `password`: ECMA-376 agile decryption ([`breakglass_render::agile`]),
//!   streamed segment by segment into the output: memory stays at a few
//!   buffers whatever the workbook's size. The password verifier and the
//!   package's HMAC are checked before anything is written; the manifest's
//!   key id is compared first so the message can say which passphrase the
//!   file needs, and the result must be a zip package.
//! - `age`: streamed through the `age` crate with X25519 identities read
//!   from an identity file (`AGE-SECRET-KEY-1…` lines, as `age-keygen`
//!   writes them).
//! - `none`: copied.
//!
//! The output is created new with mode `0600`, and removed again when
//! anything fails.

use crate::RetrieveError;
use breakglass_core::Secret;
use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;

/// What opens a stored file.
#[derive(Default)]
pub struct OpenKey {
    /// The break-glass passphrase, for `password` files.
    pub passphrase: Option<Secret>,
    /// Age identities, for `age` files.
    pub identities: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for OpenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenKey")
            .field("passphrase", &self.passphrase)
            .field("identities", &self.identities.len())
            .finish()
    }
}

/// Reads the X25519 identities of an age identity file; comments and blank
/// lines are skipped, anything else that is not an identity is an error
/// that names the line (never its content).
pub fn read_identity_file(path: &Path) -> Result<Vec<age::x25519::Identity>, RetrieveError> {
    let text = breakglass_core::limits::read_text(
        path,
        breakglass_core::limits::MAX_SECRET_FILE_BYTES,
        "the identity file",
    )?;
    let mut identities = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = age::x25519::Identity::from_str(line).map_err(|_| {
            RetrieveError::io(
                "reading the identity file",
                path,
                format!(
                    "line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)",
                    number + 1
                ),
            )
        })?;
        identities.push(identity);
    }
    if identities.is_empty() {
        return Err(RetrieveError::io(
            "reading the identity file",
            path,
            "it holds no AGE-SECRET-KEY-1… line",
        ));
    }
    Ok(identities)
}

/// Decrypts `stored` (protected as `encryption` says, with the manifest's
/// `key_id`) into the new private file `out`.
pub fn open_sealed(
    stored: &Path,
    out: &Path,
    encryption: &str,
    key_id: &str,
    key: &OpenKey,
) -> Result<(), RetrieveError> {
    let result = open_into(stored, out, encryption, key_id, key);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

fn open_into(
    stored: &Path,
    out: &Path,
    encryption: &str,
    key_id: &str,
    key: &OpenKey,
) -> Result<(), RetrieveError> {
    let file = stored.display().to_string();
    match encryption {
        "none" => {
            let mut input = std::fs::File::open(stored)
                .map_err(|err| RetrieveError::io("opening", stored, err))?;
            let mut output = breakglass_core::private_fs::create_new(out)
                .map_err(|err| RetrieveError::io("creating", out, err))?;
            std::io::copy(&mut input, &mut output)
                .and_then(|_| output.sync_all())
                .map_err(|err| RetrieveError::io("writing", out, err))
        }
        "password" => {
            let passphrase = key.passphrase.as_ref().ok_or_else(|| RetrieveError::KeyNeeded {
                file: file.clone(),
                encryption: "password".into(),
                what: "give the break-glass passphrase (prompt, --passphrase-file or BREAKGLASS_PASSPHRASE)".into(),
            })?;
            if breakglass_render::encrypt::passphrase_matches(passphrase, key_id) == Some(false) {
                return Err(RetrieveError::WrongPassphrase {
                    file,
                    hint: format!(
                        "it does not match the file's key id {key_id:?}; try the passphrase that was in use when the file was made"
                    ),
                });
            }
            let input = std::fs::File::open(stored)
                .map_err(|err| RetrieveError::io("opening", stored, err))?;
            let output = breakglass_core::private_fs::create_new(out)
                .map_err(|err| RetrieveError::io("creating", out, err))?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 16, output);
            let decrypted = breakglass_render::agile::decrypt(
                BufReader::with_capacity(1 << 16, input),
                passphrase.expose(),
                &mut writer,
            );
            match decrypted {
                Ok(_) => {}
                Err(breakglass_render::agile::DecryptError::WrongPassword) => {
                    return Err(RetrieveError::WrongPassphrase {
                        file,
                        hint: "its password verifier does not match".into(),
                    });
                }
                Err(breakglass_render::agile::DecryptError::Io(err)) => {
                    return Err(RetrieveError::io("decrypting", stored, err));
                }
                Err(err) => {
                    return Err(RetrieveError::Workbook {
                        file,
                        reason: err.to_string(),
                    });
                }
            }
            let output = writer
                .into_inner()
                .map_err(|err| RetrieveError::io("writing", out, err.into_error()))?;
            output
                .sync_all()
                .map_err(|err| RetrieveError::io("writing", out, err))?;
            let mut magic = [0u8; 4];
            let is_zip = std::fs::File::open(out)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok()
                && magic == *b"PK\x03\x04";
            if !is_zip {
                return Err(RetrieveError::WrongPassphrase {
                    file,
                    hint: "it decrypts to noise, not a workbook".into(),
                });
            }
            Ok(())
        }
        "age" => {
            if key.identities.is_empty() {
                return Err(RetrieveError::KeyNeeded {
                    file,
                    encryption: "age".into(),
                    what: format!(
                        "give an identity file (--identity) holding the private key of one of: {key_id}"
                    ),
                });
            }
            let input = BufReader::new(
                std::fs::File::open(stored)
                    .map_err(|err| RetrieveError::io("opening", stored, err))?,
            );
            let decryptor =
                age::Decryptor::new_buffered(input).map_err(|err| RetrieveError::Workbook {
                    file: file.clone(),
                    reason: format!("not an age file: {err}"),
                })?;
            let mut reader = decryptor
                .decrypt(key.identities.iter().map(|i| i as &dyn age::Identity))
                .map_err(|err| match err {
                    age::DecryptError::NoMatchingKeys => RetrieveError::WrongIdentity {
                        file: file.clone(),
                        hint: format!("the file was sealed to {key_id}"),
                    },
                    other => RetrieveError::Workbook {
                        file: file.clone(),
                        reason: other.to_string(),
                    },
                })?;
            let mut output = breakglass_core::private_fs::create_new(out)
                .map_err(|err| RetrieveError::io("creating", out, err))?;
            std::io::copy(&mut reader, &mut output).map_err(|err| RetrieveError::Workbook {
                file: file.clone(),
                reason: format!("the age stream is damaged: {err}"),
            })?;
            output
                .sync_all()
                .map_err(|err| RetrieveError::io("writing", out, err))
        }
        other => Err(RetrieveError::Workbook {
            file,
            reason: format!("unknown encryption {other:?} (expected password, age or none)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakglass_config::Encryption;

    fn workbook(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("plain.xlsx");
        let mut zip = b"PK\x03\x04".to_vec();
        zip.extend(std::iter::repeat_n(b'x', 10_000));
        std::fs::write(&path, zip).unwrap();
        path
    }

    #[test]
    fn a_password_file_opens_with_its_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let plain = workbook(dir.path());
        let sealed = dir.path().join("sealed.xlsx");
        let passphrase = Secret::new("correct horse battery staple");
        let info = breakglass_render::encrypt::seal(
            &plain,
            &sealed,
            &Encryption::Password(Some(passphrase.clone())),
        )
        .unwrap();
        let out = dir.path().join("out.xlsx");
        let key = OpenKey {
            passphrase: Some(passphrase),
            ..OpenKey::default()
        };
        open_sealed(&sealed, &out, "password", &info.key_id, &key).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());

        let wrong = OpenKey {
            passphrase: Some(Secret::new("Tr0ub4dor&3")),
            ..OpenKey::default()
        };
        let out2 = dir.path().join("out2.xlsx");
        let err = open_sealed(&sealed, &out2, "password", &info.key_id, &wrong).unwrap_err();
        assert!(
            matches!(err, RetrieveError::WrongPassphrase { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&info.key_id), "{err}");
        assert!(!out2.exists());
        // Without a key id to compare, the file's own verifier refuses it.
        let err = open_sealed(&sealed, &out2, "password", "", &wrong).unwrap_err();
        assert!(
            matches!(err, RetrieveError::WrongPassphrase { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("verifier"), "{err}");
        assert!(!out2.exists());
        assert!(!err.to_string().contains("Tr0ub4dor"), "{err}");
    }

    #[test]
    fn an_age_file_names_its_recipients_when_the_identity_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let plain = workbook(dir.path());
        let sealed = dir.path().join("sealed.xlsx.age");
        let right = age::x25519::Identity::generate();
        let wrong = age::x25519::Identity::generate();
        let recipient = right.to_public().to_string();
        let info = breakglass_render::encrypt::seal(
            &plain,
            &sealed,
            &Encryption::Age(vec![recipient.clone()]),
        )
        .unwrap();
        let out = dir.path().join("out.xlsx");
        let err = open_sealed(
            &sealed,
            &out,
            "age",
            &info.key_id,
            &OpenKey {
                identities: vec![wrong],
                ..OpenKey::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, RetrieveError::WrongIdentity { .. }), "{err}");
        assert!(err.to_string().contains(&recipient), "{err}");
        open_sealed(
            &sealed,
            &out,
            "age",
            &info.key_id,
            &OpenKey {
                identities: vec![right],
                ..OpenKey::default()
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());
    }

    #[test]
    fn a_damaged_password_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let plain = workbook(dir.path());
        let sealed = dir.path().join("sealed.xlsx");
        let passphrase = Secret::new("pw");
        breakglass_render::encrypt::seal(
            &plain,
            &sealed,
            &Encryption::Password(Some(passphrase.clone())),
        )
        .unwrap();
        let mut bytes = std::fs::read(&sealed).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&sealed, bytes).unwrap();
        let err = open_sealed(
            &sealed,
            &dir.path().join("out"),
            "password",
            "",
            &OpenKey {
                passphrase: Some(passphrase),
                ..OpenKey::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                RetrieveError::Workbook { .. } | RetrieveError::WrongPassphrase { .. }
            ),
            "{err}"
        );
    }
}
