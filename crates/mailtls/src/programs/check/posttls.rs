//! PostTLS: its options and key, the web pages' user, a PostgreSQL
//! database's schema and grants, and the Postfix services and TLS level it
//! relies on.

use std::path::{Path, PathBuf};

use clap::Command;

use super::super::posttls::{self, PosttlsOptions};
use super::{
    config_failure, loaded, may_read, may_write, options_of, permitted, unset, user_ids, FileFacts,
    Finding, PostfixFacts,
};

/// What PostTLS's configuration and key look like.
#[derive(Debug, Clone, Default)]
pub struct PosttlsFacts {
    pub config_file: PathBuf,
    /// `None` when the file does not exist (PostTLS not in use).
    pub options: Option<Result<PosttlsOptions, String>>,
    /// The link key file, if it exists.
    pub key: Option<FileFacts>,
    /// The database file, if it exists.
    pub database: Option<FileFacts>,
    /// A postgresql:// database: the schema and the configured role's
    /// privileges, or why they cannot be read.
    pub postgres: Option<Result<posttls_store::PgInspection, String>>,
    /// The TLSRPT databases the Outbound TLS view reads, with their
    /// directories, when they exist: (path, file, directory).
    pub tlsrpt_dbs: Vec<(String, FileFacts, FileFacts)>,
    /// The web pages' user (the unit's `User=`) and its uid and groups,
    /// when the system knows the user.
    pub web_user: Option<(String, u32, Vec<u32>)>,
    /// The `User=` of the installed posttls-web unit (empty: root), if
    /// there is a unit.
    pub web_unit_user: Option<String>,
}

/// The user a systemd unit file's `[Service]` runs as (empty for root).
pub fn unit_user(unit: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("User="))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl PosttlsFacts {
    pub(super) fn gather(config_file: &Path, web_unit: Option<&Path>) -> PosttlsFacts {
        let mut facts = PosttlsFacts {
            config_file: config_file.to_path_buf(),
            ..PosttlsFacts::default()
        };
        if !config_file.exists() {
            return facts;
        }
        let options =
            options_of::<PosttlsOptions>(&posttls::SPEC, Command::new("posttls"), config_file);
        if let Ok(options) = &options {
            facts.key = FileFacts::of(&options.secret_key_file);
            facts.database = FileFacts::of(&options.database);
            if posttls_store::Database::is_url(&options.database) {
                facts.postgres = Some(match posttls::database(options) {
                    Ok(posttls_store::Database::Postgres(url)) => {
                        posttls_store::inspect_postgres(&url).map_err(|e| e.to_string())
                    }
                    Ok(posttls_store::Database::Sqlite(_)) => unreachable!("a URL"),
                    Err(e) => Err(format!("{e:#}")),
                });
            }
            for path in [&options.tlsrpt_collector_db, &options.tlsrpt_reportd_db] {
                let dir = Path::new(path.as_str()).parent().map(FileFacts::of);
                if let (Some(file), Some(Some(dir))) = (FileFacts::of(path), dir) {
                    facts.tlsrpt_dbs.push((path.clone(), file, dir));
                }
            }
        }
        facts.options = Some(options);
        facts.web_unit_user = web_unit
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|unit| unit_user(&unit));
        facts.web_user = facts
            .web_unit_user
            .as_deref()
            .filter(|user| !user.is_empty())
            .and_then(|user| user_ids(user).map(|(uid, gids)| (user.to_string(), uid, gids)));
        facts
    }
}

impl PosttlsFacts {
    fn failure(&self, area: &'static str) -> Vec<Finding> {
        config_failure(&self.options, area, &self.config_file)
    }
}

/// Whether the web pages' user can read the link key and write the
/// database: a worker started by hand as root before the package's fix
/// for it, or a `posttls adduser` run as root on a new database, leaves
/// them root's, and the web pages then fail at start or on every request.
fn judge_web_user_access(facts: &PosttlsFacts, options: &PosttlsOptions) -> Vec<Finding> {
    const AREA: &str = "posttls";
    let Some((user, uid, gids)) = &facts.web_user else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    if let Some(key) = &facts.key {
        if !may_read(key, *uid, gids) {
            findings.push(Finding::error(
                AREA,
                format!(
                    "the web pages' user {user} cannot read the link key {}: they do not start",
                    options.secret_key_file
                ),
                format!("chown {user}: {}", options.secret_key_file),
            ));
        }
    }
    for (path, file, dir) in &facts.tlsrpt_dbs {
        // Reading a file needs read access to it and search (execute)
        // access to its directory.
        let searchable = permitted(dir, *uid, gids, 0o1);
        if !(searchable && may_read(file, *uid, gids)) {
            findings.push(Finding::warning(
                AREA,
                format!("the web pages' user {user} cannot read {path}: the Outbound TLS view shows nothing from it"),
                format!("adduser {user} _tlsrpt (the package does this; restart posttls-web)"),
            ));
        }
    }
    if let Some(database) = &facts.database {
        if may_write(database, *uid, gids) {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "the web pages' user {user} may write the database {}",
                    options.database
                ),
            ));
        } else {
            findings.push(Finding::error(
                AREA,
                format!(
                    "the web pages' user {user} cannot write the database {}: no link can be confirmed and no admin can log in",
                    options.database
                ),
                format!("chown {user}: {}*", options.database),
            ));
        }
    }
    findings
}

