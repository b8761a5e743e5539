//! The record layer: read-model rows declared once, stored on either
//! backend by generic code.
//!
//! A row type names its table, key, indexes and columns in one
//! [`record!`] declaration; each column's SQL type follows from its Rust
//! type ([`Field`]). From that, [`create`], [`upsert`], [`load`] and
//! [`delete`] work on both backends with one statement per batch:
//! PostgreSQL binds one array per column (`UNNEST`), SQLite one JSON array
//! of rows (`json_each`). Dialect differences live in [`Backend`] here,
//! not in the read models.
//!
//! ```text
//! record! {
//!     ProductRow => "products", key(tenant_id, product_id),
//!     index products_category_idx(tenant_id, category, product_id),
//!     { tenant_id, product_id, sku, name, price, status, created_at }
//! }
//! ```

mod tenancy;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Backend, Conn, Portable, sqlite_time};
pub use tenancy::{QUERY_ROLE, Reader, tenant_reader};

/// The SQL types a column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    BigInt,
    Decimal,
    Json,
    Time,
    Uuid,
    Bool,
    Date,
}

impl Backend {
    /// The column type for `ty` (SQLite keeps decimals, JSON, times, UUIDs
    /// and dates as text).
    pub fn sql_type(self, ty: SqlType) -> &'static str {
        match (self, ty) {
            (_, SqlType::Text) => "text",
            (_, SqlType::BigInt) => "bigint",
            (Backend::Postgres, SqlType::Decimal) => "numeric",
            (Backend::Postgres, SqlType::Json) => "jsonb",
            (Backend::Postgres, SqlType::Time) => "timestamptz",
            (Backend::Postgres, SqlType::Uuid) => "uuid",
            (Backend::Postgres, SqlType::Bool) => "boolean",
            (Backend::Postgres, SqlType::Date) => "date",
            (Backend::Sqlite, SqlType::Bool) => "integer",
            (Backend::Sqlite, _) => "text",
        }
    }

    /// Where a batch of rows comes from in a statement: one array per
    /// column on PostgreSQL (`$1…$n`), one JSON array of rows on SQLite
    /// (`$1`). `columns` are the columns bound, in order.
    fn rows_source(self, columns: &[&Column]) -> String {
        match self {
            Backend::Postgres => {
                let arrays: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(index, column)| {
                        format!("${}::{}[]", index + 1, self.sql_type(column.ty))
                    })
                    .collect();
                format!("SELECT * FROM UNNEST({})", arrays.join(", "))
            }
            Backend::Sqlite => {
                let fields: Vec<String> = (0..columns.len())
                    .map(|index| format!("value ->> {index}"))
                    .collect();
                // `WHERE true` lets an ON CONFLICT clause follow the SELECT.
                format!("SELECT {} FROM json_each($1) WHERE true", fields.join(", "))
            }
        }
    }
}

/// One column of a record's table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: SqlType,
    pub nullable: bool,
}

/// One value of a column, as bound.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(Option<String>),
    BigInt(Option<i64>),
    Decimal(Option<Decimal>),
    Json(Option<serde_json::Value>),
    Time(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    Bool(Option<bool>),
    Date(Option<NaiveDate>),
}

impl Value {
    /// The value as it travels in SQLite's JSON rows.
    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match self {
            Value::Text(text) => text.clone().map_or(Json::Null, Json::String),
            Value::BigInt(int) => int.map_or(Json::Null, Json::from),
            Value::Decimal(decimal) => decimal.map_or(Json::Null, |d| Json::String(d.to_string())),
            Value::Json(json) => json
                .as_ref()
                .map_or(Json::Null, |json| Json::String(json.to_string())),
            Value::Time(time) => time
                .as_ref()
                .map_or(Json::Null, |time| Json::String(sqlite_time(time))),
            Value::Uuid(uuid) => uuid.map_or(Json::Null, |uuid| Json::String(uuid.to_string())),
            Value::Bool(flag) => flag.map_or(Json::Null, |flag| Json::from(i64::from(flag))),
            Value::Date(date) => date.map_or(Json::Null, |date| Json::String(date.to_string())),
        }
    }
}

