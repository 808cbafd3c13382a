//! `tlsrptctl` / `mailtls tlsrptctl`: look into and steer tlsrpt-reportd.
//! `status` and `maptest` as upstream (reading the reportd's options from
//! the same places), plus `list`, `show`, `resend` and `render`.

use anyhow::{bail, Context};
use mailtls_common::day::Day;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use mailtls_common::config::{self, add_options, ConfigError, ProgramOptions, ProgramSpec};
use serde_json::{json, Value};
use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::record::parse_record;
use tlsrpt_report::report::ReportingOrganization;
use tlsrpt_reportd::config::ReportdOptions;
use tlsrpt_reportd::reports::make_reports;
use tlsrpt_reportd_db::{
    DbName, DestinationState, ReportdDb, StatusCount, StoredReport, WithheldReason,
};

use super::reportd;

/// Exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
}

/// tlsrptctl reads the reportd's `[tlsrpt_reportd]` section and
/// `TLSRPT_REPORTD_*` variables; each subcommand takes the few options it
/// uses and skips the reportd's others (upstream's `ignore_other_options`).
const SPEC: ProgramSpec = ProgramSpec {
    name: "tlsrptctl",
    section: reportd::SPEC.section,
    env_prefix: reportd::SPEC.env_prefix,
    default_config_file: reportd::SPEC.default_config_file,
    ignored: ReportdOptions::OPTIONS,
};

mailtls_common::options! {
    /// What `status`, `list`, `show` and `resend` read.
    pub struct DbOptions, sources DbSources {
        /// The reportd's SQLite database file, or its postgresql:// URL
        dbname: String = "",
        /// File whose first line is the password of a postgresql:// dbname
        password_file: String = "",
    }
}

mailtls_common::options! {
    /// What `maptest` reads.
    pub struct MapOptions, sources MapSources {
        /// Map file applied to each report domain's destinations
        tlsrpt_record_map: String = "",
        /// Map file applied to each mailto: destination
        mail_destination_map: String = "",
        /// Map file applied to each https: destination
        http_upload_map: String = "",
    }
}

mailtls_common::options! {
    /// What `render` reads: the reportd's options that shape a report.
    pub struct RenderOptions, sources RenderSources {
        /// The reportd's SQLite database file, or its postgresql:// URL
        dbname: String = "",
        /// File whose first line is the password of a postgresql:// dbname
        password_file: String = "",
        /// The reporting organization's name (report field organization-name)
        organization_name: String = "",
        /// Contact address (report field contact-info)
        contact_info: String = "",
        /// Map file applied to each report domain's destinations
        tlsrpt_record_map: String = "",
        /// Map file applied to each mailto: destination
        mail_destination_map: String = "",
        /// Map file applied to each https: destination
        http_upload_map: String = "",
        /// Destinations taken from one TLSRPT record
        max_destinations_per_record: i64 = "4",
        /// Distinct TLSRPT records of one domain and day whose destinations are used
        max_records_per_domain: i64 = "4",
    }
}

fn json_flag() -> Arg {
    Arg::new("json")
        .long("json")
        .action(ArgAction::SetTrue)
        .help("Print JSON instead of text")
}

