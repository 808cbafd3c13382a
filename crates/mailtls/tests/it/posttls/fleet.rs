//! PostTLS for a fleet on a real PostgreSQL: two Postfix instances, each
//! with its `posttls worker` (instances mx1 and mx2, the worker's role),
//! and one `posttls web` (the web's role) on one database, the roles and
//! grants made with exactly the SQL of docs/fleets.md.

use super::*;

use mailtls_test_support::postgres::PgCluster;
use std::path::Path;
use std::process::{Child, Stdio};

/// The `n`-th (from 0) ```sql block of docs/fleets.md's "PostTLS on
/// PostgreSQL" section, as its statements.
fn documented_sql(n: usize) -> Vec<String> {
    let fleets =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fleets.md"))
            .unwrap();
    let section = fleets
        .split("## PostTLS on PostgreSQL")
        .nth(1)
        .expect("docs/fleets.md has the section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .split("```sql\n")
        .nth(n + 1)
        .expect("the SQL block")
        .split("```")
        .next()
        .unwrap()
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The options of every PostTLS program of the fleet: the database as
/// `role` (its password in a file), the shared link key, the lock in `dir`.
fn fleet_options(cluster: &PgCluster, role: &str, key: &Path, dir: &Path) -> Vec<String> {
    let password_file = dir.join(format!("{role}.pgpass"));
    let password = if role == "posttls_worker" {
        "worker secret"
    } else {
        "web secret"
    };
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    vec![
        format!(
            "--database=postgresql://{role}@127.0.0.1:{}/posttls",
            cluster.port
        ),
        format!("--password_file={}", password_file.display()),
        format!("--secret_key_file={}", key.display()),
        format!("--lock_file={}", dir.join("scan.lock").display()),
        "--own_domains=example.org".into(),
        "--notification_from=postmaster@example.org".into(),
        "--base_url=https://posttls.example.org".into(),
        "--log_level=info".into(),
    ]
}

/// `posttls worker` for `lab`'s instance, its log in `lab.dir/worker.log`.
fn worker(lab: &Lab, instance: &str, options: &[String]) -> Running {
    let log = std::fs::File::create(lab.dir.path().join("worker.log")).unwrap();
    Command::new(support::mailtls_bin())
        .args(["posttls", "worker"])
        .args(options)
        .arg(format!("--instance={instance}"))
        .arg(format!(
            "--postfix_config_dir={}",
            lab.postfix.config_dir().display()
        ))
        .arg(format!(
            "--smtp_relay=127.0.0.1:{}",
            lab.notifications.port()
        ))
        .arg("--smtp_security=plain")
        .arg("--scan_interval=1")
        .stderr(log)
        .spawn()
        .map(Running)
        .unwrap()
}

fn worker_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.path().join("worker.log")).unwrap()
}

/// The "Send unencrypted" link of a notification, as a path.
fn release_path(note: &[u8]) -> String {
    mail_text(note)
        .split_whitespace()
        .find(|w| w.starts_with("https://posttls.example.org/confirm/"))
        .unwrap()
        .trim_start_matches("https://posttls.example.org")
        .to_string()
}

/// An HTTP exchange with cookies: status, the cookies set, the body.
fn http_cookie(
    port: u16,
    method: &str,
    path: &str,
    cookie: &str,
    form: Option<&str>,
) -> (u16, Vec<String>, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = form.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let cookies = answer
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap().to_string())
        })
        .collect();
    (status, cookies, answer)
}

/// The value of the first hidden `csrf` input of a page after `after`.
fn csrf_after(page: &str, after: &str) -> String {
    let rest = page
        .split(after)
        .nth(1)
        .unwrap_or_else(|| panic!("no {after}:\n{page}"));
    csrf_of(rest)
}

/// The value of the first hidden `csrf` input of a page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string()
}

/// A program of the fleet: stopped with SIGTERM by the test, killed when
/// the test fails first (so that it does not outlive the test).
struct Running(Child);

