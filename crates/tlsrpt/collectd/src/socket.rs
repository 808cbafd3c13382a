//! The collector's datagram socket: created fresh at start with the
//! configured owner and mode, read without blocking, removed at exit.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// Largest datagram we accept. libtlsrpt datagrams are a few hundred bytes;
/// anything near this size is garbage, and a larger one is reported as such
/// instead of being silently truncated.
pub const MAX_DATAGRAM: usize = 256 * 1024;

/// Longest wait for a datagram before the receiver looks at the clock.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Below this `net.unix.max_dgram_qlen`, short bursts from a busy MTA are
/// dropped by the kernel before any receiver can read them.
pub const RECOMMENDED_QLEN: u64 = 256;

/// Ownership and permissions to apply after bind.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    pub user: Option<String>,
    pub group: Option<String>,
    /// Octal mode, e.g. `0o660`.
    pub mode: Option<u32>,
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot remove the old socket {0}: {1}")]
    Remove(PathBuf, io::Error),
    #[error("cannot bind the socket {0}: {1}")]
    Bind(PathBuf, io::Error),
    #[error("socket {path}: {what}")]
    Permissions { path: PathBuf, what: String },
}

/// The bound socket; dropping it removes the socket file.
pub struct CollectorSocket {
    socket: UnixDatagram,
    path: PathBuf,
    removed: bool,
}

impl CollectorSocket {
    /// Remove whatever is at `path`, bind a new datagram socket there and
    /// apply owner, group and mode.
    pub fn bind(path: &Path, permissions: &Permissions) -> Result<CollectorSocket, SocketError> {
        match std::fs::remove_file(path) {
            Ok(()) => log::info!("removed old socket {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SocketError::Remove(path.to_path_buf(), e)),
        }
        let socket =
            UnixDatagram::bind(path).map_err(|e| SocketError::Bind(path.to_path_buf(), e))?;
        // Blocking reads with a timeout: one system call per datagram, and a
        // timed-out or signal-interrupted read returns control to the loop
        // (Linux does not restart socket reads that have a timeout).
        socket
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| SocketError::Bind(path.to_path_buf(), e))?;
        let sock = CollectorSocket {
            socket,
            path: path.to_path_buf(),
            removed: false,
        };
        sock.apply(permissions)?;
        Ok(sock)
    }

    fn apply(&self, p: &Permissions) -> Result<(), SocketError> {
        let err = |what: String| SocketError::Permissions {
            path: self.path.clone(),
            what,
        };
        if p.user.is_some() || p.group.is_some() {
            let uid = match &p.user {
                None => None,
                Some(name) => Some(lookup_user(name).map_err(err)?),
            };
            let gid = match &p.group {
                None => None,
                Some(name) => Some(lookup_group(name).map_err(err)?),
            };
            nix::unistd::chown(&self.path, uid, gid)
                .map_err(|e| err(format!("cannot change owner: {e}")))?;
            log::info!(
                "socket {} owned by user {:?} group {:?}",
                self.path.display(),
                p.user,
                p.group
            );
        }
        if let Some(mode) = p.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| err(format!("cannot set mode {mode:04o}: {e}")))?;
            log::info!("socket {} mode {mode:04o}", self.path.display());
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read one datagram, waiting at most the socket's receive timeout when
    /// `wait` is true. `Ok(None)` when nothing arrived (timeout, empty queue,
    /// or a signal interrupted the wait); `Ok(Some(len))` with `len` the full
    /// datagram length, which exceeds `buf.len()` when it was truncated.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: buf is valid for writes of buf.len() bytes; MSG_TRUNC
        // makes the kernel return the real length of a longer datagram.
        let n = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(None)
            }
            _ => Err(e),
        }
    }

    /// Change how long a waiting read blocks.
    pub fn set_read_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        self.socket.set_read_timeout(Some(timeout))
    }

    /// Remove the socket file so that senders fail at once instead of
    /// queueing into a socket nobody will read; what is already queued can
    /// still be read.
    pub fn unlink(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::error!("cannot remove socket {}: {e}", self.path.display());
        }
    }
}

impl Drop for CollectorSocket {
    fn drop(&mut self) {
        self.unlink();
    }
}

fn lookup_user(name: &str) -> Result<nix::unistd::Uid, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(nix::unistd::Uid::from_raw(id));
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid),
        Ok(None) => Err(format!("socketuser {name:?}: no such user")),
        Err(e) => Err(format!("socketuser {name:?}: {e}")),
    }
}

fn lookup_group(name: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(id));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("socketgroup {name:?}: no such group")),
        Err(e) => Err(format!("socketgroup {name:?}: {e}")),
    }
}

/// Parse `socketmode` as the upstream does (an octal string such as `0660`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim(), 8)
        .map_err(|_| format!("socketmode {text:?} is not an octal mode such as 0660"))?;
    if mode > 0o7777 {
        return Err(format!("socketmode {text:?} is larger than 07777"));
    }
    if !text.trim().starts_with('0') {
        log::warn!("socketmode {text:?} does not start with 0; it is read as octal {mode:04o}");
    }
    Ok(mode)
}

/// Warn when the kernel's queue for unix datagram sockets is short, and say
/// how to raise it. The value is taken when the socket is created, so it has
/// to be raised before the collector starts.
pub fn check_queue_length() {
    let path = "/proc/sys/net/unix/max_dgram_qlen";
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let Ok(qlen) = text.trim().parse::<u64>() else {
        return;
    };
    if qlen < RECOMMENDED_QLEN {
        log::warn!(
            "net.unix.max_dgram_qlen is {qlen}: the kernel drops datagrams when more than {qlen} are waiting, so bursts from a busy MTA get lost before they are read. \
             Raise it before starting tlsrpt-collectd: sysctl -w net.unix.max_dgram_qlen=1024 (and put net.unix.max_dgram_qlen = 1024 into /etc/sysctl.d/90-tlsrpt.conf to keep it)"
        );
    } else {
        log::info!("net.unix.max_dgram_qlen is {qlen}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("220").unwrap(), 0o220);
        assert!(parse_mode("rw-").is_err());
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn bind_replaces_an_old_socket_and_applies_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"stale").unwrap();
        let perms = Permissions {
            mode: Some(0o620),
            ..Default::default()
        };
        let mut sock = CollectorSocket::bind(&path, &perms).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o620);
        let mut buf = [0u8; 16];
        assert_eq!(sock.recv(&mut buf, false).unwrap(), None);
        assert_eq!(sock.recv(&mut buf, true).unwrap(), None, "times out");
        UnixDatagram::unbound()
            .unwrap()
            .send_to(b"0123456789abcdefXYZ", &path)
            .unwrap();
        assert_eq!(
            sock.recv(&mut buf, true).unwrap(),
            Some(19),
            "reports the untruncated length"
        );
        sock.unlink();
        assert!(!path.exists());
    }
}
