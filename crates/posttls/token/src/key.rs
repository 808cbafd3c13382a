//! The HMAC key that signs action and CSRF tokens, and its key file.
//!
//! Whoever can read the key can release or delete any deferred message, so
//! the file must be readable by its owner only; a key file that others can
//! read is refused rather than used, as OpenSSH does with private keys.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use mailtls_common::ownership::give_to_directory_owner;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;

/// The length of a key and of its file, in bytes.
const KEY_LEN: usize = 32;

/// Problems with the key file, each saying what the administrator can do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file or its directory could not be read or written.
    #[error("token key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Group or others have some access to the file.
    #[error(
        "token key file {path} has mode {mode:04o}: anyone who can read it can release or delete \
         queued mail; make it readable by its owner only (chmod 600)"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold exactly one key.
    #[error(
        "token key file {path} holds {len} bytes instead of {KEY_LEN}: it is not a PostTLS key; \
         remove it to have a new key created (links already sent stop working)"
    )]
    Length {
        /// The key file.
        path: PathBuf,
        /// Its length in bytes, or `KEY_LEN + 1` for anything longer.
        len: usize,
    },
}

/// 32 random bytes, the HMAC-SHA256 key of the tokens.
///
/// `Debug` does not show the bytes, so keys never end up in logs; there is no
/// `PartialEq`, so nothing compares keys in variable time.
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Self {
        let mut bytes = [0; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        SecretKey(bytes)
    }

    /// The key in `path`, created there if the file does not exist.
    ///
    /// A new file is written under a temporary name with mode 0600, synced,
    /// and then linked to `path` only if nothing is there yet, so readers
    /// never see a half-written key, and two processes starting at the same
    /// time (the worker and the web process on first start) end up with the
    /// same key: the loser of the race loads the winner's file. Created by
    /// root, the file is given to the directory's owner
    /// ([`give_to_directory_owner`]).
    ///
    /// # Errors
    /// [`KeyError::Permissions`] for a file that group or others can access,
    /// [`KeyError::Length`] for a file that is not 32 bytes long,
    /// [`KeyError::Io`] when the file or its directory cannot be used.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            loaded => return loaded,
        }
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = directory_of(path);
        let key = Self::generate();
        // tempfile creates the file with mode 0600 and O_EXCL.
        let mut temp = tempfile::Builder::new()
            .prefix(".posttls-key.")
            .tempfile_in(dir)
            .map_err(io_error)?;
        temp.write_all(&key.0).map_err(io_error)?;
        // The worker (root) and the web pages (`_posttls`) both read it.
        give_to_directory_owner(temp.as_file(), dir).map_err(io_error)?;
        temp.as_file().sync_all().map_err(io_error)?;
        match temp.persist_noclobber(path) {
            Ok(_) => {
                // Make the new name durable, so a crash cannot lose the key
                // that already signed links.
                File::open(dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(io_error)?;
                Ok(key)
            }
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(err) => Err(io_error(err.error)),
        }
    }

    /// The key in an existing file, checked as by [`SecretKey::load_or_create`].
    fn load(path: &Path) -> Result<Self, KeyError> {
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // The mode of the file actually opened, not of whatever the path
        // names a moment later.
        let mode = file.metadata().map_err(io_error)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        file.take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            path: path.to_owned(),
            len: bytes.len(),
        })?;
        Ok(SecretKey(key))
    }

    /// An HMAC-SHA256 already fed with `context`, a constant that names the
    /// kind of token and its format version. Every kind has its own context,
    /// none a prefix of another, so a tag made for one kind never verifies
    /// as another although they share the key.
    pub(crate) fn mac(&self, context: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(context);
        mac
    }
}

/// The directory that holds `path`: "." for a bare file name, whose parent
/// is the empty path that no system call accepts.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::Arc;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(SecretKey::generate().0, SecretKey::generate().0);
    }

    #[test]
    fn debug_hides_the_bytes() {
        assert_eq!(format!("{:?}", SecretKey([7; KEY_LEN])), "SecretKey(..)");
    }

    #[test]
    fn creates_a_private_file_and_loads_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let created = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), created.0);
        let loaded = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(loaded.0, created.0);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token.key"]);
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(directory_of(Path::new("token.key")), Path::new("."));
        assert_eq!(
            directory_of(Path::new("/etc/posttls/token.key")),
            Path::new("/etc/posttls")
        );
        assert_eq!(directory_of(Path::new("keys/token.key")), Path::new("keys"));
    }

    #[test]
    fn refuses_files_others_can_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        SecretKey::load_or_create(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644, 0o666] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = SecretKey::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::Permissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        // Owner-only modes other than 0600 are fine.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        SecretKey::load_or_create(&path).unwrap();
    }

    #[test]
    fn refuses_files_of_the_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        for (content, len) in [
            (vec![], 0),
            (vec![1; 31], 31),
            (vec![1; 33], 33),
            (vec![1; 4096], 33),
        ] {
            fs::write(&path, &content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = SecretKey::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::Length { len: l, .. } if l == len),
                "{err}"
            );
            // The file is not replaced: the administrator decides.
            assert_eq!(fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn reports_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("token.key");
        let err = SecretKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(&err, KeyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(err.to_string().contains("missing/token.key"), "{err}");
    }

    #[test]
    fn concurrent_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("token.key"));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = Arc::clone(&path);
                std::thread::spawn(move || SecretKey::load_or_create(&path).unwrap().0)
            })
            .collect();
        let keys: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(fs::read(&*path).unwrap(), keys[0]);
    }
}