/// A postgresql:// database: reachable, the schema this program's, and
/// the role either the workers' (it owns the tables) or one that may do
/// what the web pages need and nothing only the worker may do.
fn judge_posttls_postgres(facts: &PosttlsFacts) -> Vec<Finding> {
    const AREA: &str = "posttls";
    const GRANTS: &str = "the grants of docs/fleets.md's \"PostTLS on PostgreSQL\"";
    let Some(postgres) = &facts.postgres else {
        return Vec::new();
    };
    let pg = match postgres {
        Ok(pg) => pg,
        Err(why) => {
            return vec![Finding::error(
                AREA,
                format!("the PostTLS database cannot be read: {why}"),
                "check database= and password_file in the PostTLS configuration, and that the server admits this host (pg_hba.conf)",
            )]
        }
    };
    let role = &pg.role;
    let mut findings = Vec::new();
    match pg.version {
        0 => {
            findings.push(Finding::warning(
                AREA,
                format!("the PostTLS tables do not exist yet (connected as {role})"),
                "start posttls worker with the workers' role: it creates them",
            ));
            return findings;
        }
        v if v > pg.known => findings.push(Finding::error(
            AREA,
            format!("the PostTLS tables are at schema version {v}, newer than this program's {}", pg.known),
            "upgrade mailtls on this host",
        )),
        v if v < pg.known => findings.push(Finding::warning(
            AREA,
            format!("the PostTLS tables are at schema version {v}, older than this program's {}: the web pages do not start", pg.known),
            "start posttls worker (it migrates them)",
        )),
        v => findings.push(Finding::ok(
            AREA,
            format!("the PostTLS database answers as {role}, schema version {v}"),
        )),
    }
    if pg.owner {
        findings.push(Finding::ok(
            AREA,
            format!("{role} owns the PostTLS tables: the workers' role (give the web pages a role of their own)"),
        ));
        return findings;
    }
    if pg.web_lacks.is_empty() {
        findings.push(Finding::ok(
            AREA,
            format!("{role} may do what the web pages need"),
        ));
    } else {
        findings.push(Finding::error(
            AREA,
            format!(
                "{role} lacks what the web pages need: {}",
                pg.web_lacks.join(", ")
            ),
            GRANTS,
        ));
    }
    if pg.worker_only.is_empty() {
        findings.push(Finding::ok(
            AREA,
            format!("{role} may not change what only the worker may"),
        ));
    } else {
        findings.push(Finding::error(
            AREA,
            format!(
                "{role} is not the tables' owner but may also {}: a web process taken over could change states only the worker may",
                pg.worker_only.join(", ")
            ),
            format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}, then {GRANTS}"),
        ));
    }
    findings
}

/// A content filter without a next hop sends to each recipient domain's
/// MX: relayhost and transport_maps do not apply to released mail.
fn judge_release_routing(postfix: &PostfixFacts, transport: &str) -> Option<Finding> {
    if postfix.release_nexthop {
        return None;
    }
    let routing: Vec<String> = [
        ("relayhost", &postfix.relayhost),
        ("transport_maps", &postfix.transport_maps),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| format!("{name} = {v}"))
    })
    .collect();
    (!routing.is_empty()).then(|| {
        Finding::warning(
            "posttls",
            format!(
                "released mail goes straight to each recipient domain's MX: content_filter={transport}: has no next hop, so {} does not apply to it",
                routing.join(" and ")
            ),
            format!("if released mail must take that route, name it in master.cf: -o content_filter={transport}:[relay.example.org]:25"),
        )
    })
}

