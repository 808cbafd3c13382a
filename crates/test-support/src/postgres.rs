//! A private PostgreSQL cluster for one test: `initdb` in a temporary
//! directory, the server listening on 127.0.0.1 at a free port and on a
//! Unix socket in that directory, stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (CI), the
//! cluster belongs to Debian's unprivileged `postgres` user. Local
//! connections over the socket are trusted; TCP connections need the
//! password ([`PASSWORD`], scram-sha-256), as a real deployment would.
//! scripts/test installs Debian's `postgresql`; a missing server fails the
//! test, it is never skipped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The bootstrap superuser's password (TCP connections).
pub const PASSWORD: &str = "mailtls test password";

/// A running private cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// With TLS: the server's certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
    /// The uid and gid the server runs as, when not the test's own.
    owner: Option<(u32, u32)>,
    pub port: u16,
}

/// The newest installed PostgreSQL server's program directory.
fn server_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!("no PostgreSQL server in {} ({e}): run scripts/test (it installs Debian's postgresql)", root.display())
        })
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path.file_name()?.to_str()?.parse().ok()?;
            path.join("bin/initdb").exists().then(|| (version, path.join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no initdb under {}: run scripts/test", root.display()))
}

/// Debian's `postgres` user, when this process is root.
fn server_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!("the tests run as root and there is no user postgres to run PostgreSQL as: run scripts/test (it installs Debian's postgresql)"),
    }
}

impl PgCluster {
    /// A new cluster, started.
    pub fn start() -> PgCluster {
        PgCluster::start_with(false).0
    }

    /// A new cluster that also offers TLS, with a certificate for
    /// 127.0.0.1 from a throwaway CA; the CA's PEM file, for the client.
    pub fn start_tls() -> (PgCluster, PathBuf) {
        let (cluster, ca) = PgCluster::start_with(true);
        (cluster, ca.expect("made with TLS"))
    }

    fn start_with(tls: bool) -> (PgCluster, Option<PathBuf>) {
        let bin = server_bin_dir();
        let owner = server_owner();
        let dir = tempfile::Builder::new()
            .prefix("mailtls-pg.")
            .tempdir_in("/tmp")
            .unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&password_file, Some(uid), Some(gid)).unwrap();
        }
        let (tls, ca_file) = if tls {
            let ca = crate::tls::TestCa::new(dir.path());
            if let Some((uid, gid)) = owner {
                for file in [&ca.server_cert_file, &ca.server_key_file] {
                    std::os::unix::fs::chown(file, Some(uid), Some(gid)).unwrap();
                }
            }
            (
                Some((ca.server_cert_file, ca.server_key_file)),
                Some(ca.ca_file),
            )
        } else {
            (None, None)
        };
        let cluster = PgCluster {
            bin,
            owner,
            tls,
            port: crate::free_port(),
            dir,
        };
        let data = cluster.data_dir();
        cluster.checked(
            cluster
                .server_command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", password_file.display())),
            "initdb",
        );
        cluster.start_server();
        (cluster, ca_file)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The Unix-socket directory (libpq's `host=DIR`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL of `database` over TCP with the superuser's password.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/{database}",
            PASSWORD.replace(' ', "%20"),
            self.port
        )
    }

    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.env("LC_ALL", "C").current_dir(self.dir.path());
        command
    }

    fn checked(&self, command: &mut Command, what: &str) -> Output {
        let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        out
    }

    /// Starts the server (again) and waits until it takes connections.
    pub fn start_server(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.socket_dir().display()
        );
        if let Some((cert, key)) = &self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        self.checked(
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-o", &options, "-l"])
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
    }

    /// Stops the server at once (as a crash would: `-m immediate`).
    pub fn stop_server(&self) {
        self.checked(
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// Runs `sql` in `database` as the superuser over the socket; its
    /// output rows, `|`-separated.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.checked(
            self.server_command("psql")
                .arg("-h")
                .arg(self.socket_dir())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
