//! The cache in PostgreSQL, shared by a fleet's policy servers: component
//! `policyd` in `mailtls_schema`.

use mailtls_postgres::postgres::Client;
use mailtls_postgres::{Migrations, PgUrl};

use crate::{Access, Backend, Result, Row};

const MIGRATIONS: Migrations = Migrations {
    component: "policyd",
    steps: &[(
        1,
        "CREATE TABLE policyd_policies (
             domain text PRIMARY KEY, policy_id text, policy text,
             fetched_at bigint, expires_at bigint, last_failed_fetch bigint, last_error text,
             updated_at bigint NOT NULL);
         CREATE INDEX policyd_policies_updated ON policyd_policies (updated_at);",
    )],
};

const COLUMNS: &str =
    "domain, policy_id, policy, fetched_at, expires_at, last_failed_fetch, last_error, updated_at";

pub struct PgBackend {
    url: PgUrl,
    client: Client,
}

impl PgBackend {
    pub fn open(url: &PgUrl, access: Access) -> Result<PgBackend> {
        let url = url.with_application_name("mailtls policyd");
        let mut client = url.connect()?;
        match access {
            Access::Writer => MIGRATIONS.apply(&mut client, &url)?,
            Access::Reader => MIGRATIONS.check(&mut client, &url, "mailtls policyd")?,
        }
        Ok(PgBackend { url, client })
    }
}

fn row(r: &mailtls_postgres::postgres::Row) -> Row {
    Row {
        domain: r.get(0),
        policy_id: r.get(1),
        policy: r.get(2),
        fetched_at: r.get(3),
        expires_at: r.get(4),
        last_failed_fetch: r.get(5),
        last_error: r.get(6),
        updated_at: r.get(7),
    }
}

impl Backend for PgBackend {
    fn get(&mut self, domain: &str) -> Result<Option<Row>> {
        let found = self
            .client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM policyd_policies WHERE domain = $1"),
                &[&domain],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(found.as_ref().map(row))
    }

    fn put(&mut self, r: &Row) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "INSERT INTO policyd_policies ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id,
                       policy = excluded.policy, fetched_at = excluded.fetched_at,
                       expires_at = excluded.expires_at,
                       last_failed_fetch = excluded.last_failed_fetch,
                       last_error = excluded.last_error, updated_at = excluded.updated_at"
                ),
                &[
                    &r.domain,
                    &r.policy_id,
                    &r.policy,
                    &r.fetched_at,
                    &r.expires_at,
                    &r.last_failed_fetch,
                    &r.last_error,
                    &r.updated_at,
                ],
            )
            .map(drop)
            .map_err(|e| self.url.error(e).into())
    }

    fn recent(&mut self, limit: usize) -> Result<Vec<Row>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM policyd_policies ORDER BY updated_at DESC, domain LIMIT $1"
                ),
                &[&limit],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(rows.iter().map(row).collect())
    }

    fn delete_stale(&mut self, expired_before: i64, failed_before: i64) -> Result<u64> {
        self.client
            .execute(
                "DELETE FROM policyd_policies
                 WHERE coalesce(expires_at, 0) < $1 AND coalesce(last_failed_fetch, 0) < $2",
                &[&expired_before, &failed_before],
            )
            .map_err(|e| self.url.error(e).into())
    }
}
