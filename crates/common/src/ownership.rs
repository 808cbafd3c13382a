//! Files created in a state directory that two users share.
//!
//! The PostTLS worker runs as root and the web pages as `_posttls`; both
//! open the same database and link key in `/var/lib/posttls`, and
//! whichever starts first creates them. A file root created would be
//! root's, and the web pages could not write the database or read the key.
//! So a file a program creates there, as root, is given to the directory's
//! owner and group: the same files, whoever came first.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Gives `file`, just created in `dir`, to `dir`'s owner and group when
/// this process runs as root; does nothing otherwise (an unprivileged
/// creator already is the owner it can be).
pub fn give_to_directory_owner(file: &File, dir: &Path) -> io::Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let meta = fs::metadata(dir)?;
    std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
}

/// Creates an empty file at `path` with `mode`, given to its directory's
/// owner as by [`give_to_directory_owner`], unless something already is
/// there. `Ok(true)` when it was created.
pub fn create_owned_like_directory(path: &Path, mode: u32) -> io::Result<bool> {
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    give_to_directory_owner(&file, dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_created_file_belongs_to_the_directory_owner_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A directory owned by someone else, as /var/lib/posttls is
        // `_posttls`'s while the worker runs as root.
        let (uid, gid) = if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
            (65534, 65534)
        } else {
            let meta = fs::metadata(dir.path()).unwrap();
            (meta.uid(), meta.gid())
        };
        let path = dir.path().join("state.sqlite");
        assert!(create_owned_like_directory(&path, 0o600).unwrap());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        fs::write(&path, b"kept").unwrap();
        assert!(!create_owned_like_directory(&path, 0o600).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"kept");
    }
}
