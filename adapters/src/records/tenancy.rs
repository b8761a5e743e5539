//! The tenant walls of the record layer: read-model tables behind
//! row-level security (PostgreSQL), and read transactions confined to one
//! tenant. Every read-model query runs in a [`Reader`].

use sqlx::{PgConnection, Postgres, Sqlite, Transaction};

use crate::StorageError;
use crate::db::{Conn, Db};

/// The role read-model queries run as; see the `query_role` migration.
pub const QUERY_ROLE: &str = "karvon_query";

/// On PostgreSQL, row-level security as a second wall behind the `WHERE tenant_id = …`
/// every query has: the query role sees only rows of the tenant its
/// transaction names, and nothing when it names none. The projection
/// writes as the tables' owner, which FORCE would bind too, so the owner
/// gets a policy of its own.
/// (SQLite has no roles: one process owns the file, and the
/// `WHERE tenant_id = …` is the wall.)
pub(super) async fn secure_tables(
    conn: &mut Conn<'_>,
    schema: &str,
    tables: &[&str],
) -> Result<(), StorageError> {
    match conn {
        Conn::Postgres(conn) => secure_postgres_tables(conn, schema, tables).await,
        Conn::Sqlite(_) => Ok(()),
    }
}

async fn secure_postgres_tables(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[&str],
) -> Result<(), StorageError> {
    let usable: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'USAGE')")
        .bind(QUERY_ROLE)
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
    if !usable {
        sqlx::query(&format!("GRANT USAGE ON SCHEMA {schema} TO {QUERY_ROLE}"))
            .execute(&mut *conn)
            .await?;
    }
    for table in tables {
        // ALTER TABLE and policy changes lock the table exclusively; on live
        // tables that already carry them (every start after the first, and
        // a rebuild's check of the live schema) that would only risk
        // deadlocks with the runner and queries, so skip them.
        let secured: bool = sqlx::query_scalar(
            "SELECT c.relrowsecurity AND c.relforcerowsecurity
                    AND has_table_privilege($3, c.oid, 'SELECT')
                    AND (SELECT count(*) FROM pg_policies p
                          WHERE p.schemaname = $1 AND p.tablename = $2
                            AND p.policyname IN ('tenant_isolation', 'projection_writer')) = 2
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(schema)
        .bind(table)
        .bind(QUERY_ROLE)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(false);
        if secured {
            continue;
        }
        for statement in [
            format!("GRANT SELECT ON {schema}.{table} TO {QUERY_ROLE}"),
            format!("ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {schema}.{table} FORCE ROW LEVEL SECURITY"),
            format!("DROP POLICY IF EXISTS tenant_isolation ON {schema}.{table}"),
            format!(
                "CREATE POLICY tenant_isolation ON {schema}.{table} FOR SELECT TO {QUERY_ROLE}
                 USING (tenant_id = current_setting('karvon.tenant', true))"
            ),
            // FORCE binds the owner too: the projection (which writes as the
            // owner) keeps full access through its own policy.
            format!("DROP POLICY IF EXISTS projection_writer ON {schema}.{table}"),
            format!(
                "CREATE POLICY projection_writer ON {schema}.{table} FOR ALL TO CURRENT_USER
                 USING (true) WITH CHECK (true)"
            ),
        ] {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// A read transaction for one tenant; every read-model query runs inside
/// one. On PostgreSQL it acts as the query role with the tenant set, so
/// row-level security applies.
pub enum Reader {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Reader {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Reader::Postgres(tx) => Conn::Postgres(tx),
            Reader::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    /// Ends the transaction at once: a dropped one would only roll back when
    /// its connection is next used, holding its locks meanwhile.
    pub async fn finish(self) -> Result<(), StorageError> {
        match self {
            Reader::Postgres(tx) => tx.rollback().await?,
            Reader::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

pub async fn tenant_reader(db: &Db, tenant: &str) -> Result<Reader, StorageError> {
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("SET LOCAL ROLE {QUERY_ROLE}"))
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT set_config('karvon.tenant', $1, true)")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            Ok(Reader::Postgres(tx))
        }
        Db::Sqlite(sqlite) => Ok(Reader::Sqlite(sqlite.readers.begin().await?)),
    }
}
