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
use std::time::{Duration, Instant};

pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const SENDMAIL: &str = "/usr/sbin/sendmail";
pub const POSTQUEUE: &str = "/usr/sbin/postqueue";
pub const POSTCONF: &str = "/usr/sbin/postconf";

/// How to configure an instance.
#[derive(Debug, Clone)]
pub struct Options {
    /// All mail goes to `relayhost = [127.0.0.1]:relay_port`.
    pub relay_port: u16,
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
            relay_port,
            tls_security_level: "may".into(),
            main_cf: Vec::new(),
            master_cf: Vec::new(),
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

/// A running private Postfix; dropping it stops it.
pub struct Postfix {
    dir: tempfile::TempDir,
    config: PathBuf,
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
        assert!(
            Path::new(POSTFIX).exists(),
            "{POSTFIX} is missing: install Debian's postfix (scripts/test does)"
        );
        // SAFETY: geteuid(2) cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the Postfix test harness needs root (Postfix's master runs as root); \
             run the tests as root, as scripts/test in CI does"
        );
        let dir = tempfile::Builder::new()
            .prefix("mailtls-postfix.")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        // Postfix's daemons run as user postfix: let them through.
        set_mode(&root, 0o755);
        let config = root.join("etc");
        let queue = root.join("queue");
        let data = root.join("data");
        for d in [&config, &queue, &data] {
            std::fs::create_dir(d).unwrap();
            set_mode(d, 0o755);
        }
        let out = run(Command::new("chown").arg("postfix:postfix").arg(&data));
        assert!(
            out.status.success(),
            "chown postfix {}: {}",
            data.display(),
            output_text(&out)
        );

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
relayhost = [127.0.0.1]:{port}
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_address_preference = ipv4
smtp_tls_security_level = {level}
smtp_tls_loglevel = 1
",
            config = config.display(),
            queue = queue.display(),
            data = data.display(),
            maillog = maillog.display(),
            root = root.display(),
            port = options.relay_port,
            level = options.tls_security_level,
        );
        for line in &options.main_cf {
            main_cf.push_str(line);
            main_cf.push('\n');
        }
        let mut master_cf = MASTER_CF.to_string();
        for line in &options.master_cf {
            master_cf.push_str(line);
            master_cf.push('\n');
        }
        std::fs::write(config.join("main.cf"), main_cf).unwrap();
        std::fs::write(config.join("master.cf"), master_cf).unwrap();

        let postfix = Postfix { dir, config };
        let out = run(Command::new(POSTFIX)
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
        let out = run(Command::new(POSTFIX)
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

    /// The instance's directory (config, queue, data, maillog inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where main.cf and master.cf are (what `-c`/`-C` take).
    pub fn config_dir(&self) -> &Path {
        &self.config
    }

    /// A sendmail command line for this instance that takes the recipients
    /// from the headers, e.g. for the report delivery's `sendmail_script`:
    /// `/usr/sbin/sendmail -C DIR -i -t`. The temporary directory's path has
    /// no spaces or quotes, so splitting on whitespace (or as a shell would)
    /// gives the words.
    pub fn sendmail_command(&self) -> String {
        format!("{SENDMAIL} -C {} -i -t", self.config.display())
    }

    /// Submit `message` with this instance's sendmail: `sendmail -C DIR -i
    /// ARGS...` (e.g. `["-f", "a@x", "--", "b@y"]`); panics unless it exits 0.
    pub fn sendmail(&self, args: &[&str], message: &[u8]) {
        let mut child = Command::new(SENDMAIL)
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
        let out = run(Command::new(POSTCONF)
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
        let out = run(Command::new(POSTQUEUE)
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
        let out = run(Command::new(POSTQUEUE)
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
        let _ = Command::new(POSTFIX)
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