/// A Rust type that can be a column.
pub trait Field: Sized {
    const TYPE: SqlType;
    const NULLABLE: bool = false;
    fn value(&self) -> Value;
    fn read(row: &(impl Portable + ?Sized), column: &str) -> Result<Self, StorageError>;
}

macro_rules! field {
    ($rust:ty, $sql:ident, $variant:ident, $read:ident, $read_opt:ident) => {
        impl Field for $rust {
            const TYPE: SqlType = SqlType::$sql;
            fn value(&self) -> Value {
                Value::$variant(Some(self.clone()))
            }
            fn read(row: &(impl Portable + ?Sized), column: &str) -> Result<Self, StorageError> {
                row.$read(column)
            }
        }

        impl Field for Option<$rust> {
            const TYPE: SqlType = SqlType::$sql;
            const NULLABLE: bool = true;
            fn value(&self) -> Value {
                Value::$variant(self.clone())
            }
            fn read(row: &(impl Portable + ?Sized), column: &str) -> Result<Self, StorageError> {
                row.$read_opt(column)
            }
        }
    };
}

field!(String, Text, Text, text, opt_text);
field!(i64, BigInt, BigInt, int, opt_int);
field!(Decimal, Decimal, Decimal, decimal, opt_decimal);
field!(serde_json::Value, Json, Json, json, opt_json);
field!(DateTime<Utc>, Time, Time, time, opt_time);
field!(Uuid, Uuid, Uuid, uuid, opt_uuid);
field!(bool, Bool, Bool, flag, opt_flag);
field!(NaiveDate, Date, Date, date, opt_date);

/// Implements [`Field`] for an enum that serde spells as a string (a
/// `rename_all = "snake_case"` status, a kind): stored as that text.
macro_rules! serde_text_field {
    ($($rust:ty),+ $(,)?) => {$(
        impl $crate::records::Field for $rust {
            const TYPE: $crate::records::SqlType = $crate::records::SqlType::Text;
            fn value(&self) -> $crate::records::Value {
                let text = match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(text)) => Some(text),
                    _ => None,
                };
                $crate::records::Value::Text(text)
            }
            fn read(
                row: &(impl $crate::db::Portable + ?Sized),
                column: &str,
            ) -> Result<Self, $crate::StorageError> {
                let text = row.text(column)?;
                serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| {
                    $crate::StorageError::Corrupt(format!(
                        "{} {text:?} in {column}",
                        stringify!($rust)
                    ))
                })
            }
        }
    )+};
}
pub(crate) use serde_text_field;

/// A read-model row stored with the generic functions of this module.
/// Implement it with [`record!`].
pub trait Record: Sized + Send + Sync {
    /// The table, unqualified (see [`Backend::table`]).
    const TABLE: &'static str;
    /// The key columns (the primary key).
    const KEY: &'static [&'static str];
    /// Secondary indexes: name and columns.
    const INDEXES: &'static [(&'static str, &'static [&'static str])];
    /// Every column, in declaration order.
    fn columns() -> Vec<Column>;
    /// This row's values, in [`Record::columns`] order.
    fn values(&self) -> Vec<Value>;
    /// This row's key, in [`Record::KEY`] order.
    fn key(&self) -> Vec<Value>;
    fn from_row(row: &(impl Portable + ?Sized)) -> Result<Self, StorageError>;

    /// The columns, comma-separated, for a query's select list.
    fn column_list() -> String {
        Self::columns()
            .iter()
            .map(|column| column.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The [`SqlType`] of a struct field, inferred from an accessor.
#[doc(hidden)]
pub fn column_of<R, T: Field>(name: &'static str, _field: fn(&R) -> &T) -> Column {
    Column {
        name,
        ty: T::TYPE,
        nullable: T::NULLABLE,
    }
}

/// Declares how a row type is stored: its table, key, indexes and
/// columns (each a field of the struct, `field as "column"` where the
/// names differ). Column types follow from the field types.
#[macro_export]
macro_rules! record {
    (
        $row:ty => $table:literal, key($($key:ident),+ $(,)?)
        $(, index $index:ident($($indexed:ident),+ $(,)?))* ,
        { $($field:ident $(as $column:literal)?),+ $(,)? }
    ) => {
        impl $crate::records::Record for $row {
            const TABLE: &'static str = $table;
            const KEY: &'static [&'static str] = &[$(stringify!($key)),+];
            const INDEXES: &'static [(&'static str, &'static [&'static str])] =
                &[$((stringify!($index), &[$(stringify!($indexed)),+])),*];

            fn columns() -> Vec<$crate::records::Column> {
                vec![$($crate::records::column_of(
                    $crate::record!(@name $field $($column)?),
                    |row: &$row| &row.$field,
                )),+]
            }

            fn values(&self) -> Vec<$crate::records::Value> {
                vec![$($crate::records::Field::value(&self.$field)),+]
            }

            fn key(&self) -> Vec<$crate::records::Value> {
                vec![$($crate::records::Field::value(&self.$key)),+]
            }

            fn from_row(
                row: &(impl $crate::db::Portable + ?Sized),
            ) -> Result<Self, $crate::StorageError> {
                Ok(Self {
                    $($field: $crate::records::Field::read(
                        row,
                        $crate::record!(@name $field $($column)?),
                    )?),+
                })
            }
        }
    };
    (@name $field:ident $column:literal) => { $column };
    (@name $field:ident) => { stringify!($field) };
}
pub use record;