pub fn command() -> Command {
    Command::new("tlsrptctl")
        .about("Show and steer what tlsrpt-reportd does")
        .long_about(
            "Show and steer what tlsrpt-reportd does. A drop-in replacement for the \
             tlsrptctl of sys4's tlsrpt-reporter: it reads the reportd's options (dbname, \
             the maps) from the same command line options, TLSRPT_REPORTD_* environment \
             variables and [tlsrpt_reportd] config file section.",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            add_options::<DbOptions>(
                Command::new("status")
                    .about("Fetch jobs, domain data and deliveries per day and status")
                    .arg(json_flag()),
                &SPEC,
            ),
        )
        .subcommand(
            add_options::<MapOptions>(
                Command::new("maptest")
                    .about("Show a record's destinations before and after the destination maps")
                    .arg(Arg::new("domain").value_name("DOMAIN").required(true).help("Report domain"))
                    .arg(
                        Arg::new("tlsrpt_record")
                            .value_name("RECORD")
                            .required(true)
                            .help("TLSRPT record, e.g. 'v=TLSRPTv1;rua=mailto:tlsrpt@example.com'"),
                    ),
                &SPEC,
            ),
        )
        .subcommand(
            add_options::<DbOptions>(
                Command::new("list")
                    .about("Reports with the state of each destination")
                    .arg(Arg::new("day").long("day").value_name("YYYY-MM-DD").help("Only this day"))
                    .arg(Arg::new("domain").long("domain").value_name("DOMAIN").help("Only this domain"))
                    .arg(json_flag()),
                &SPEC,
            ),
        )
        .subcommand(
            add_options::<DbOptions>(
                Command::new("show")
                    .about("One report's JSON and destinations")
                    .arg(Arg::new("report").value_name("ID").required(true).help("The report's number (list shows it) or its report-id"))
                    .arg(json_flag()),
                &SPEC,
            ),
        )
        .subcommand(
            add_options::<DbOptions>(
                Command::new("resend")
                    .about("Queue a report again for all its destinations, or one; the running reportd sends it within interval_main_loop")
                    .arg(Arg::new("report").value_name("ID").required(true).help("The report's number or report-id"))
                    .arg(Arg::new("destination").long("destination").value_name("DEST").help("Only this destination, e.g. mailto:tlsrpt@example.com")),
                &SPEC,
            ),
        )
        .subcommand(
            add_options::<RenderOptions>(
                Command::new("render")
                    .about("Dry run: write a day's reports, as the reportd would make them from the fetched data, into a directory; nothing is stored or sent")
                    .arg(Arg::new("day").value_name("YYYY-MM-DD").required(true))
                    .arg(Arg::new("directory").value_name("DIR").required(true))
                    .arg(json_flag()),
                &SPEC,
            ),
        )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    let json = sub
        .try_get_one::<bool>("json")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    let result = match name {
        "status" => load(sub).map(|o: DbOptions| status(&o.database(), json)),
        "maptest" => load(sub).map(|o: MapOptions| maptest(&o, sub)),
        "list" => load(sub).map(|o: DbOptions| list(&o.database(), sub, json)),
        "show" => load(sub).map(|o: DbOptions| show(&o.database(), sub, json)),
        "resend" => load(sub).map(|o: DbOptions| resend(&o.database(), sub)),
        "render" => load(sub).map(|o: RenderOptions| render(&o, sub, json)),
        _ => unreachable!("clap knows the subcommands"),
    };
    match result {
        Ok(Ok(())) => exit::OK,
        Ok(Err(e)) => {
            eprintln!("tlsrptctl {name}: {e:#}");
            exit::FAILED
        }
        Err(e) => {
            eprintln!("tlsrptctl: {e}");
            exit::USAGE
        }
    }
}

/// A subcommand's options.
fn load<O: ProgramOptions>(sub: &ArgMatches) -> Result<O, ConfigError> {
    config::resolve::<O>(&SPEC, sub, &config::process_env()).map(|(options, _)| options)
}

/// The configured `dbname` and `password_file`.
struct Database<'a> {
    dbname: &'a str,
    password_file: &'a str,
}

impl DbOptions {
    fn database(&self) -> Database<'_> {
        Database {
            dbname: &self.dbname,
            password_file: &self.password_file,
        }
    }
}

impl RenderOptions {
    fn database(&self) -> Database<'_> {
        Database {
            dbname: &self.dbname,
            password_file: &self.password_file,
        }
    }
}

