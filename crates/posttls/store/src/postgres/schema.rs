//! The `posttls` tables on PostgreSQL, version by version (component
//! `posttls` in `mailtls_schema`). The tables are prefixed `posttls_` so
//! that they can share a database with the TLSRPT tables.

use mailtls_postgres::Migrations;

/// The `posttls` tables, version by version. Only the worker applies
/// them; the web process checks the version.
pub(super) const MIGRATIONS: Migrations = Migrations {
    component: "posttls",
    steps: &[
        (
            1,
            "CREATE TABLE posttls_messages (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             instance text NOT NULL, queue_id text NOT NULL, arrival_time bigint NOT NULL,
             sender text NOT NULL, subject text, own_sender boolean NOT NULL, state text NOT NULL,
             first_seen bigint NOT NULL, last_seen bigint NOT NULL,
             UNIQUE (instance, queue_id, arrival_time));
         CREATE INDEX posttls_messages_state ON posttls_messages (state, last_seen);
         CREATE TABLE posttls_recipients (
             message_id bigint NOT NULL REFERENCES posttls_messages (id),
             address text NOT NULL, delay_reason text, tls_kind text,
             mandatory boolean NOT NULL, state text NOT NULL,
             PRIMARY KEY (message_id, address));
         CREATE TABLE posttls_notifications (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             message_id bigint NOT NULL REFERENCES posttls_messages (id),
             kind text NOT NULL, sent_to text NOT NULL, at bigint NOT NULL, outcome text NOT NULL);
         CREATE INDEX posttls_notifications_message ON posttls_notifications (message_id);
         CREATE TABLE posttls_tokens_used (
             token_id text PRIMARY KEY, message_id bigint NOT NULL, action text NOT NULL,
             at bigint NOT NULL, ip text);
         -- The web role inserts requests without naming the worker's
         -- columns (it has no grant for them): a request starts queued.
         CREATE TABLE posttls_actions (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             message_id bigint NOT NULL REFERENCES posttls_messages (id),
             action text NOT NULL, requested_by text NOT NULL, ip text, requested_at bigint NOT NULL,
             state text NOT NULL DEFAULT 'queued', phase text,
             not_before bigint NOT NULL DEFAULT 0, attempts bigint NOT NULL DEFAULT 0,
             result text, new_queue_id text, finished_at bigint);
         CREATE INDEX posttls_actions_state ON posttls_actions (state, id);
         CREATE TABLE posttls_action_recipients (
             action_id bigint NOT NULL REFERENCES posttls_actions (id),
             address text NOT NULL, approved boolean NOT NULL, outcome text, why text,
             PRIMARY KEY (action_id, address));
         CREATE TABLE posttls_action_copies (
             action_id bigint NOT NULL REFERENCES posttls_actions (id),
             role text NOT NULL, marker text NOT NULL, recipients text NOT NULL, queue_id text,
             PRIMARY KEY (action_id, role));
         CREATE TABLE posttls_audit (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             at bigint NOT NULL, actor text NOT NULL, ip text, message_id bigint,
             event text NOT NULL, detail text NOT NULL);
         CREATE INDEX posttls_audit_at ON posttls_audit (at);
         CREATE TABLE posttls_admins (
             name text PRIMARY KEY, password_hash text NOT NULL, created bigint NOT NULL);
         CREATE TABLE posttls_sessions (
             id text PRIMARY KEY, admin text NOT NULL, created bigint NOT NULL, expires bigint NOT NULL);
         CREATE TABLE posttls_mandatory_domains (
             domain text PRIMARY KEY, added_by text NOT NULL, added_at bigint NOT NULL);",
        ),
        // Whether the sender asked for REQUIRETLS (Postfix 3.11).
        (
            2,
            "ALTER TABLE posttls_messages ADD COLUMN requiretls boolean NOT NULL DEFAULT false;",
        ),
    ],
};

/// What the web process says when the tables are missing or old.
pub(super) const CREATOR: &str = "start `posttls worker` (or run `posttls adduser`) with its role";