/// Creates the record's table and indexes in `schema` when missing, and on
/// PostgreSQL puts them behind row-level security.
pub async fn create<R: Record>(conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
    let backend = conn.backend();
    let table = backend.table(schema, R::TABLE);
    let mut lines: Vec<String> = R::columns()
        .iter()
        .map(|column| {
            format!(
                "{} {}{}",
                column.name,
                backend.sql_type(column.ty),
                if column.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    lines.push(format!("PRIMARY KEY ({})", R::KEY.join(", ")));
    conn.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    {}\n)",
        lines.join(",\n    ")
    ))
    .await?;
    for (index, columns) in R::INDEXES {
        conn.execute(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} ({})",
            backend.index(schema, index),
            columns.join(", ")
        ))
        .await?;
    }
    tenancy::secure_tables(conn, schema, &[R::TABLE]).await
}

/// Inserts `rows`, replacing the rows with the same key, in one statement.
pub async fn upsert<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    rows: &[R],
) -> Result<(), StorageError> {
    let updates: Vec<String> = R::columns()
        .iter()
        .filter(|column| !R::KEY.contains(&column.name))
        .map(|column| format!("{0} = excluded.{0}", column.name))
        .collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let clause = format!("ON CONFLICT ({}) {on_conflict}", R::KEY.join(", "));
    write_rows(conn, schema, rows, &clause).await
}

/// Inserts `rows` that are new by construction (an append-only history
/// keyed by feed position), in one statement. A row whose key exists is an
/// error (a constraint violation stops the consumer on its event): cheaper
/// than [`upsert`], whose conflict arbitration costs every row.
pub async fn insert<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    rows: &[R],
) -> Result<(), StorageError> {
    write_rows(conn, schema, rows, "").await
}

async fn write_rows<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    rows: &[R],
    clause: &str,
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let backend = conn.backend();
    let columns = R::columns();
    let bound: Vec<&Column> = columns.iter().collect();
    let statement = format!(
        "INSERT INTO {} ({}) {} {clause}",
        backend.table(schema, R::TABLE),
        R::column_list(),
        backend.rows_source(&bound),
    );
    let values: Vec<Vec<Value>> = rows.iter().map(Record::values).collect();
    run_with_rows(conn, &statement, &bound, values).await
}

