//! A real, private Postfix instance for the tests (the recipe of
//! shared/spec/postfix.md, "A throw-away Postfix for tests").
//!
//! Each [`Postfix`] lives in its own temporary directory:
//!
//! ```text
//! DIR/etc/main.cf, DIR/etc/master.cf   the configuration (config_dir())
//! DIR/queue/                           queue_directory (root-owned, as Postfix wants)
//! DIR/data/                            data_directory (owned by postfix)
//! DIR/maillog                          the log (postlogd; there is no syslog)
//! ```
//!
//! It has no inet listener at all (no smtpd): mail comes in through its
//! sendmail/postdrop, goes out through its smtp client to the `relayhost`
//! `[127.0.0.1]:PORT`, typically a [`SmtpSink`](crate::smtp_sink::SmtpSink).
//! So instances in parallel tests share nothing and cannot collide. Dropping
//! the value stops the instance.
//!
//! [`Options::lab`] makes the instance inside a lab root instead
//! ([`crate::lab`]): Debian 13's Postfix 3.10 (or unstable's 3.11), run
//! with `chroot ROOT postfix -c DIR start`, delivering by DNS (the test's
//! lab DNS) to the lab's MX servers, its smtp chrooted into the queue
//! directory as Debian ships it, with the instance's own `etc/resolv.conf`
//! there.
//!
//! Needs root, as CI runs the tests: Postfix's `master` runs as root. Root
//! is also what lets `sendmail -C DIR` and `postqueue -c DIR` use a
//! non-default configuration directory without it being listed in
//! `alternate_config_directories` of the default `/etc/postfix/main.cf` (a
//! non-root caller's postdrop/postqueue check that list; as root they do
//! not). The tests therefore never touch `/etc/postfix`: scripts/test
//! installs the package with "No configuration", so there is no system
//! `main.cf`, and writing one would also enable the system-wide Postfix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lab::{LabDns, Root};

pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const SENDMAIL: &str = "/usr/sbin/sendmail";
pub const POSTQUEUE: &str = "/usr/sbin/postqueue";
pub const POSTCONF: &str = "/usr/sbin/postconf";

/// How to configure an instance.
#[derive(Clone)]
pub struct Options {
    /// All mail goes to `relayhost = [127.0.0.1]:relay_port`; without one
    /// (a lab instance) mail goes where DNS says.
    pub relay_port: Option<u16>,
    /// A lab instance: the root it runs in and the resolv.conf of its smtp
    /// chroot.
    pub lab: Option<(Arc<Root>, String)>,
    /// `smtp_tls_security_level`: "may" delivers in plaintext to a sink
    /// without STARTTLS; "encrypt" gets such deliveries deferred with "TLS
    /// is required, but was not offered".
    pub tls_security_level: String,
    /// Lines appended to main.cf (a later setting overrides an earlier one).
    pub main_cf: Vec<String>,
    /// Lines appended to master.cf.
    pub master_cf: Vec<String>,
}

impl Options {
    /// Relay to `[127.0.0.1]:relay_port`, TLS level "may".
    pub fn new(relay_port: u16) -> Options {
        Options {
            relay_port: Some(relay_port),
            lab: None,
            tls_security_level: "may".into(),
            main_cf: Vec::new(),
            master_cf: Vec::new(),
        }
    }

    /// An instance inside `root` that delivers by the lab DNS `dns`
    /// (MX, A, TLSA and TLSRPT records), TLS level "may".
    pub fn lab(root: &Arc<Root>, dns: &LabDns) -> Options {
        Options {
            relay_port: None,
            lab: Some((root.clone(), dns.resolv_conf())),
            tls_security_level: "may".into(),
            main_cf: Vec::new(),
            master_cf: Vec::new(),
        }
    }

    /// An instance inside `root` that relays all mail to
    /// `[127.0.0.1]:relay_port` without DNS, TLS level "may": the same
    /// instance as [`Options::new`], on the root's Postfix.
    pub fn in_root(root: &Arc<Root>, relay_port: u16) -> Options {
        Options {
            relay_port: Some(relay_port),
            lab: Some((root.clone(), String::new())),
            ..Options::new(relay_port)
        }
    }

    pub fn tls_security_level(mut self, level: &str) -> Options {
        self.tls_security_level = level.into();
        self
    }

    /// Append a main.cf line, e.g. `"smtp_tls_loglevel = 2"`.
    pub fn main_cf(mut self, line: &str) -> Options {
        self.main_cf.push(line.into());
        self
    }

    /// Append a master.cf line.
    pub fn master_cf(mut self, line: &str) -> Options {
        self.master_cf.push(line.into());
        self
    }
}

/// The services of the instance: upstream's default master.cf minus the
/// smtpd listener and the pipe examples, nothing chrooted (Debian's default
/// chroots, which needs a prepared queue directory). The smtpd listener
/// stays, commented out, as a reminder that there is none.
const MASTER_CF: &str = "\
# service type  private unpriv  chroot  wakeup  maxproc command + args
#smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// The services of a lab instance: [`MASTER_CF`] with smtp and relay
/// chrooted into the queue directory, as in Debian's master.cf.
fn lab_master_cf() -> String {
    MASTER_CF
        .replace(
            "smtp      unix  -       -       n       -       -       smtp",
            "smtp      unix  -       -       y       -       -       smtp",
        )
        .replace(
            "relay     unix  -       -       n       -       -       smtp",
            "relay     unix  -       -       y       -       -       smtp",
        )
}

