//! A reportd (ours or upstream's) running in a private directory, and a
//! collector holding a completed day for it to report on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{wait_until, Collector};

pub fn reportd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsrpt-reportd"))
}

pub fn tlsrptctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsrptctl"))
}

/// Our collector after receiving `datagrams` (each counted once per
/// policy) and a development rollover (SIGUSR2): its `.yesterday` file
/// holds them for the real clock's yesterday, which is what a reportd
/// started now fetches.
pub fn collected_day(datagrams: &[Vec<u8>], policies: i64) -> Collector {
    avoid_midnight();
    let mut collector = Collector::start(&["--sockettimeout=1"], &[]);
    for datagram in datagrams {
        collector.send(datagram);
    }
    wait_until(20, "the collector's commit", || {
        super::try_total(&collector.db) == Some(policies)
    });
    collector.signal(libc::SIGUSR2);
    wait_until(20, "the development rollover", || {
        super::try_total(&collector.yesterday()) == Some(policies)
    });
    assert!(collector.terminate().success(), "{}", collector.log_text());
    collector
}

/// The reportd takes "yesterday" from the real clock: a test that starts
/// shortly before UTC midnight waits until it has passed.
pub fn avoid_midnight() {
    use chrono::Timelike;
    let left = 86_400 - i64::from(chrono::Utc::now().num_seconds_from_midnight());
    if left < 60 {
        std::thread::sleep(Duration::from_secs(left as u64 + 2));
    }
}

/// A reportd in its own directory with a config file.
pub struct Reportd {
    pub dir: tempfile::TempDir,
    pub program: PathBuf,
    pub child: Option<Child>,
    pub config: PathBuf,
    pub db: PathBuf,
    pub log: PathBuf,
    /// A `directory:` destination inside `dir`.
    pub out: PathBuf,
}

impl Reportd {
    /// Writes the config (`settings` after the common ones, which make it
    /// quick: one-second loop and spread; a `dbname` among them replaces
    /// the directory's SQLite file) without starting.
    pub fn prepare(program: &Path, fetchers: &str, settings: &[(&str, &str)]) -> Reportd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("reportd.cfg");
        let db = dir.path().join("reportd.sqlite");
        let log = dir.path().join("reportd.log");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut text = format!(
            "[tlsrpt_reportd]\n\
             dbname = {}\n\
             fetchers = {fetchers}\n\
             organization_name = Test Org\n\
             contact_info = tlsrpt@reporter.example\n\
             sender_address = tlsrpt-noreply@reporter.example\n\
             spread_out_delivery = 1\n\
             interval_main_loop = 1\n\
             logfilename = {}\n\
             log_level = debug\n",
            settings
                .iter()
                .find(|(key, _)| *key == "dbname")
                .map_or(db.display().to_string(), |(_, dbname)| dbname.to_string()),
            log.display()
        );
        for (key, value) in settings.iter().filter(|(key, _)| *key != "dbname") {
            text.push_str(&format!(
                "{key} = {}\n",
                value.replace("OUTDIR", &out.display().to_string())
            ));
        }
        std::fs::write(&config, text).unwrap();
        Reportd {
            dir,
            program: program.to_path_buf(),
            child: None,
            config,
            db,
            log,
            out,
        }
    }

    /// Writes a map file in the directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            text.replace("OUTDIR", &self.out.display().to_string()),
        )
        .unwrap();
        path
    }

    pub fn start(&mut self) {
        let child = Command::new(&self.program)
            .arg(format!("--config_file={}", self.config.display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().expect("started").try_wait().unwrap() {
            panic!("reportd exited with {status}: {}", self.log_text());
        }
    }

    /// Waits until `cond`, checking that the daemon still runs.
    pub fn wait_for(&mut self, secs: u64, what: &str, mut cond: impl FnMut(&Reportd) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if cond(self) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        super::signal(self.child.as_ref().expect("started"), sig);
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(30)
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("started");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let child = self.child.as_mut().expect("started");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("reportd did not exit: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `.json` files in the `directory:` destination, parsed.
    pub fn reports_in(dir: &Path) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// One column of a query on the reportd database, as text.
    pub fn query(&self, sql: &str) -> Vec<String> {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// [`query`](Self::query) for a database that may not be there yet.
    pub fn try_query(&self, sql: &str) -> rusqlite::Result<Vec<String>> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |row| {
            let value: rusqlite::types::Value = row.get(0)?;
            Ok(match value {
                rusqlite::types::Value::Null => "NULL".to_string(),
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
        })?;
        rows.collect()
    }
}

impl Drop for Reportd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A report datagram for `domain` whose record asks for mail to
/// `r@domain`.
pub fn mail_datagram(domain: &str) -> Vec<u8> {
    format!(
        r#"{{"dpv":"1","d":"{domain}","pr":"v=TLSRPTv1;rua=mailto:r@{domain}","policies":[{{"policy-type":9,"t":0,"f":0}}]}}"#
    )
    .into_bytes()
}

/// A `sendmail_script` (shared by every daemon given its command) that
/// keeps each mail in `delivered/` and counts its attempts; the second
/// attempt hangs after writing its pid (exec: the sleeping process is the
/// delivery command itself, so it dies with the daemon).
pub struct HangingSendmail {
    dir: PathBuf,
}

impl HangingSendmail {
    pub fn new(dir: &Path) -> HangingSendmail {
        let sendmail = HangingSendmail {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir(sendmail.delivered()).unwrap();
        std::fs::write(
            dir.join("sendmail.sh"),
            format!(
                "msg=$(mktemp {dir}/msg.XXXXXX)\n\
                 cat > \"$msg\"\n\
                 echo x >> {counter}\n\
                 if [ \"$(wc -l < {counter})\" -eq 2 ]; then echo $$ > {pid}; exec sleep 120; fi\n\
                 mv \"$msg\" {delivered}/\n",
                dir = dir.display(),
                counter = sendmail.counter().display(),
                delivered = sendmail.delivered().display(),
                pid = sendmail.pid_file().display()
            ),
        )
        .unwrap();
        sendmail
    }

    /// The `sendmail_script` value.
    pub fn command(&self) -> String {
        format!("sh {}", self.dir.join("sendmail.sh").display())
    }

    fn delivered(&self) -> PathBuf {
        self.dir.join("delivered")
    }

    fn counter(&self) -> PathBuf {
        self.dir.join("attempts")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("hanging.pid")
    }

    /// The hanging attempt's process, once it hangs.
    pub fn hanging(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        text.strip_suffix('\n')?.parse().ok()
    }

    /// The mails handed over (not the hanging one).
    pub fn delivered_count(&self) -> usize {
        std::fs::read_dir(self.delivered()).unwrap().count()
    }

    /// The `To:` of each mail handed over, sorted.
    pub fn recipients(&self) -> Vec<String> {
        let mut recipients: Vec<String> = std::fs::read_dir(self.delivered())
            .unwrap()
            .map(|entry| {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                text.lines()
                    .find_map(|l| l.strip_prefix("To: "))
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect();
        recipients.sort();
        recipients
    }

    /// Every attempt, the hanging one included.
    pub fn attempts(&self) -> usize {
        std::fs::read_to_string(self.counter())
            .unwrap_or_default()
            .lines()
            .count()
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody has reaped
/// yet).
pub fn process_ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_or(true, |status| status.contains("State:\tZ"))
}