fn open(database: &Database<'_>, write: bool) -> anyhow::Result<ReportdDb> {
    let Database {
        dbname,
        password_file,
    } = *database;
    if dbname.is_empty() {
        bail!("no reportd database: set dbname (--dbname, TLSRPT_REPORTD_DBNAME or [tlsrpt_reportd] dbname in /etc/tlsrpt/reportd.cfg)");
    }
    let password_file = (!password_file.is_empty()).then(|| Path::new(password_file));
    let name = DbName::parse(dbname, password_file)?;
    if let DbName::Sqlite(path) = &name {
        if !path.exists() {
            bail!("{dbname} does not exist (has tlsrpt-reportd run with this dbname?)");
        }
    }
    ReportdDb::open_existing(&name, write).with_context(|| name.shown())
}

fn py(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("None")
}

fn status(database: &Database<'_>, json: bool) -> anyhow::Result<()> {
    let status = open(database, false)?.status()?;
    let sections = [
        ("Fetchjobs", "fetchjobs", &status.fetchjobs),
        ("Reports", "reportdata", &status.reportdata),
        ("Destinations", "destinations", &status.destinations),
    ];
    if json {
        let counts = |rows: &[StatusCount]| -> Value {
            rows.iter()
                .map(|r| json!({"day": r.day, "status": r.status, "count": r.count}))
                .collect()
        };
        let mut out = serde_json::Map::new();
        for (_, key, rows) in sections {
            out.insert(key.into(), counts(rows));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(out)).expect("JSON")
        );
        return Ok(());
    }
    // Upstream's layout: Python's print() of the three columns.
    for (header, _, rows) in sections {
        println!("###  {header}  ###");
        for row in rows.iter() {
            println!("{}   {}   {}", py(&row.day), py(&row.status), row.count);
        }
        println!();
    }
    Ok(())
}

/// Python's `repr` of a list of strings, as upstream prints it.
fn py_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The three destination maps (record, mail, HTTP map files; empty: none),
/// as the reportd reads them.
fn load_maps(record: &str, mail: &str, http: &str) -> anyhow::Result<DestinationMaps> {
    let path = |file: &str| (!file.is_empty()).then(|| PathBuf::from(file));
    DestinationMaps::from_files(
        path(record).as_deref(),
        path(mail).as_deref(),
        path(http).as_deref(),
    )
    .map_err(anyhow::Error::from)
}

fn maptest(o: &MapOptions, sub: &ArgMatches) -> anyhow::Result<()> {
    let domain = sub.get_one::<String>("domain").expect("required");
    let record = sub.get_one::<String>("tlsrpt_record").expect("required");
    println!("Domain: {domain}");
    println!("Record: {record}");
    let maps = load_maps(
        &o.tlsrpt_record_map,
        &o.mail_destination_map,
        &o.http_upload_map,
    )?;
    let parsed = parse_record(record).context("the record gives no destinations")?;
    for skipped in &parsed.skipped {
        println!("Skipped rua: {skipped}");
    }
    let initial: Vec<String> = parsed
        .destinations
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "Initial recipients before mapping : {} recipients:  {}",
        initial.len(),
        py_list(&initial)
    );
    let trace = maps.explain(domain, &parsed.destinations);
    for step in &trace.steps {
        println!("  {step}");
    }
    for dropped in &trace.dropped {
        println!("  dropped {}: {}", dropped.destination, dropped.reason);
    }
    println!(
        "Resulting recipients after mapping : {} recipients:  {}",
        trace.destinations.len(),
        py_list(&trace.destinations)
    );
    Ok(())
}

/// A destination's state in a few words, and the limit that withheld it
/// (if one did).
fn destination_status(d: &DestinationState) -> (&str, Option<&'static str>) {
    match d.status.as_deref() {
        None => ("pending", None),
        Some(status) => match WithheldReason::from_status(status) {
            Some(reason) => ("withheld", Some(withheld_why(reason))),
            None => (status, None),
        },
    }
}