impl Running {
    /// Stops it with SIGTERM; its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        support::signal(&self.0, libc::SIGTERM);
        self.0.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A TLS-deferred message on each of two instances is notified by that
/// instance's worker; the one web process shows both, each with its
/// instance, takes mx2's sender's link and an admin's delete of mx1's
/// message; each request is carried out by its instance's worker only.
#[test]
fn two_instances_share_one_postgresql_and_one_web_process() {
    let cluster = PgCluster::start();
    for sql in documented_sql(0) {
        cluster.psql("postgres", &sql);
    }
    let (mx1, mx2) = (Lab::start(On::Host), Lab::start(On::Host));
    let key = mx1.dir.path().join("shared-secret.key");
    let worker_options =
        |lab: &Lab| fleet_options(&cluster, "posttls_worker", &key, lab.dir.path());
    let worker1 = worker(&mx1, "mx1", &worker_options(&mx1));
    support::wait_until(20, "the first worker to make the tables", || {
        cluster.psql(
            "posttls",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'posttls_actions'",
        ) == "1"
    });
    let worker2 = worker(&mx2, "mx2", &worker_options(&mx2));
    for sql in documented_sql(1) {
        cluster.psql("posttls", &sql);
    }
    // An admin, created with the worker's configuration.
    let mut adduser = Command::new(support::mailtls_bin())
        .args(["posttls", "adduser", "root"])
        .args(worker_options(&mx1))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    adduser
        .stdin
        .take()
        .unwrap()
        .write_all(b"fleet admin password\n")
        .unwrap();
    assert!(adduser.wait().unwrap().success());

    let web_dir = tempfile::tempdir().unwrap();
    let port = dead_port();
    let web = Command::new(support::mailtls_bin())
        .args(["posttls", "web"])
        .args(fleet_options(&cluster, "posttls_web", &key, web_dir.path()))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--cookie_secure=0")
        .stderr(std::fs::File::create(web_dir.path().join("web.log")).unwrap())
        .spawn()
        .map(Running)
        .unwrap();
    support::wait_until(20, "the web process", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    mx1.submit("alice@example.org", &["bob@notls.example"], "from mx1");
    mx2.submit("carol@example.org", &["dave@notls.example"], "from mx2");
    let queue1 = mx1.queue_id_of(&mx1.wait_deferred(1), "bob@notls.example");
    let queue2 = mx2.queue_id_of(&mx2.wait_deferred(1), "dave@notls.example");
    let note1 = mx1.notifications.wait_for(1, Duration::from_secs(30));
    let note2 = mx2.notifications.wait_for(1, Duration::from_secs(30));
    assert_eq!(note1[0].recipients, ["alice@example.org"]);
    assert_eq!(note2[0].recipients, ["carol@example.org"]);
    assert_eq!(
        cluster.psql(
            "posttls",
            "SELECT string_agg(instance || ' ' || queue_id || ' ' || state, ', ' ORDER BY instance) FROM posttls_messages"
        ),
        format!("mx1 {queue1} deferred, mx2 {queue2} deferred")
    );

    // The dashboard lists both messages with their instances.
    let (status, cookies, page) = http_cookie(port, "GET", "/admin/login", "", None);
    assert_eq!(status, 200, "{page}");
    let form = format!(
        "csrf={}&name=root&password=fleet%20admin%20password",
        csrf_of(&page)
    );
    let (status, cookies, answer) = http_cookie(
        port,
        "POST",
        "/admin/login",
        &cookies.join("; "),
        Some(&form),
    );
    assert_eq!(status, 303, "{answer}");
    let session = cookies
        .into_iter()
        .find(|c| !c.ends_with('='))
        .expect("a session cookie");
    let (status, _, dashboard) = http_cookie(port, "GET", "/admin", &session, None);
    assert_eq!(status, 200, "{dashboard}");
    for (queue_id, instance, subject) in
        [(&queue1, "mx1", "from mx1"), (&queue2, "mx2", "from mx2")]
    {
        assert!(
            dashboard.contains(&format!("<code>{queue_id}</code> ({instance})"))
                && dashboard.contains(subject),
            "{queue_id} ({instance}) not on the dashboard:\n{dashboard}"
        );
    }

    // mx2's sender confirms the link: mx2's worker releases the message.
    let path = release_path(&note2[0].data);
    let (status, _, page) = http_cookie(port, "GET", &path, "", None);
    assert_eq!(status, 200, "{page}");
    let (status, _, answer) = http_cookie(
        port,
        "POST",
        &path,
        "",
        Some(&format!("csrf={}", csrf_of(&page))),
    );
    assert_eq!(status, 303, "{answer}");
    let delivered = mx2.receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(delivered[0].recipients, ["dave@notls.example"]);
    mx2.postfix
        .wait_queue(Duration::from_secs(30), "mx2's original to be gone", |q| {
            q.iter().all(|m| m["queue_id"] != queue2.as_str())
        });

    // An admin deletes mx1's message: mx1's worker deletes it.
    let message1 = cluster.psql(
        "posttls",
        "SELECT id FROM posttls_messages WHERE instance = 'mx1'",
    );
    let (status, _, answer) = http_cookie(
        port,
        "POST",
        &format!("/admin/messages/{message1}/delete"),
        &session,
        Some(&format!(
            "csrf={}",
            csrf_after(&dashboard, &format!("/admin/messages/{message1}/delete"))
        )),
    );
    assert_eq!(status, 303, "{answer}");
    mx1.postfix.wait_queue(
        Duration::from_secs(30),
        "mx1's message to be deleted",
        |q| q.iter().all(|m| m["queue_id"] != queue1.as_str()),
    );
    support::wait_until(20, "both requests settled", || {
        cluster.psql(
            "posttls",
            "SELECT count(*) FROM posttls_actions WHERE state = 'done'",
        ) == "2"
    });
    assert_eq!(
        cluster.psql(
            "posttls",
            "SELECT string_agg(m.instance || ' ' || a.action || ' ' || a.state || ' ' || a.attempts, ', ' ORDER BY m.instance) \
             FROM posttls_actions a JOIN posttls_messages m ON m.id = a.message_id"
        ),
        "mx1 delete done 1, mx2 release done 1"
    );
    assert!(mx1.receiver.messages().is_empty(), "mx1's message was sent");
    assert!(worker1.stop().success(), "mx1's worker");
    assert!(worker2.stop().success(), "mx2's worker");
    let status = web.stop();
    let web_log = std::fs::read_to_string(web_dir.path().join("web.log")).unwrap();
    assert!(status.success(), "the web process: {status}\n{web_log}");
    // Each worker carried out its own instance's request and never looked
    // at the other's.
    let (log1, log2) = (worker_log(&mx1), worker_log(&mx2));
    let action_of = |instance: &str| {
        cluster.psql(
            "posttls",
            &format!("SELECT a.id FROM posttls_actions a JOIN posttls_messages m ON m.id = a.message_id WHERE m.instance = '{instance}'"),
        )
    };
    let (action1, action2) = (action_of("mx1"), action_of("mx2"));
    assert!(
        log1.contains(&format!("action {action1} (delete")),
        "{log1}"
    );
    assert!(!log1.contains(&format!("action {action2} ")), "{log1}");
    assert!(
        log2.contains(&format!("action {action2} (release")),
        "{log2}"
    );
    assert!(!log2.contains(&format!("action {action1} ")), "{log2}");
    for log in [&log1, &log2] {
        assert!(!log.contains("worker secret"), "{log}");
    }

    // `mailtls check` with each role's configuration.
    let web_messages = posttls_check(&mx1, web_dir.path(), "posttls_web", "web secret", &cluster);
    assert!(
        web_messages.contains(
            &"ok: the PostTLS database answers as posttls_web, schema version 2".to_string()
        ) && web_messages.contains(&"ok: posttls_web may do what the web pages need".to_string())
            && web_messages
                .contains(&"ok: posttls_web may not change what only the worker may".to_string()),
        "{web_messages:#?}"
    );
    let worker_messages = posttls_check(
        &mx1,
        mx1.dir.path(),
        "posttls_worker",
        "worker secret",
        &cluster,
    );
    assert!(
        worker_messages
            .iter()
            .any(|m| m.starts_with("ok: posttls_worker owns the PostTLS tables")),
        "{worker_messages:#?}"
    );
    // A role granted more than the documented grants is named.
    cluster.psql("posttls", "GRANT UPDATE ON posttls_actions TO posttls_web");
    let too_much = posttls_check(&mx1, web_dir.path(), "posttls_web", "web secret", &cluster);
    assert!(
        too_much.iter().any(|m| m.starts_with(
            "error: posttls_web is not the tables' owner but may also UPDATE on posttls_actions"
        )),
        "{too_much:#?}"
    );
}

/// `mailtls check` of a PostTLS configuration with `role` on the fleet's
/// database: its PostTLS findings, as `LEVEL: MESSAGE`.
fn posttls_check(
    lab: &Lab,
    dir: &Path,
    role: &str,
    password: &str,
    cluster: &PgCluster,
) -> Vec<String> {
    let password_file = dir.join("check.pgpass");
    std::fs::write(&password_file, password).unwrap();
    let config = dir.join("check-posttls.cfg");
    std::fs::write(
        &config,
        format!(
            "[posttls]\nown_domains = example.org\nnotification_from = postmaster@example.org\n\
             base_url = https://posttls.example.org\ndatabase = postgresql://{role}@127.0.0.1:{}/posttls\n\
             password_file = {}\n",
            cluster.port,
            password_file.display()
        ),
    )
    .unwrap();
    let missing = dir.join("missing");
    let out = Command::new(support::mailtls_bin())
        .arg("check")
        .arg(format!(
            "--postfix_config_dir={}",
            lab.postfix.config_dir().display()
        ))
        .arg(format!("--collectd_config={}", missing.display()))
        .arg(format!("--reportd_config={}", missing.display()))
        .arg(format!("--posttls_config={}", config.display()))
        .arg(format!("--posttls_web_unit={}", missing.display()))
        .arg("--json")
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    answer["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["area"] == "posttls")
        .map(|f| {
            format!(
                "{}: {}",
                f["level"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            )
        })
        .collect()
}
