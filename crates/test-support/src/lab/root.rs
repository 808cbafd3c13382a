//! The lab's Debian roots: Debian 13 (trixie, Postfix 3.10 with libtlsrpt)
//! and Debian unstable (sid, Postfix 3.11), made with `debootstrap` from
//! Debian's packages and kept between runs under `target/lab/`.
//!
//! A root is rebuilt when it is missing, when the recipe (suite and package
//! list) changed, or when it is older than [`MAX_AGE`], so that the tests
//! follow Debian's point releases. Building happens under a lock file, into
//! a new directory that is renamed into place, so two test processes never
//! see a half-made root.
//!
//! While tests use a root it has `proc` mounted and the host's `/dev`
//! bind-mounted, as a chrooted Postfix needs ([`Root::enter`]); the last
//! user unmounts them. No code here deletes a directory that has anything
//! mounted under it: a bind-mounted `/dev` would take the host's device
//! nodes with it ([`remove_root`]).
//!
//! A test that changes the system itself (installs a package, runs the
//! root's own Postfix) takes a scratch root ([`Root::scratch`]): an
//! overlay on the cached root that is thrown away afterwards.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// A root older than this is made again (Debian's updates reach the lab).
pub const MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// The Debian mirror the roots come from.
const MIRROR: &str = "http://deb.debian.org/debian";

/// Which Debian the root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// Debian 13: Postfix 3.10 built with libtlsrpt.
    Trixie,
    /// Debian unstable: Postfix 3.11 (REQUIRETLS).
    Sid,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        }
    }

    /// The start of its Postfix's `mail_version`.
    pub fn postfix_version(self) -> &'static str {
        match self {
            Suite::Trixie => "3.10.",
            Suite::Sid => "3.11.",
        }
    }

    /// The packages beside debootstrap's minbase: Postfix and libtlsrpt,
    /// the trust store, and what the tests run inside (the package's
    /// dependencies, `setpriv` from util-linux, python3 for the package
    /// test's socket checks).
    fn packages(self) -> &'static [&'static str] {
        &[
            "postfix",
            "libtlsrpt0",
            "ca-certificates",
            "adduser",
            "util-linux",
            "procps",
            "python3-minimal",
        ]
    }

    /// What the stamp file records: a root made from another recipe is
    /// made again.
    fn recipe(self) -> String {
        format!(
            "mailtls lab root 1\nsuite {}\nmirror {MIRROR}\npackages {}\n",
            self.name(),
            self.packages().join(",")
        )
    }
}

/// The directory all roots live in: `MAILTLS_LAB_DIR`, or `target/lab` of
/// the repository.
pub fn lab_dir() -> PathBuf {
    match std::env::var_os("MAILTLS_LAB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::repo().join("target/lab"),
    }
}

/// A Debian root in use: `proc` and `/dev` mounted while any [`Root`] of
/// it lives in this process.
pub struct Root {
    suite: Suite,
    path: PathBuf,
    /// Set for a scratch root: the overlay's directory.
    scratch: Option<Scratch>,
}

/// A scratch root's overlay: `upper/` and `work/` of the overlay mounted
/// on `root/`, all in `dir`, over the cached root `_base` (kept from being
/// rebuilt while the overlay uses it).
struct Scratch {
    dir: PathBuf,
    _base: Arc<Root>,
}

/// A scratch directory older than this with nothing mounted in it was
/// left by a killed run.
const STALE_SCRATCH: Duration = Duration::from_secs(3600);

static MOUNTED: Mutex<Vec<(Suite, Weak<Root>)>> = Mutex::new(Vec::new());

impl Root {
    /// The root of `suite`, made or refreshed if needed, with its mounts in
    /// place. Panics with the debootstrap log when it cannot be made.
    pub fn enter(suite: Suite) -> Arc<Root> {
        let in_use = |mounted: &mut Vec<(Suite, Weak<Root>)>| {
            mounted.retain(|(_, weak)| weak.strong_count() > 0);
            mounted
                .iter()
                .find(|(s, _)| *s == suite)
                .and_then(|(_, weak)| weak.upgrade())
        };
        if let Some(root) = in_use(&mut MOUNTED.lock().unwrap_or_else(|e| e.into_inner())) {
            return root;
        }
        // Made outside the lock, so that the two roots are made side by
        // side (the build itself is serialised by a lock file per root).
        let path = ensure_built(suite);
        let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(root) = in_use(&mut mounted) {
            return root;
        }
        mount_once(&path.join("proc"), &["-t", "proc", "proc"]);
        mount_once(&path.join("dev"), &["--bind", "/dev"]);
        let root = Arc::new(Root {
            suite,
            path,
            scratch: None,
        });
        mounted.push((suite, Arc::downgrade(&root)));
        root
    }