/// The files Debian's configure-instance.sh copies into a chroot, beside
/// resolv.conf (which the lab writes itself).
const CHROOT_FILES: [&str; 5] = [
    "etc/localtime",
    "etc/services",
    "etc/hosts",
    "etc/host.conf",
    "etc/nsswitch.conf",
];

/// A running private Postfix; dropping it stops it.
pub struct Postfix {
    dir: tempfile::TempDir,
    /// main.cf's directory as Postfix sees it (inside the root, if any).
    config: PathBuf,
    /// The directory as Postfix sees it.
    inside: PathBuf,
    root: Option<Arc<Root>>,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

impl Postfix {
    /// Configure and start an instance in a fresh directory; panics (with
    /// the maillog) when it does not come up.
    pub fn start(options: Options) -> Postfix {
        // SAFETY: geteuid(2) cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the Postfix test harness needs root (Postfix's master runs as root); \
             run the tests as root, as scripts/test in CI does"
        );
        let lab_root = options.lab.as_ref().map(|(root, _)| root.clone());
        let dir = match &lab_root {
            Some(root) => root.tempdir("pf."),
            None => {
                assert!(
                    Path::new(POSTFIX).exists(),
                    "{POSTFIX} is missing: install Debian's postfix (scripts/test does)"
                );
                tempfile::Builder::new()
                    .prefix("mailtls-postfix.")
                    .tempdir()
                    .unwrap()
            }
        };
        let host_dir = dir.path().to_path_buf();
        let inside = match &lab_root {
            Some(root) => root.inside_path(&host_dir),
            None => host_dir.clone(),
        };
        // Postfix's daemons run as user postfix: let them through.
        set_mode(&host_dir, 0o755);
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir(host_dir.join(d)).unwrap();
            set_mode(&host_dir.join(d), 0o755);
        }
        let mut chown = match &lab_root {
            Some(root) => root.command("chown"),
            None => Command::new("chown"),
        };
        let out = run(chown.arg("postfix:postfix").arg(inside.join("data")));
        assert!(
            out.status.success(),
            "chown postfix {}: {}",
            inside.join("data").display(),
            output_text(&out)
        );
        if let Some((root, resolv_conf)) = &options.lab {
            let etc = host_dir.join("queue/etc");
            std::fs::create_dir(&etc).unwrap();
            for file in CHROOT_FILES {
                let from = root.path().join(file);
                if from.exists() {
                    std::fs::copy(&from, host_dir.join("queue").join(file)).unwrap();
                }
            }
            std::fs::write(etc.join("resolv.conf"), resolv_conf).unwrap();
        }
        let root = inside.clone();
        let config = inside.join("etc");
        let queue = inside.join("queue");
        let data = inside.join("data");

        let maillog = root.join("maillog");
        let mut main_cf = format!(
            "\
# A private test instance of mailtls's test harness (crates/test-support/src/postfix.rs).
compatibility_level = 3.6
alternate_config_directories = {config}
queue_directory = {queue}
data_directory = {data}
maillog_file = {maillog}
maillog_file_prefixes = {root}
syslog_name = postfix-test
myhostname = mta.mailtls.test
mydomain = mailtls.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
append_dot_mydomain = no
biff = no
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks_style = host
smtp_address_preference = ipv4
smtp_tls_security_level = {level}
smtp_tls_loglevel = 1
",
            config = config.display(),
            queue = queue.display(),
            data = data.display(),
            maillog = maillog.display(),
            root = root.display(),
            level = options.tls_security_level,
        );
        match options.relay_port {
            Some(port) => main_cf.push_str(&format!(
                "relayhost = [127.0.0.1]:{port}\ndisable_dns_lookups = yes\nsmtp_dns_support_level = disabled\n"
            )),
            // A lab instance: what DNS says, and nothing cached (each test
            // delivers once per scenario).
            None => main_cf.push_str("relayhost =\nsmtp_connection_cache_on_demand = no\n"),
        }
        for line in &options.main_cf {
            main_cf.push_str(line);
            main_cf.push('\n');
        }
        let mut master_cf = match options.lab {
            Some(_) => lab_master_cf(),
            None => MASTER_CF.to_string(),
        };
        for line in &options.master_cf {
            master_cf.push_str(line);
            master_cf.push('\n');
        }
        std::fs::write(host_dir.join("etc/main.cf"), main_cf).unwrap();
        std::fs::write(host_dir.join("etc/master.cf"), master_cf).unwrap();