/// REQUIRETLS (RFC 8689, Postfix 3.11 and later): whether senders can ask
/// for it, and that PostTLS never releases a message that did.
pub(super) fn judge_requiretls(postfix: &PostfixFacts) -> Vec<Finding> {
    let Some((enable, policy)) = &postfix.requiretls else {
        return Vec::new();
    };
    let version = postfix.mail_version.as_deref().unwrap_or_default();
    vec![Finding::ok(
        "posttls",
        if enable == "yes" {
            format!(
                "Postfix {version} takes REQUIRETLS requests (requiretls_enable = yes; smtp_requiretls_policy = {policy}): PostTLS never releases a message that asked for it, and tells its sender why"
            )
        } else {
            format!(
                "requiretls_enable = {enable}: Postfix {version} does not offer REQUIRETLS, so senders cannot ask for it"
            )
        },
    )]
}

/// The re-injection services PostTLS needs in master.cf, as shipped in
/// `/usr/share/doc/mailtls/examples/master.cf.posttls`.
pub const MASTER_CF_POSTTLS: &str =
    include_str!("../../../../../packaging/examples/master.cf.posttls");

/// The lines to append to master.cf, without their comments: with the
/// `TLS-Required` release (Postfix 3.10 and later) only posttls-reinject.
fn master_cf_fix(postfix: &PostfixFacts, header_release: bool) -> String {
    let master_cf = match &postfix.config_dir {
        Some(dir) => dir.join("master.cf"),
        None => PathBuf::from("/etc/postfix/master.cf"),
    };
    let mut service = "";
    let lines: Vec<&str> = MASTER_CF_POSTTLS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            if !line.starts_with(char::is_whitespace) {
                service = line.split_whitespace().next().unwrap_or_default();
            }
            !header_release || service == "posttls-reinject"
        })
        .collect();
    let reload = match &postfix.config_dir {
        Some(dir) => format!("postfix -c {} reload", dir.display()),
        None => "postfix reload".into(),
    };
    format!(
        "append to {} (also in /usr/share/doc/mailtls/examples/master.cf.posttls), then {reload}:\n{}",
        master_cf.display(),
        lines.join("\n")
    )
}

