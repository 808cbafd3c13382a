//! The PostTLS store in one SQLite file (one host: the worker and the web
//! process on the MTA). The database runs in WAL mode so that the web
//! process reads while the worker writes; every write transaction is
//! `BEGIN IMMEDIATE`, so writers queue for the lock instead of failing
//! half-way.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::{ActionRow, MessageRow, Result, StoreError, UnknownValue};

mod queries;
mod schema;

#[cfg(test)]
pub(crate) use schema::SCHEMA;
pub use schema::SCHEMA_VERSION;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to the SQLite file.
pub(crate) struct SqliteDb {
    conn: Connection,
}

impl SqliteDb {
    /// Opens (creating when new, migrating when older) the database at
    /// `path`.
    ///
    /// The connection is defensive: the schema cannot be changed behind
    /// SQLite's back (`SQLITE_DBCONFIG_DEFENSIVE`) and functions in the
    /// schema (views, triggers) are not trusted (`trusted_schema = OFF`),
    /// so a database file written by the unprivileged web process cannot
    /// make the privileged worker run anything but this program's SQL.
    pub(crate) fn open(path: &Path) -> Result<SqliteDb> {
        // Whoever creates the database, the web pages must write it and the
        // worker too (SQLite gives its -wal and -shm files, when root
        // creates them, to the database file's owner).
        mailtls_common::ownership::create_owned_like_directory(path, 0o600).map_err(|source| {
            StoreError::Create {
                path: path.to_owned(),
                source,
            }
        })?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.pragma_update(None, "trusted_schema", false)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // In WAL mode NORMAL loses nothing when a process dies, only the
        // last transactions on power loss, and saves a disk sync per write.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let store = SqliteDb { conn };
        store.migrate()?;
        Ok(store)
    }
}

/// A stored TLS failure class: NULL, or a short name this program knows.
fn tls_kind_column(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<Option<posttls_classify::TlsFailureKind>> {
    row.get::<_, Option<String>>(index)?
        .map(|name| crate::states::tls_kind_named(&name))
        .transpose()
        .map_err(|unknown: UnknownValue| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(unknown),
            )
        })
}

const MESSAGE_COLUMNS: &str =
    "id, instance, queue_id, arrival_time, sender, subject, own_sender, state, \
     first_seen, last_seen, requiretls";

fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: row.get(0)?,
        instance: row.get(1)?,
        queue_id: row.get(2)?,
        arrival_time: row.get(3)?,
        sender: row.get(4)?,
        subject: row.get(5)?,
        own_sender: row.get(6)?,
        state: row.get(7)?,
        first_seen: row.get(8)?,
        last_seen: row.get(9)?,
        requiretls: row.get(10)?,
    })
}

const ACTION_COLUMNS: &str = "id, message_id, action, requested_by, ip, requested_at, state, \
     phase, result, new_queue_id, finished_at";

fn action_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRow> {
    Ok(ActionRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        action: r.get(2)?,
        requested_by: r.get(3)?,
        ip: r.get(4)?,
        requested_at: r.get(5)?,
        state: r.get(6)?,
        phase: r.get(7)?,
        result: r.get(8)?,
        new_queue_id: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

/// What only a SQLite file has: its owner and its migrations. The
/// behaviour both backends share is in `tests/contract.rs`.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::Connection;

    use super::SCHEMA;
    use crate::{ActionRecipient, ActionState, Phase, Store, StoreError, SCHEMA_VERSION};

    #[test]
    fn a_database_created_by_root_belongs_to_its_directory_owner_with_its_wal() {
        // The worker (root) may start before the web pages (`_posttls`),
        // who must still write the database it created. As another user
        // the test checks that creation works at all.
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        if root {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        }
        let owner = std::fs::metadata(dir.path()).unwrap().uid();
        let path = dir.path().join("posttls.sqlite");
        let store = Store::open(&path).unwrap();
        store
            .add_mandatory_domain("example.org", "test", 0)
            .unwrap();
        for file in ["posttls.sqlite", "posttls.sqlite-wal", "posttls.sqlite-shm"] {
            let meta = std::fs::metadata(dir.path().join(file)).unwrap();
            assert_eq!(meta.uid(), owner, "{file}");
        }
        drop(store);
        assert!(
            Store::open(&path)
                .unwrap()
                .mandatory_domains()
                .unwrap()
                .len()
                == 1
        );
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE notes(x);")
            .unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Foreign)));
    }

    /// Creates a database with the version-1 schema at `path`, as a
    /// version-1 program would have, and returns the raw connection.
    fn version_1_database(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute("INSERT INTO meta VALUES('schema_version','1')", [])
            .unwrap();
        conn
    }

    /// A version-1 database migrates: queued releases approve the TLS-failed,
    /// non-mandatory pending recipients, and running actions are in `Hold`.
    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        version_1_database(&path)
            .execute_batch(
                "INSERT INTO messages VALUES(1, 'mx1', 'A1', 1, 'alice@example.org', NULL, 1, 'deferred', 10, 10);
                 INSERT INTO recipients VALUES(1, 'tls@x', 'no TLS', 'not_offered', 0, 'pending');
                 INSERT INTO recipients VALUES(1, 'slow@x', 'timeout', NULL, 0, 'pending');
                 INSERT INTO actions(id, message_id, action, requested_by, requested_at, state)
                     VALUES(1, 1, 'release', 'token', 11, 'queued');
                 INSERT INTO actions(id, message_id, action, requested_by, requested_at, state)
                     VALUES(2, 1, 'delete', 'token', 12, 'running');",
            )
            .unwrap();
        let store = Store::open(&path).unwrap();
        let version: String = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        assert_eq!(
            store.action_recipients(1).unwrap(),
            [ActionRecipient {
                address: "tls@x".into(),
                approved: true,
                outcome: None,
                why: None,
            }]
        );
        let running = store.action(2).unwrap().unwrap();
        assert_eq!(
            (running.state, running.phase),
            (ActionState::Running, Some(Phase::Hold))
        );
        assert_eq!(store.action(1).unwrap().unwrap().phase, None);
    }

    /// A database of a newer schema than this program knows is refused.
    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.sqlite");
        version_1_database(&path)
            .execute(
                "UPDATE meta SET value=? WHERE key='schema_version'",
                [(SCHEMA_VERSION + 1).to_string()],
            )
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::WrongVersion(v)) if v == SCHEMA_VERSION + 1
        ));
    }
}