        let postfix = Postfix {
            dir,
            config,
            inside,
            root: lab_root,
        };
        let out = run(postfix
            .command(POSTFIX)
            .arg("-c")
            .arg(&postfix.config)
            .arg("start")
            .stdin(Stdio::null()));
        if !out.status.success() {
            panic!(
                "postfix -c {} start failed: {}\nmaillog:\n{}",
                postfix.config.display(),
                output_text(&out),
                postfix.maillog()
            );
        }
        // `postfix start` waits for the master's initialisation (master -w);
        // make sure it is there.
        let out = run(postfix
            .command(POSTFIX)
            .arg("-c")
            .arg(&postfix.config)
            .arg("status"));
        if !out.status.success() {
            panic!(
                "Postfix in {} is not running after start: {}\nmaillog:\n{}",
                postfix.dir().display(),
                output_text(&out),
                postfix.maillog()
            );
        }
        postfix
    }

    /// The instance's directory on the host (config, queue, data, maillog
    /// inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where main.cf and master.cf are, as Postfix sees it (what `-c`/`-C`
    /// take; inside the root for a lab instance).
    pub fn config_dir(&self) -> &Path {
        &self.config
    }

    /// The instance's directory as Postfix sees it.
    pub fn inside_dir(&self) -> &Path {
        &self.inside
    }

    /// The lab root the instance runs in, if any.
    pub fn root(&self) -> Option<&Arc<Root>> {
        self.root.as_ref()
    }

    /// `program` (a Postfix command's absolute path) run as it is run for
    /// this instance: inside its root for a lab instance.
    pub fn command(&self, program: &str) -> Command {
        match &self.root {
            Some(root) => root.command(program),
            None => Command::new(program),
        }
    }

    /// A sendmail command line for this instance that takes the recipients
    /// from the headers, e.g. for the report delivery's `sendmail_script`:
    /// `/usr/sbin/sendmail -C DIR -i -t`. The temporary directory's path has
    /// no spaces or quotes, so splitting on whitespace (or as a shell would)
    /// gives the words.
    pub fn sendmail_command(&self) -> String {
        match &self.root {
            Some(root) => format!(
                "chroot {} {SENDMAIL} -C {} -i -t",
                root.path().display(),
                self.config.display()
            ),
            None => format!("{SENDMAIL} -C {} -i -t", self.config.display()),
        }
    }

    /// Submit `message` with this instance's sendmail: `sendmail -C DIR -i
    /// ARGS...` (e.g. `["-f", "a@x", "--", "b@y"]`); panics unless it exits 0.
    pub fn sendmail(&self, args: &[&str], message: &[u8]) {
        let mut child = self
            .command(SENDMAIL)
            .arg("-C")
            .arg(&self.config)
            .arg("-i")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {SENDMAIL}: {e}"));
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sendmail {args:?} failed: {}\nmaillog:\n{}",
            output_text(&out),
            self.maillog()
        );
    }

    /// `postconf -c DIR -h NAME`: a parameter's value in this instance.
    pub fn postconf(&self, name: &str) -> String {
        let out = run(self
            .command(POSTCONF)
            .arg("-c")
            .arg(&self.config)
            .arg("-h")
            .arg(name));
        assert!(
            out.status.success(),
            "postconf {name}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// The queue, one JSON object per message (`postqueue -c DIR -j`):
    /// `queue_name`, `queue_id`, `sender`, `recipients` (each with
    /// `address` and, once deferred, `delay_reason`), ...
    pub fn postqueue_json(&self) -> Vec<serde_json::Value> {
        let out = run(self
            .command(POSTQUEUE)
            .arg("-c")
            .arg(&self.config)
            .arg("-j"));
        assert!(
            out.status.success(),
            "postqueue -j failed: {}\nmaillog:\n{}",
            output_text(&out),
            self.maillog()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("postqueue -j printed {l:?}: {e}"))
            })
            .collect()
    }

    /// Retry every deferred message now (`postqueue -c DIR -f`).
    pub fn flush(&self) {
        let out = run(self
            .command(POSTQUEUE)
            .arg("-c")
            .arg(&self.config)
            .arg("-f"));
        assert!(
            out.status.success(),
            "postqueue -f failed: {}",
            output_text(&out)
        );
    }

    /// The log so far (empty if there is none yet).
    pub fn maillog(&self) -> String {
        std::fs::read(self.dir().join("maillog"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Poll the queue until `cond` holds for it and return it; panics after
    /// `timeout` with `what`, the queue and the maillog.
    pub fn wait_queue(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let queue = self.postqueue_json();
            if cond(&queue) {
                return queue;
            }
            if Instant::now() >= deadline {
                panic!(
                    "Postfix in {}: timed out after {timeout:?} waiting for {what}\nqueue: {}\nmaillog:\n{}",
                    self.dir().display(),
                    serde_json::to_string_pretty(&queue).unwrap(),
                    self.maillog()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the queue is empty; panics after `timeout`.
    pub fn wait_queue_empty(&self, timeout: Duration) {
        self.wait_queue(timeout, "an empty queue", |q| q.is_empty());
    }

    /// Stop the instance (`postfix -c DIR stop`, which waits up to 5 s for
    /// the master to exit, then kills it). Errors are ignored: it may have
    /// been stopped already.
    pub fn stop(&self) {
        let _ = self
            .command(POSTFIX)
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
