//! A PostgreSQL schema of its own for one test (or benchmark), dropped
//! with it, on the server `BACKSTOP_TEST_POSTGRES` names (by default the
//! one this project's machines run: `postgres://postgres@127.0.0.1:5432/test`).
//!
//! No server is a failure under `CI` (a run that silently skipped the
//! PostgreSQL store would pass for the wrong reason) and a skip, said on
//! stderr, on a developer's machine.

use super::{block_on_pg, pg_message};
use crate::store::{Location, PgLocation, StoreError};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The variable naming the test server.
pub const SERVER_ENV: &str = "BACKSTOP_TEST_POSTGRES";
/// The server tests use when the variable is not set.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema made for one test; dropped (with everything in it) on drop.
pub struct Scratch {
    location: PgLocation,
}

impl Scratch {
    /// A fresh schema for `test`, or `None` (said on stderr) when no
    /// server answers on a developer's machine. Panics under `CI` when no
    /// server answers, saying how to provide one.
    pub fn new(test: &str) -> Option<Scratch> {
        let server = std::env::var(SERVER_ENV).unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
        let base = match PgLocation::from_str(&server) {
            Ok(b) => b,
            Err(e) => panic!("{SERVER_ENV}={server:?} is not a PostgreSQL URL: {e}"),
        };
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "bt_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            crate::store::now_ms() % 1_000_000
        );
        let location = base.with_schema(&name).expect("a plain name");
        match admin(&location, format!("CREATE SCHEMA \"{name}\"")) {
            Ok(()) => Some(Scratch { location }),
            Err(e) if std::env::var_os("CI").is_some() => panic!(
                "{test}: PostgreSQL is needed under CI and did not answer at {base}: {e}\n\
                 start the server (this project's machines run it on 127.0.0.1:5432, trust \
                 auth, database `test`) or point {SERVER_ENV} at one"
            ),
            Err(e) => {
                eprintln!(
                    "skipped: {test}: no PostgreSQL at {base} ({e}); start one or set \
                    {SERVER_ENV} to test the PostgreSQL store"
                );
                None
            }
        }
    }

    pub fn location(&self) -> &PgLocation {
        &self.location
    }

    /// The `state` setting naming this schema.
    pub fn state(&self) -> String {
        self.location.url()
    }

    pub fn store_location(&self) -> Location {
        Location::Postgres(self.location.clone())
    }

    /// Runs `sql` in the schema, as an operator (or an attacker) with
    /// direct access to the database would: tests damage rows with it.
    pub fn execute(&self, sql: &str) -> Result<(), StoreError> {
        admin(&self.location, sql.to_owned())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.location.schema);
        if let Err(e) = admin(&self.location, sql) {
            eprintln!("warning: could not drop test schema {}: {e}", self.location);
        }
    }
}

/// One statement on a connection of its own.
fn admin(at: &PgLocation, sql: String) -> Result<(), StoreError> {
    let mut config = at.config();
    config
        .connect_timeout(Duration::from_secs(3))
        .options(format!("-c search_path={}", at.schema));
    let shown = at.to_string();
    block_on_pg(&shown.clone(), Duration::from_secs(10), async move {
        let fail = |message: String| StoreError::Postgres {
            location: shown.clone(),
            message,
        };
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| fail(pg_message(&e)))?;
        let task = tokio::spawn(conn);
        let r = client.batch_execute(&sql).await;
        drop(client);
        let _ = task.await;
        r.map_err(|e| fail(pg_message(&e)))
    })
}