/// Folds a batch into stored rows: loads the rows of every item's key in
/// one statement, hands each item in order to `fold` with its key's row so
/// far (`None` when there is none yet), and upserts what the folds leave,
/// in one statement.
pub async fn fold<R: Record, T>(
    conn: &mut Conn<'_>,
    schema: &str,
    items: Vec<(Vec<Value>, T)>,
    mut fold: impl FnMut(Option<R>, T) -> Option<R>,
) -> Result<(), StorageError> {
    if items.is_empty() {
        return Ok(());
    }
    let key_text = |key: &[Value]| {
        serde_json::Value::Array(key.iter().map(Value::to_json).collect()).to_string()
    };
    let keys = items.iter().map(|(key, _)| key.clone()).collect();
    let mut rows: std::collections::HashMap<String, R> = load::<R>(conn, schema, keys)
        .await?
        .into_iter()
        .map(|row| (key_text(&row.key()), row))
        .collect();
    for (key, item) in items {
        let key = key_text(&key);
        let current = rows.remove(&key);
        if let Some(row) = fold(current, item) {
            rows.insert(key, row);
        }
    }
    let rows: Vec<R> = rows.into_values().collect();
    upsert(conn, schema, &rows).await
}

/// The rows whose keys are among `keys` (each key's values in
/// [`Record::KEY`] order), in one statement.
pub async fn load<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    keys: Vec<Vec<Value>>,
) -> Result<Vec<R>, StorageError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let backend = conn.backend();
    let columns = R::columns();
    let key_columns = key_columns::<R>(&columns)?;
    let statement = format!(
        "SELECT {} FROM {} WHERE ({}) IN ({})",
        R::column_list(),
        backend.table(schema, R::TABLE),
        R::KEY.join(", "),
        backend.rows_source(&key_columns),
    );
    let query = sqlx::query(&statement);
    let rows = match conn {
        Conn::Postgres(c) => postgres_rows(query, &key_columns, keys)?
            .fetch_all(&mut **c)
            .await?
            .iter()
            .map(R::from_row)
            .collect::<Result<Vec<_>, _>>()?,
        Conn::Sqlite(c) => sqlx::query(&statement)
            .bind(sqlite_rows(&keys))
            .fetch_all(&mut **c)
            .await?
            .iter()
            .map(R::from_row)
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows)
}

/// The row with `key` (values in [`Record::KEY`] order), if any.
pub async fn get<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    key: Vec<Value>,
) -> Result<Option<R>, StorageError> {
    Ok(load::<R>(conn, schema, vec![key]).await?.pop())
}

/// One page of a tenant's rows for records keyed `(tenant_id, <id>)`: the
/// rows whose id comes after `after`, in id order, at most `limit`.
pub async fn page<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<R>, StorageError> {
    let [tenant_column, id] = R::KEY else {
        return Err(StorageError::Corrupt(format!(
            "{} is not keyed by (tenant, id)",
            R::TABLE
        )));
    };
    let backend = conn.backend();
    let statement = format!(
        "SELECT {} FROM {} WHERE {tenant_column} = $1 AND ({} IS NULL OR {id} > $2)
          ORDER BY {id} LIMIT $3",
        R::column_list(),
        backend.table(schema, R::TABLE),
        backend.text_param("$2"),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Text(after.map(str::to_string)),
        Value::BigInt(Some(limit)),
    ];
    fetch_records(conn, &statement, params).await
}

/// Deletes the rows whose keys are among `keys`, in one statement.
pub async fn delete<R: Record>(
    conn: &mut Conn<'_>,
    schema: &str,
    keys: Vec<Vec<Value>>,
) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    let backend = conn.backend();
    let columns = R::columns();
    let key_columns = key_columns::<R>(&columns)?;
    let statement = format!(
        "DELETE FROM {} WHERE ({}) IN ({})",
        backend.table(schema, R::TABLE),
        R::KEY.join(", "),
        backend.rows_source(&key_columns),
    );
    run_with_rows(conn, &statement, &key_columns, keys).await
}

fn key_columns<R: Record>(columns: &[Column]) -> Result<Vec<&Column>, StorageError> {
    R::KEY
        .iter()
        .map(|key| {
            columns
                .iter()
                .find(|column| column.name == *key)
                .ok_or_else(|| {
                    StorageError::Config(format!("{}: key column {key} is not a column", R::TABLE))
                })
        })
        .collect()
}