/// PostTLS: its required options, the key's permissions, and the Postfix
/// services and TLS level it relies on.
pub fn judge_posttls(facts: &PosttlsFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    const AREA: &str = "posttls";
    let file = facts.config_file.display();
    let Some(options) = loaded(&facts.options) else {
        return facts.failure(AREA);
    };
    let mut findings = Vec::new();
    findings.extend(unset(
        AREA,
        "the PostTLS worker does not start",
        &format!("[posttls] of {file}"),
        &[
            (
                "own_domains",
                &options.own_domains,
                "example.org, .example.org",
            ),
            (
                "notification_from",
                &options.notification_from,
                "postmaster@example.org",
            ),
            ("base_url", &options.base_url, "https://posttls.example.org"),
        ],
    ));
    if !options.base_url.is_empty() && !options.base_url.starts_with("https://") {
        findings.push(Finding::warning(
            AREA,
            format!("base_url = {} is not https: the links in notifications travel and open unencrypted", options.base_url),
            "put a TLS-terminating proxy in front of the web pages and set base_url = https://...",
        ));
    }
    match facts.key.as_ref().map(|key| key.mode & 0o777) {
        Some(mode) if mode & 0o077 != 0 => findings.push(Finding::error(
            AREA,
            format!(
                "the link key {} has mode {mode:o}: others may read it and forge links",
                options.secret_key_file
            ),
            format!("chmod 600 {}", options.secret_key_file),
        )),
        Some(_) => findings.push(Finding::ok(
            AREA,
            format!("the link key {} is private", options.secret_key_file),
        )),
        None => findings.push(Finding::warning(
            AREA,
            format!("there is no link key at {} yet", options.secret_key_file),
            "start posttls-web or posttls-worker: the first to start creates the key",
        )),
    }
    findings.extend(judge_web_user_access(facts, options));
    findings.extend(judge_posttls_postgres(facts));
    match facts.web_unit_user.as_deref() {
        Some("" | "root") => findings.push(Finding::error(
            AREA,
            "the web pages (posttls-web.service) run as root: a flaw in them could run Postfix commands",
            "User=_posttls in the [Service] of posttls-web.service (systemctl edit posttls-web)",
        )),
        Some(user) => findings.push(Finding::ok(
            AREA,
            format!("the web pages run as {user}, who cannot run postsuper"),
        )),
        None => {}
    }
    if postfix.unavailable.is_none() {
        let version = postfix.mail_version.as_deref().unwrap_or_default();
        let tls_required_enable =
            postfix
                .tls_required
                .as_ref()
                .map(|t| if t.enabled { "yes" } else { "no" });
        let header_release = match posttls_actions::ReleaseMethod::parse(&options.release_method)
            .map(|method| method.uses_header(version, tls_required_enable))
        {
            None => {
                findings.push(Finding::error(
                    AREA,
                    format!(
                        "release_method = {} is not one of auto, tls_required_header, content_filter: the worker does not start",
                        options.release_method
                    ),
                    format!("release_method = auto in [posttls] of {file}"),
                ));
                return findings;
            }
            Some(Err(why)) => {
                findings.push(Finding::error(
                    AREA,
                    format!("{why}: the worker does not start"),
                    format!("release_method = auto in [posttls] of {file}"),
                ));
                return findings;
            }
            Some(Ok(header)) => header,
        };
        let needed: &[(&str, &Option<String>)] = if header_release {
            &[("posttls-reinject", &postfix.reinject_service)]
        } else {
            &[
                ("posttls-release", &postfix.release_service),
                ("posttls-reinject", &postfix.reinject_service),
            ]
        };
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(_, line)| line.is_none())
            .map(|(service, _)| *service)
            .collect();
        if missing.is_empty() {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "master.cf has the {} listener{}",
                    needed
                        .iter()
                        .map(|(s, _)| *s)
                        .collect::<Vec<_>>()
                        .join(" and "),
                    if needed.len() > 1 { "s" } else { "" }
                ),
            ));
        } else {
            findings.push(Finding::error(
                AREA,
                format!(
                    "master.cf has no {} listener: released messages cannot be re-injected",
                    missing.join(" and no ")
                ),
                master_cf_fix(postfix, header_release),
            ));
        }
        if header_release {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "released mail leaves through posttls-reinject with TLS-Required: No, by the instance's own routing (Postfix {version}); mandatory-TLS recipients are never in it"
                ),
            ));
            if let Ok(mandatory) = posttls_policy::DomainSet::parse_list(&options.mandatory_domains)
            {
                findings.extend(super::tls_required::judge_policy_bypass(
                    &postfix.tls_policy_tables,
                    &mandatory,
                    &facts.config_file,
                ));
            }
        } else if postfix.release_service.is_some() {
            match &postfix.release_transport {
                Some((transport, true)) => {
                    findings.push(Finding::ok(
                        AREA,
                        format!("released mail leaves through {transport}"),
                    ));
                    findings.extend(judge_release_routing(postfix, transport));
                }
                Some((transport, false)) => findings.push(Finding::error(
                    AREA,
                    format!("posttls-release hands mail to {transport}, which master.cf does not define: released mail stays queued"),
                    master_cf_fix(postfix, false),
                )),
                None => findings.push(Finding::error(
                    AREA,
                    "posttls-release has no content_filter: released mail takes the normal path, which requires TLS, and waits again",
                    master_cf_fix(postfix, false),
                )),
            }
        }
        match postfix.tls_security_level.as_deref() {
            Some("encrypt" | "dane-only" | "verify" | "secure" | "fingerprint") => findings.push(
                Finding::ok(AREA, "smtp_tls_security_level requires TLS"),
            ),
            Some(level) => findings.push(Finding::error(
                AREA,
                format!("smtp_tls_security_level = {level}: Postfix sends without TLS, so PostTLS has nothing to decide"),
                postfix.postconf_e("smtp_tls_security_level = encrypt"),
            )),
            None => {}
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use mailtls_common::config::ProgramOptions;

    use super::super::postfix::content_filter_transport;
    use super::super::tests::postfix;
    use super::super::Level;
    use super::*;

    #[test]
    fn the_web_pages_must_not_run_as_root() {
        assert_eq!(
            unit_user("[Service]\nUser=_posttls\nGroup=_posttls\n"),
            "_posttls"
        );
        assert_eq!(
            unit_user("[Service]\nExecStart=/usr/sbin/posttls web\n"),
            ""
        );
        let mut options = PosttlsOptions::defaults();
        options.own_domains = "example.org".into();
        let mut facts = PosttlsFacts {
            options: Some(Ok(options)),
            web_unit_user: Some(String::new()),
            ..PosttlsFacts::default()
        };
        let web = |facts: &PosttlsFacts| {
            judge_posttls(facts, &PostfixFacts::default())
                .into_iter()
                .find(|f| f.message.contains("web pages"))
                .unwrap()
        };
        assert_eq!(web(&facts).level, Level::Error);
        facts.web_unit_user = Some("_posttls".into());
        assert_eq!(web(&facts).level, Level::Ok);
    }

    #[test]
    fn the_web_user_must_read_the_key_and_write_the_database() {
        let options = PosttlsOptions::defaults();
        let ours = FileFacts {
            is_socket: false,
            uid: 120,
            gid: 120,
            mode: 0o600,
        };
        let roots = FileFacts {
            uid: 0,
            gid: 120,
            mode: 0o644,
            ..ours.clone()
        };
        let mut facts = PosttlsFacts {
            options: Some(Ok(options.clone())),
            key: Some(ours.clone()),
            database: Some(ours.clone()),
            web_user: Some(("_posttls".into(), 120, vec![120])),
            ..PosttlsFacts::default()
        };
        // The TLSRPT data as the package leaves it: the directory 0750 and
        // the file 0644 of _tlsrpt (uid 121, group 121).
        let tlsrpt_dir = FileFacts {
            is_socket: false,
            uid: 121,
            gid: 121,
            mode: 0o750,
        };
        let tlsrpt_db = FileFacts {
            mode: 0o644,
            ..tlsrpt_dir.clone()
        };
        facts.tlsrpt_dbs = vec![(
            "/var/lib/tlsrpt/collectd.sqlite".into(),
            tlsrpt_db,
            tlsrpt_dir,
        )];
        let found = judge_web_user_access(&facts, &options);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0]
            .message
            .contains("cannot read /var/lib/tlsrpt/collectd.sqlite"));
        assert_eq!(
            found[0].fix.as_deref(),
            Some("adduser _posttls _tlsrpt (the package does this; restart posttls-web)")
        );
        // In group _tlsrpt, as the package makes it.
        facts.web_user = Some(("_posttls".into(), 120, vec![120, 121]));
        let found = judge_web_user_access(&facts, &options);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].level, Level::Ok);
        // What a worker started first as root left before it gave its
        // files to the directory's owner.
        facts.key = Some(FileFacts {
            mode: 0o600,
            ..roots.clone()
        });
        facts.database = Some(roots);
        let found = judge_web_user_access(&facts, &options);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| f.level == Level::Error));
        assert_eq!(
            found[0].fix.as_deref(),
            Some("chown _posttls: /var/lib/posttls/secret.key")
        );
        assert_eq!(
            found[1].fix.as_deref(),
            Some("chown _posttls: /var/lib/posttls/posttls.sqlite*")
        );
    }

    #[test]
    fn released_mail_needs_the_transport_its_listener_names() {
        assert_eq!(
            content_filter_transport(
                "posttls-release unix - - n - - smtpd -o content_filter=smtp_may: -o mynetworks=127.0.0.0/8"
            )
            .as_deref(),
            Some("smtp_may")
        );
        assert_eq!(
            content_filter_transport(
                "posttls-reinject unix - - n - - smtpd -o mynetworks=127.0.0.0/8"
            ),
            None
        );
        let mut postfix = postfix("3.7.11");
        postfix.release_service = Some("posttls-release unix ...".into());
        postfix.reinject_service = Some("posttls-reinject unix ...".into());
        let facts = PosttlsFacts {
            options: Some(Ok(PosttlsOptions::defaults())),
            ..PosttlsFacts::default()
        };
        let transport = |postfix: &PostfixFacts| {
            judge_posttls(&facts, postfix)
                .into_iter()
                .find(|f| f.message.contains("smtp_may") || f.message.contains("content_filter"))
                .unwrap()
        };
        postfix.release_transport = Some(("smtp_may".into(), true));
        assert_eq!(transport(&postfix).level, Level::Ok);
        let routing = |postfix: &PostfixFacts| {
            judge_posttls(&facts, postfix)
                .into_iter()
                .filter(|f| f.message.contains("straight to"))
                .count()
        };
        assert_eq!(routing(&postfix), 0);
        postfix.transport_maps = Some("inline:{notls.test=smtp:[127.0.0.1]:2526}".into());
        assert_eq!(routing(&postfix), 1);
        postfix.release_nexthop = true;
        assert_eq!(routing(&postfix), 0);
        postfix.release_transport = Some(("smtp_may".into(), false));
        let missing = transport(&postfix);
        assert_eq!(missing.level, Level::Error);
        // The fix is the lines themselves, not a pointer to a document.
        let fix = missing.fix.unwrap();
        assert!(
            fix.contains(
                "\nsmtp_may  unix  -  -  n  -  -  smtp\n  -o smtp_tls_security_level=may\n"
            ),
            "{fix}"
        );
        assert!(!fix.contains("\n#"), "{fix}");
        postfix.release_transport = None;
        assert_eq!(transport(&postfix).level, Level::Error);
    }

    #[test]
    fn the_readme_shows_the_master_cf_lines_the_package_ships() {
        let readme = include_str!("../../../../../docs/posttls.md");
        let services: String = MASTER_CF_POSTTLS
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(
            readme.contains(&services),
            "docs/posttls.md lacks:\n{services}"
        );
    }
}