    /// A root of its own for one test, to change as it likes: an overlay
    /// on the cached root of `suite` (writes go to a directory of this
    /// root's own), with `proc` and `/dev` mounted. Dropping it unmounts
    /// everything and deletes what the test wrote.
    pub fn scratch(suite: Suite) -> Arc<Root> {
        let base = Root::enter(suite);
        let lab = lab_dir();
        remove_stale_scratch(&lab, suite);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.scratch.", suite.name()))
            .rand_bytes(5)
            .tempdir_in(&lab)
            .unwrap()
            .keep();
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        let path = dir.join("root");
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.path.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        mount_once(&path, &["-t", "overlay", "overlay", "-o", &options]);
        // The root is 0755 root:root, as a system's / is.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        mount_once(&path.join("proc"), &["-t", "proc", "proc"]);
        mount_once(&path.join("dev"), &["--bind", "/dev"]);
        Arc::new(Root {
            suite,
            path,
            scratch: Some(Scratch { dir, _base: base }),
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The root's directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host's path of `inside`, an absolute path inside the root.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        self.path.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// The path inside the root of `host`, a host path under the root.
    pub fn inside_path(&self, host: &Path) -> PathBuf {
        Path::new("/").join(
            host.strip_prefix(&self.path)
                .unwrap_or_else(|_| panic!("{} is not in {}", host.display(), self.path.display())),
        )
    }

    /// `chroot ROOT program`: a command run inside the root.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.path).arg(program);
        // The root's programs find the root's own tools first.
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        cmd
    }

    /// Run `program args` inside the root; panics unless it exits 0, and
    /// returns its standard output.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("chroot {} {program}: {e}", self.path.display()));
        assert!(
            out.status.success(),
            "in {}: {program} {args:?}: {}; {}{}",
            self.path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copy the host's program `host_program` (our own binaries: built on
    /// the host's Debian, they run on the newer glibc of the roots) to
    /// `/usr/local/bin/NAME` inside the root, unless the same file is there;
    /// returns the path inside the root.
    pub fn install(&self, host_program: &Path) -> PathBuf {
        static INSTALLING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
        let name = host_program.file_name().unwrap();
        let inside = Path::new("/usr/local/bin").join(name);
        let target = self.host_path(&inside);
        let same = |a: &Path, b: &Path| -> bool {
            let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
                return false;
            };
            a.len() == b.len() && a.modified().ok() == b.modified().ok()
        };
        if !same(host_program, &target) {
            let partial = target.with_extension("partial");
            std::fs::copy(host_program, &partial)
                .unwrap_or_else(|e| panic!("copy {} into the root: {e}", host_program.display()));
            let modified = std::fs::metadata(host_program).unwrap().modified().unwrap();
            File::options()
                .write(true)
                .open(&partial)
                .unwrap()
                .set_modified(modified)
                .unwrap();
            std::fs::rename(&partial, &target).unwrap();
        }
        inside
    }

    /// A temporary directory inside the root's `/tmp` (removed on drop),
    /// with a short name: unix socket paths under it must stay within 108
    /// bytes.
    pub fn tempdir(&self, prefix: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .rand_bytes(5)
            .tempdir_in(self.path.join("tmp"))
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // The last user in this process.
        unmount_root(&self.path);
        if let Some(scratch) = &self.scratch {
            unmount(&self.path);
            if let Err(e) = remove_root(&scratch.dir) {
                eprintln!("lab: scratch root left behind: {e}");
            }
        }
    }
}

/// Scratch directories of `suite` that a killed run left: nothing mounted
/// in them, and older than [`STALE_SCRATCH`] (a live one has its overlay
/// mounted within a moment of being made).
fn remove_stale_scratch(lab: &Path, suite: Suite) {
    let prefix = format!("{}.scratch.", suite.name());
    let Ok(entries) = std::fs::read_dir(lab) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|made| SystemTime::now().duration_since(made).ok())
                .is_some_and(|age| age > STALE_SCRATCH);
        if stale && mounts_under(&entry.path()).is_empty() {
            let _ = remove_root(&entry.path());
        }
    }
}