async fn run_with_rows(
    conn: &mut Conn<'_>,
    statement: &str,
    columns: &[&Column],
    rows: Vec<Vec<Value>>,
) -> Result<(), StorageError> {
    match conn {
        Conn::Postgres(c) => {
            postgres_rows(sqlx::query(statement), columns, rows)?
                .execute(&mut **c)
                .await?;
        }
        Conn::Sqlite(c) => {
            sqlx::query(statement)
                .bind(sqlite_rows(&rows))
                .execute(&mut **c)
                .await?;
        }
    }
    Ok(())
}

/// SQLite: the rows as one JSON array of arrays.
fn sqlite_rows(rows: &[Vec<Value>]) -> String {
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| serde_json::Value::Array(row.iter().map(Value::to_json).collect()))
        .collect();
    serde_json::Value::Array(json).to_string()
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// PostgreSQL: one typed array per column.
fn postgres_rows<'q>(
    mut query: PgQuery<'q>,
    columns: &[&Column],
    rows: Vec<Vec<Value>>,
) -> Result<PgQuery<'q>, StorageError> {
    // Transpose, moving each value (no copies).
    let mut cells: Vec<Vec<Value>> = columns
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        for (column, value) in cells.iter_mut().zip(row) {
            column.push(value);
        }
    }
    for (column, values) in columns.iter().zip(cells) {
        let mismatch = || {
            StorageError::Config(format!(
                "column {} was given a value of another type",
                column.name
            ))
        };
        macro_rules! array {
            ($variant:ident) => {
                values
                    .into_iter()
                    .map(|value| match value {
                        Value::$variant(value) => Ok(value),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
        }
        query = match column.ty {
            SqlType::Text => query.bind(array!(Text)),
            SqlType::BigInt => query.bind(array!(BigInt)),
            SqlType::Decimal => query.bind(array!(Decimal)),
            SqlType::Json => query.bind(array!(Json)),
            SqlType::Time => query.bind(array!(Time)),
            SqlType::Uuid => query.bind(array!(Uuid)),
            SqlType::Bool => query.bind(array!(Bool)),
            SqlType::Date => query.bind(array!(Date)),
        };
    }
    Ok(query)
}

/// Runs a query (`$1…` bound from `params`, typed by each value) and maps
/// every row with `map`, on either backend. Read models write their query
/// SQL and this binds and decodes it.
pub async fn fetch<T>(
    conn: &mut Conn<'_>,
    statement: &str,
    params: Vec<Value>,
    map: impl Fn(&dyn Portable) -> Result<T, StorageError>,
) -> Result<Vec<T>, StorageError> {
    match conn {
        Conn::Postgres(c) => {
            let mut query = sqlx::query(statement);
            for param in params {
                query = match param {
                    Value::Text(value) => query.bind(value),
                    Value::BigInt(value) => query.bind(value),
                    Value::Decimal(value) => query.bind(value),
                    Value::Json(value) => query.bind(value),
                    Value::Time(value) => query.bind(value),
                    Value::Uuid(value) => query.bind(value),
                    Value::Bool(value) => query.bind(value),
                    Value::Date(value) => query.bind(value),
                };
            }
            let rows = query.fetch_all(&mut **c).await?;
            rows.iter().map(|row| map(row)).collect()
        }
        Conn::Sqlite(c) => {
            let mut query = sqlx::query(statement);
            for param in params {
                // As SQLite stores them: decimals, JSON, times and UUIDs as text.
                query = match param {
                    Value::Text(value) => query.bind(value),
                    Value::BigInt(value) => query.bind(value),
                    Value::Bool(value) => query.bind(value),
                    Value::Date(value) => query.bind(value),
                    other => query.bind(other.to_json().as_str().map(str::to_string)),
                };
            }
            let rows = query.fetch_all(&mut **c).await?;
            rows.iter().map(|row| map(row)).collect()
        }
    }
}

/// [`fetch`] of whole records.
pub async fn fetch_records<R: Record>(
    conn: &mut Conn<'_>,
    statement: &str,
    params: Vec<Value>,
) -> Result<Vec<R>, StorageError> {
    fetch(conn, statement, params, |row| R::from_row(row)).await
}
