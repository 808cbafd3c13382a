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

/// Slots of a [`RecvBatch`]: more than the kernel's default queue of 10.
pub const BATCH_SLOTS: usize = 32;

/// Buffers for [`CollectorSocket::recv_batch`], made once and reused.
pub struct RecvBatch {
    slots: Vec<Vec<u8>>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` only ever point into
// `slots` and `iovecs` of the same value, which moves with them.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        let mut slots: Vec<Vec<u8>> = (0..BATCH_SLOTS).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
        let iovecs: Vec<libc::iovec> = slots
            .iter_mut()
            .map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            })
            .collect();
        // SAFETY: an all-zero mmsghdr is a valid empty header.
        let headers = (0..BATCH_SLOTS)
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        RecvBatch {
            slots,
            iovecs,
            headers,
        }
    }

    /// Points every header at its slot (the kernel changes the lengths).
    fn prepare(&mut self) {
        for (i, header) in self.headers.iter_mut().enumerate() {
            self.iovecs[i].iov_base = self.slots[i].as_mut_ptr().cast();
            self.iovecs[i].iov_len = self.slots[i].len();
            header.msg_hdr.msg_iov = &mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = std::ptr::null_mut();
            header.msg_hdr.msg_namelen = 0;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
    }

    /// The datagram in slot `i` (truncated to the slot) and its real length.
    pub fn get(&self, i: usize) -> (&[u8], usize) {
        let len = self.headers[i].msg_len as usize;
        (&self.slots[i][..len.min(MAX_DATAGRAM)], len)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

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

    /// Receive up to `batch.len()` datagrams with one system call
    /// (`recvmmsg`): when `wait`, block (up to the read timeout) for the
    /// first and take what else is queued already; otherwise take only
    /// what is queued. Returns how many arrived; their real lengths (even
    /// when longer than a slot) come from [`RecvBatch::get`].
    pub fn recv_batch(&self, batch: &mut RecvBatch, wait: bool) -> io::Result<usize> {
        let flags = libc::MSG_TRUNC
            | if wait {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            };
        batch.prepare();
        // SAFETY: every header points at its own iovec, which points at a
        // slot buffer of the length it states; all live as long as `batch`.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                batch.headers.as_mut_ptr(),
                batch.headers.len() as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(0)
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
        let mut batch = RecvBatch::new();
        assert_eq!(sock.recv_batch(&mut batch, false).unwrap(), 0);
        assert_eq!(sock.recv_batch(&mut batch, true).unwrap(), 0, "times out");
        let sender = UnixDatagram::unbound().unwrap();
        // Room for a datagram beyond MAX_DATAGRAM (the kernel doubles the
        // value, up to twice net.core.wmem_max, about 416 KiB by default).
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt reads a c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                sender.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        sender.send_to(b"first", &path).unwrap();
        sender
            .send_to(&vec![b'x'; MAX_DATAGRAM + 5], &path)
            .unwrap();
        sender.send_to(b"third", &path).unwrap();
        let n = sock.recv_batch(&mut batch, true).unwrap();
        let got: Vec<(Vec<u8>, usize)> = (0..n)
            .map(|i| {
                let (data, len) = batch.get(i);
                (data.to_vec(), len)
            })
            .collect();
        assert_eq!(
            got[0],
            (b"first".to_vec(), 5),
            "one call takes all that is queued"
        );
        assert_eq!(n, 3);
        assert_eq!(got[2], (b"third".to_vec(), 5));
        // An oversized datagram is truncated to its slot and reports its
        // real length.
        assert_eq!(got[1].0.len(), MAX_DATAGRAM);
        assert_eq!(got[1].1, MAX_DATAGRAM + 5);
        sock.unlink();
        assert!(!path.exists());
    }
}