/// Every mount point at or under `dir`, as `findmnt` lists them.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let out = Command::new("findmnt")
        .args(["--raw", "--noheadings", "--output", "TARGET"])
        .output()
        .expect("run findmnt (util-linux)");
    assert!(out.status.success(), "findmnt failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // findmnt escapes spaces and such as \x20; the lab's paths have none.
        .map(PathBuf::from)
        .filter(|target| target.starts_with(dir))
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// Delete a root. Refuses (Err, nothing deleted) while anything is mounted
/// under it.
pub fn remove_root(dir: &Path) -> Result<(), String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mounts = mounts_under(&dir);
    if !mounts.is_empty() {
        return Err(format!(
            "refusing to delete {}: still mounted under it: {}; unmount them first",
            dir.display(),
            mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // --one-file-system: even a mount made after the check is not crossed.
    let status = Command::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("rm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rm -rf {} failed: {status}", dir.display()))
    }
}

/// Unmount a root's `dev` and `proc`, innermost first. A busy one (a
/// process of a failed test still inside) is detached: it goes when the
/// last user leaves, and [`remove_root`] refuses while it is listed.
fn unmount_root(root: &Path) {
    for target in ["dev", "proc"] {
        unmount(&root.join(target));
    }
}

/// Unmount `target` if it is a mount point; detach it if it is busy.
fn unmount(target: &Path) {
    if is_mount_point(target) {
        let status = Command::new("umount").arg(target).status();
        if !matches!(status, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("--lazy").arg(target).status();
        }
    }
}

fn mount_once(target: &Path, args: &[&str]) {
    if is_mount_point(target) {
        return; // left by a killed run: use it, and unmount it at the end
    }
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The root of `suite`, made if missing or stale.
fn ensure_built(suite: Suite) -> PathBuf {
    let lab = lab_dir();
    std::fs::create_dir_all(&lab).unwrap();
    let path = lab.join(suite.name());
    let lock = File::create(lab.join(format!("{}.lock", suite.name()))).unwrap();
    // Another test process may be building it: wait for it.
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", lab.display());
    let stamp = path.join(".mailtls-lab");
    let fresh = std::fs::read_to_string(&stamp)
        .ok()
        .filter(|recipe| *recipe == suite.recipe())
        .and_then(|_| std::fs::metadata(&stamp).ok()?.modified().ok())
        .is_some_and(|made| {
            SystemTime::now()
                .duration_since(made)
                .is_ok_and(|age| age < MAX_AGE)
        });
    if fresh {
        return path;
    }
    if path.exists() {
        // The old root's mounts (a run killed while using it) go first.
        unmount_root(&path);
        remove_root(&path).unwrap_or_else(|e| panic!("cannot rebuild the lab root: {e}"));
    }
    let new = lab.join(format!("{}.new", suite.name()));
    if new.exists() {
        remove_root(&new).unwrap_or_else(|e| panic!("cannot rebuild the lab root: {e}"));
    }
    let log = lab.join(format!("{}.debootstrap.log", suite.name()));
    eprintln!(
        "lab: making the Debian {} root in {} with debootstrap (about a minute; log in {}) ...",
        suite.name(),
        path.display(),
        log.display()
    );
    let started = std::time::Instant::now();
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", suite.packages().join(",")))
        .arg(suite.name())
        .arg(&new)
        .arg(MIRROR)
        .stdout(File::create(&log).unwrap())
        .stderr(File::create(log.with_extension("err")).unwrap())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run debootstrap (scripts/test installs it)");
    assert!(
        status.success(),
        "debootstrap {} failed ({status}); see {} and {}",
        suite.name(),
        log.display(),
        log.with_extension("err").display()
    );
    // debootstrap unmounts what it mounted; make sure before renaming.
    let left = mounts_under(&new);
    assert!(left.is_empty(), "debootstrap left mounts: {left:?}");
    // The lab's Postfix instances lay out their own chroot (their own
    // resolv.conf pointing at the test's DNS): Debian's start script must
    // not copy the root's /etc files over it (configure-instance.sh).
    std::fs::write(
        new.join("etc/default/postfix"),
        "# mailtls lab: each test instance writes its own chroot files.\nSYNC_CHROOT=\"\"\n",
    )
    .unwrap();
    std::fs::write(new.join(".mailtls-lab"), suite.recipe()).unwrap();
    std::fs::rename(&new, &path).unwrap();
    eprintln!(
        "lab: Debian {} root made in {:.0?}",
        suite.name(),
        started.elapsed()
    );
    path
}