fn withheld_why(reason: WithheldReason) -> &'static str {
    match reason {
        WithheldReason::DestinationsPerRecord => "beyond max_destinations_per_record of its record",
        WithheldReason::RecordsPerDomain => {
            "its record is beyond max_records_per_domain of the day"
        }
        WithheldReason::AlreadyReported => "already gets a report of this domain and day",
    }
}

fn report_id(report: &StoredReport) -> String {
    report.report_id().unwrap_or_default()
}

fn report_json(report: &StoredReport, with_report: bool) -> Value {
    let mut value = json!({
        "id": report.r_id,
        "day": report.day,
        "domain": report.domain,
        "report_id": report_id(report),
        "tlsrpt_record": report.tlsrptrecord,
        "destinations": report.destinations.iter().map(|d| json!({
            "destination": d.destination,
            "status": destination_status(d).0,
            "withheld": destination_status(d).1,
            "retries": d.retries,
            "nexttry": d.nexttry,
        })).collect::<Vec<_>>(),
    });
    if with_report {
        value["report"] =
            serde_json::from_str(&report.report).unwrap_or(Value::String(report.report.clone()));
    }
    value
}

fn list(database: &Database<'_>, sub: &ArgMatches, json: bool) -> anyhow::Result<()> {
    let day = sub
        .get_one::<String>("day")
        .map(|d| Day::parse(d))
        .transpose()?;
    let domain = sub.get_one::<String>("domain").map(String::as_str);
    let reports = open(database, false)?.reports(day, domain)?;
    if json {
        let all: Vec<Value> = reports.iter().map(|r| report_json(r, false)).collect();
        println!("{}", serde_json::to_string_pretty(&all).expect("JSON"));
        return Ok(());
    }
    println!(
        "{:>6}  {:10}  {:30}  {:10}  {:>7}  DESTINATION",
        "ID", "DAY", "DOMAIN", "STATUS", "RETRIES"
    );
    for report in &reports {
        if report.destinations.is_empty() {
            println!(
                "{:>6}  {:10}  {:30}  {:10}  {:>7}  (none)",
                report.r_id, report.day, report.domain, "-", "-"
            );
        }
        for d in &report.destinations {
            let (status, why) = destination_status(d);
            println!(
                "{:>6}  {:10}  {:30}  {:10}  {:>7}  {}{}",
                report.r_id,
                report.day,
                report.domain,
                status,
                d.retries,
                d.destination,
                why.map(|why| format!("  ({why})")).unwrap_or_default()
            );
        }
    }
    println!("{} report(s)", reports.len());
    Ok(())
}

/// A report by number or by report-id.
fn find(db: &mut ReportdDb, id: &str) -> anyhow::Result<StoredReport> {
    if let Ok(r_id) = id.parse::<i64>() {
        return db
            .report(r_id)?
            .with_context(|| format!("no report number {r_id}"));
    }
    let day = id.get(..10).and_then(|d| Day::parse(d).ok());
    db.reports(day, None)?
        .into_iter()
        .find(|r| report_id(r) == id)
        .with_context(|| format!("no report with report-id {id:?}"))
}

fn show(database: &Database<'_>, sub: &ArgMatches, json: bool) -> anyhow::Result<()> {
    let mut db = open(database, false)?;
    let report = find(&mut db, sub.get_one::<String>("report").expect("required"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&report, true)).expect("JSON")
        );
        return Ok(());
    }
    println!(
        "Report {} for {} on {}",
        report.r_id, report.domain, report.day
    );
    println!("Report-ID: {}", report_id(&report));
    println!(
        "Record: {}",
        report
            .tlsrptrecord
            .as_deref()
            .unwrap_or("(not stored by upstream reportd)")
    );
    for d in &report.destinations {
        match destination_status(d) {
            (_, Some(why)) => println!("Destination: {}  withheld: {why}", d.destination),
            (status, None) => println!(
                "Destination: {}  status {status}  retries {}  next try {}",
                d.destination,
                d.retries,
                d.nexttry.as_deref().unwrap_or("-")
            ),
        }
    }
    let pretty = serde_json::from_str::<Value>(&report.report)
        .map(|v| serde_json::to_string_pretty(&v).expect("JSON"))
        .unwrap_or(report.report.clone());
    println!("{pretty}");
    Ok(())
}

