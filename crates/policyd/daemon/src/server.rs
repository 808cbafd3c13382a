//! The socketmap server (Postfix `socketmap_table(5)`): netstring requests
//! in, one answer per request, in order, on the same connection.
//!
//! A framing error leaves the stream out of step, so the connection is
//! closed; a bad request in a good frame gets `PERM` and the connection
//! goes on. Lookups run on tokio's blocking pool (DNS and HTTPS block), one
//! at a time per connection, so answers keep the order of requests
//! however many a client pipelines.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use policyd_policy::{Answer, Decoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

use crate::lookup::Engine;

/// A connection idle this long is closed; Postfix reconnects when it needs
/// to, and idle connections then cannot pile up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to listen (the `listen` option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `inet:ADDRESS:PORT`: Postfix's `socketmap:inet:ADDRESS:PORT:postfix`.
    Inet(std::net::SocketAddr),
    /// `unix:PATH`: `socketmap:unix:PATH:postfix`. Postfix's smtp runs as
    /// user postfix and usually chrooted to the queue directory, and it
    /// opens the socket after the chroot, so the path must be under the
    /// queue directory (given relative to it in main.cf) and writable by
    /// user postfix.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Inet(address) => write!(f, "inet:{address}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(value: &str) -> Result<Listen, String> {
        if let Some(address) = value.strip_prefix("inet:") {
            address.parse().map(Listen::Inet).map_err(|_| {
                format!("{value:?}: inet: needs ADDRESS:PORT, e.g. inet:127.0.0.1:8461")
            })
        } else if let Some(path) = value.strip_prefix("unix:").filter(|p| p.starts_with('/')) {
            Ok(Listen::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "{value:?} is neither inet:ADDRESS:PORT nor unix:/ABSOLUTE/PATH"
            ))
        }
    }
}

/// A bound listener.
pub enum Listener {
    Inet(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `listen`; a unix socket gets `mode` (a stale socket file at
    /// the path is replaced).
    pub async fn bind(listen: &Listen, mode: u32) -> std::io::Result<Listener> {
        match listen {
            Listen::Inet(address) => Ok(Listener::Inet(TcpListener::bind(address).await?)),
            Listen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What one process takes on at once: a flood of connections or of
/// lookups for new domains (each may wait for DNS and an HTTPS fetch) must
/// not grow threads and memory without bound.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections: usize,
    /// Lookups (DNS, fetches) running at once; more requests wait.
    pub lookups: usize,
}

/// Serves until `stop` completes.
pub async fn serve(
    listener: Listener,
    engine: Arc<Engine>,
    limits: Limits,
    stop: impl std::future::Future,
) {
    tokio::pin!(stop);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let lookups = Arc::new(tokio::sync::Semaphore::new(limits.lookups));
    loop {
        // A connection is accepted only with a place for it.
        let place = tokio::select! {
            _ = &mut stop => return,
            place = connections.clone().acquire_owned() => place.expect("never closed"),
        };
        tokio::select! {
            _ = &mut stop => return,
            accepted = accept(&listener) => match accepted {
                Ok(stream) => {
                    let (engine, lookups) = (engine.clone(), lookups.clone());
                    tokio::spawn(async move {
                        connection(stream, engine, lookups).await;
                        drop(place);
                    });
                }
                Err(e) => {
                    log::error!("accept: {e}");
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// A TCP or unix stream.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Listener::Inet(l) => {
            let (stream, _) = l.accept().await?;
            // Answers are small writes; Nagle's algorithm would hold each
            // one for the client's delayed ACK.
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Listener::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}

/// One client: requests in, answers out, in order.
async fn connection(
    mut stream: Box<dyn Stream>,
    engine: Arc<Engine>,
    lookups: Arc<tokio::sync::Semaphore>,
) {
    let mut decoder = Decoder::new();
    let mut buffer = vec![0; 4096];
    loop {
        let read = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                log::debug!("socketmap client: {e}");
                return;
            }
        };
        let mut input = &buffer[..read];
        // The answers to the requests of one read go out in one write.
        let mut out = Vec::new();
        while !input.is_empty() {
            let step = decoder.push(input);
            input = &input[step.consumed..];
            let answer = match step.item {
                None => continue,
                Some(Err(e)) if e.is_fatal() => {
                    log::warn!(
                        "socketmap client sent a malformed netstring ({e}); closing the connection"
                    );
                    let _ = stream.write_all(&out).await;
                    return;
                }
                Some(Err(e)) => Answer::Perm(format!("bad request: {e}")),
                Some(Ok(request)) => match engine.recent_answer(&request) {
                    // Asked again within a short while: no thread hop.
                    Some(answer) => answer,
                    None => {
                        let engine = engine.clone();
                        let Ok(_lookup) = lookups.acquire().await else {
                            return;
                        };
                        match tokio::task::spawn_blocking(move || engine.answer(&request)).await {
                            Ok(answer) => answer,
                            Err(e) => Answer::Temp(format!("lookup failed: {e}")),
                        }
                    }
                },
            };
            engine.count_answer(&answer);
            let wire = answer.encode().unwrap_or_else(|e| {
                Answer::Temp(format!("answer cannot be sent: {e}"))
                    .encode()
                    .expect("a TEMP answer always encodes")
            });
            out.extend_from_slice(&wire);
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values() {
        assert_eq!(
            "inet:127.0.0.1:8461".parse(),
            Ok(Listen::Inet("127.0.0.1:8461".parse().unwrap()))
        );
        assert_eq!(
            "inet:[::1]:8461".parse(),
            Ok(Listen::Inet("[::1]:8461".parse().unwrap()))
        );
        assert_eq!(
            "unix:/var/spool/postfix/private/policyd".parse(),
            Ok(Listen::Unix("/var/spool/postfix/private/policyd".into()))
        );
        for bad in [
            "127.0.0.1:8461",
            "inet:localhost:8461",
            "unix:relative",
            "tcp:1",
        ] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
        for good in ["inet:[::1]:8461", "unix:/run/policyd.sock"] {
            assert_eq!(good.parse::<Listen>().unwrap().to_string(), good);
        }
    }

    #[test]
    fn a_unix_socket_gets_its_mode_replaces_a_stale_one_and_is_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policyd.sock");
        // A stale socket of an earlier run.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(Listener::bind(&Listen::Unix(path.clone()), 0o660))
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        drop(listener);
        assert!(!path.exists());
        // A regular file at the path is not removed: binding fails.
        std::fs::write(&path, "not a socket").unwrap();
        assert!(runtime
            .block_on(Listener::bind(&Listen::Unix(path.clone()), 0o660))
            .is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }
}
