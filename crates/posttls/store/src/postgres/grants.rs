//! The roles of a fleet's database (docs/fleets.md, "PostTLS on PostgreSQL"): what
//! the web's role needs, what only the worker's may do, and what `mailtls
//! check` reads of the role a configuration connects as.

use mailtls_postgres::PgUrl;

use super::schema::MIGRATIONS;

/// What `mailtls check` says of a PostTLS database on PostgreSQL and of
/// the role the configuration reaches it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInspection {
    /// The role connected as.
    pub role: String,
    /// The `posttls` tables' schema version (0: not made yet).
    pub version: i32,
    /// This program's schema version.
    pub known: i32,
    /// The role owns the tables: the workers' role.
    pub owner: bool,
    /// What the web pages need that the role may not do, e.g.
    /// `INSERT on posttls_audit`.
    pub web_lacks: Vec<String>,
    /// What only the worker should do that the role may do too.
    pub worker_only: Vec<String>,
}

/// A privilege on a table, or on one of its columns.
type Privilege = (&'static str, Option<&'static str>, &'static str);

/// What the web role needs: the grants of docs/fleets.md.
const WEB_NEEDS: &[Privilege] = &[
    ("mailtls_schema", None, "SELECT"),
    ("posttls_messages", None, "SELECT"),
    ("posttls_recipients", None, "SELECT"),
    ("posttls_notifications", None, "SELECT"),
    ("posttls_tokens_used", None, "SELECT"),
    ("posttls_actions", None, "SELECT"),
    ("posttls_action_recipients", None, "SELECT"),
    ("posttls_action_copies", None, "SELECT"),
    ("posttls_audit", None, "SELECT"),
    ("posttls_admins", None, "SELECT"),
    ("posttls_sessions", None, "SELECT"),
    ("posttls_mandatory_domains", None, "SELECT"),
    ("posttls_tokens_used", None, "INSERT"),
    ("posttls_audit", None, "INSERT"),
    ("posttls_sessions", None, "INSERT"),
    ("posttls_mandatory_domains", None, "INSERT"),
    ("posttls_actions", Some("message_id"), "INSERT"),
    ("posttls_actions", Some("action"), "INSERT"),
    ("posttls_actions", Some("requested_by"), "INSERT"),
    ("posttls_actions", Some("ip"), "INSERT"),
    ("posttls_actions", Some("requested_at"), "INSERT"),
    ("posttls_action_recipients", Some("action_id"), "INSERT"),
    ("posttls_action_recipients", Some("address"), "INSERT"),
    ("posttls_action_recipients", Some("approved"), "INSERT"),
    ("posttls_sessions", None, "DELETE"),
    ("posttls_mandatory_domains", None, "DELETE"),
];

/// What only the worker may do: with any of these a web process taken
/// over could change a state, forge a result or erase its traces.
const WORKER_ONLY: &[Privilege] = &[
    ("posttls_messages", None, "INSERT"),
    ("posttls_messages", None, "UPDATE"),
    ("posttls_messages", None, "DELETE"),
    ("posttls_recipients", None, "INSERT"),
    ("posttls_recipients", None, "UPDATE"),
    ("posttls_notifications", None, "INSERT"),
    ("posttls_notifications", None, "UPDATE"),
    ("posttls_actions", None, "UPDATE"),
    ("posttls_actions", None, "DELETE"),
    ("posttls_actions", Some("state"), "INSERT"),
    ("posttls_actions", Some("phase"), "INSERT"),
    ("posttls_actions", Some("result"), "INSERT"),
    ("posttls_actions", Some("new_queue_id"), "INSERT"),
    ("posttls_action_recipients", None, "UPDATE"),
    ("posttls_action_recipients", Some("outcome"), "INSERT"),
    ("posttls_action_copies", None, "INSERT"),
    ("posttls_action_copies", None, "UPDATE"),
    ("posttls_tokens_used", None, "UPDATE"),
    ("posttls_tokens_used", None, "DELETE"),
    ("posttls_audit", None, "UPDATE"),
    ("posttls_audit", None, "DELETE"),
    ("posttls_admins", None, "INSERT"),
    ("posttls_admins", None, "UPDATE"),
    ("mailtls_schema", None, "UPDATE"),
];

/// Connects to `url` and reads what [`PgInspection`] says, changing
/// nothing.
pub fn inspect(url: &PgUrl) -> std::result::Result<PgInspection, mailtls_postgres::PgError> {
    let mut client = url.connect()?;
    let err = |e| url.error(e);
    let row = client
        .query_one(
            "SELECT current_user::text, to_regclass('mailtls_schema') IS NOT NULL,
                    coalesce((SELECT tableowner = current_user FROM pg_tables
                               WHERE schemaname = current_schema() AND tablename = 'posttls_messages'), false)",
            &[],
        )
        .map_err(err)?;
    let (role, schema_table, owner): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let version: i32 = if schema_table {
        client
            .query_opt(
                "SELECT version FROM mailtls_schema WHERE component = $1",
                &[&MIGRATIONS.component],
            )
            .map_err(err)?
            .map_or(0, |row| row.get(0))
    } else {
        0
    };
    let mut inspection = PgInspection {
        role,
        version,
        known: MIGRATIONS.newest(),
        owner,
        web_lacks: Vec::new(),
        worker_only: Vec::new(),
    };
    if version == 0 {
        return Ok(inspection);
    }
    let mut may = |&(table, column, privilege): &Privilege| -> std::result::Result<bool, _> {
        let row = match column {
            None => client.query_one("SELECT has_table_privilege($1, $2)", &[&table, &privilege]),
            Some(column) => client.query_one(
                "SELECT has_column_privilege($1, $2, $3)",
                &[&table, &column, &privilege],
            ),
        };
        row.map(|row| row.get::<_, bool>(0)).map_err(err)
    };
    let named = |&(table, column, privilege): &Privilege| match column {
        None => format!("{privilege} on {table}"),
        Some(column) => format!("{privilege} ({column}) on {table}"),
    };
    for needed in WEB_NEEDS {
        if !may(needed)? {
            inspection.web_lacks.push(named(needed));
        }
    }
    for forbidden in WORKER_ONLY {
        if may(forbidden)? {
            inspection.worker_only.push(named(forbidden));
        }
    }
    Ok(inspection)
}