fn resend(database: &Database<'_>, sub: &ArgMatches) -> anyhow::Result<()> {
    let mut db = open(database, true)?;
    let report = find(&mut db, sub.get_one::<String>("report").expect("required"))?;
    let destination = sub.get_one::<String>("destination").map(String::as_str);
    if report.destinations.is_empty() {
        bail!(
            "report {} has no destinations (its record gave none; see the reportd log)",
            report.r_id
        );
    }
    if let Some(wanted) = destination {
        if !report.destinations.iter().any(|d| d.destination == wanted) {
            bail!(
                "report {} has no destination {wanted:?}; it has: {}",
                report.r_id,
                report
                    .destinations
                    .iter()
                    .map(|d| d.destination.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let withheld = |d: &DestinationState| destination_status(d).1.is_some();
    if destination.is_none() && report.destinations.iter().all(withheld) {
        bail!(
            "report {}: the amplification limits withheld all its destinations; name one to send it there anyway",
            report.r_id
        );
    }
    let now = mailtls_common::clock::from_env()
        .map_err(anyhow::Error::msg)?
        .now();
    let queued = db.resend(report.r_id, destination, now)?;
    if queued.is_empty() {
        bail!(
            "report {}: nothing queued (a delivery is in progress right now)",
            report.r_id
        );
    }
    for d in queued {
        println!(
            "queued report {} ({}) for {d}",
            report.r_id,
            report_id(&report)
        );
    }
    Ok(())
}

fn render(o: &RenderOptions, sub: &ArgMatches, json: bool) -> anyhow::Result<()> {
    let day = Day::parse(sub.get_one::<String>("day").expect("required"))?;
    let directory = PathBuf::from(sub.get_one::<String>("directory").expect("required"));
    std::fs::create_dir_all(&directory).with_context(|| directory.display().to_string())?;
    let mut db = open(&o.database(), false)?;
    let maps = load_maps(
        &o.tlsrpt_record_map,
        &o.mail_destination_map,
        &o.http_upload_map,
    )?;
    let caps = reportd::caps(o.max_destinations_per_record, o.max_records_per_domain)?;
    let organization = ReportingOrganization {
        name: o.organization_name.clone(),
        contact_info: o.contact_info.clone(),
    };
    let domains = db.fetched_domains(day)?;
    if domains.is_empty() {
        bail!("no fetched data for {day} in the reportd database");
    }
    let mut summary = Vec::new();
    for domain in &domains {
        let fetched = db.details_of(day, domain)?;
        let outcome = make_reports(day, domain, &fetched, &organization, &maps, &caps);
        for warning in &outcome.warnings {
            eprintln!("warning: {warning}");
        }
        for report in outcome.reports {
            let file = directory.join(format!("{}.json", report.report_id));
            std::fs::write(&file, &report.json).with_context(|| file.display().to_string())?;
            let withheld: Vec<Value> = report
                .withheld
                .iter()
                .map(|w| json!({"destination": w.destination, "withheld": withheld_why(w.reason)}))
                .collect();
            if !json {
                println!("{}  -> {}", file.display(), report.destinations.join(", "));
                for w in &report.withheld {
                    println!("    withheld {}: {}", w.destination, withheld_why(w.reason));
                }
            }
            summary.push(json!({"file": file, "domain": domain, "report_id": report.report_id, "destinations": report.destinations, "withheld": withheld}));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("JSON"));
    } else {
        println!(
            "{} report(s) for {} domain(s) written; nothing was sent",
            summary.len(),
            domains.len()
        );
    }
    Ok(())
}
