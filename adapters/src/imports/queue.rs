//! The import queue (`import_queue`): jobs not yet finished. A row says
//! "run this job"; its progress lives in the job's stream. One row per
//! integration and kind at a time.

use crate::StorageError;
use crate::db::{Db, Portable, on_pool};

/// A queued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub job_id: String,
    pub tenant_id: String,
    pub integration_id: Option<String>,
    /// `products` or `clients`.
    pub kind: String,
    /// `1c_soap`, `1c_odata` or `commerceml`.
    pub source: String,
    pub upload_dir: Option<String>,
    pub actor: String,
    /// The job's parameters as JSON (a REGOS sync: its date window).
    pub params: Option<String>,
}

/// Queues `job` unless the integration already has a job of that kind:
/// then answers that job's id (and queues nothing).
pub async fn enqueue(db: &Db, job: &Queued) -> Result<Option<String>, StorageError> {
    for _ in 0..3 {
        let inserted = on_pool!(db, write, pool => sqlx::query(
            "INSERT INTO import_queue (job_id, tenant_id, integration_id, kind, source,
                                       upload_dir, actor, params)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant_id, integration_id, kind) DO NOTHING",
        )
        .bind(&job.job_id)
        .bind(&job.tenant_id)
        .bind(&job.integration_id)
        .bind(&job.kind)
        .bind(&job.source)
        .bind(&job.upload_dir)
        .bind(&job.actor)
        .bind(&job.params)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            return Ok(None);
        }
        let running: Option<String> = on_pool!(db, write, pool => sqlx::query_scalar(
            "SELECT job_id FROM import_queue
              WHERE tenant_id = $1 AND integration_id = $2 AND kind = $3",
        )
        .bind(&job.tenant_id)
        .bind(&job.integration_id)
        .bind(&job.kind)
        .fetch_optional(pool)
        .await?);
        if let Some(running) = running {
            return Ok(Some(running));
        }
        // The running job finished in between: try again.
    }
    Err(StorageError::Corrupt(
        "the import queue keeps changing under a start".into(),
    ))
}

/// How many uploads (jobs reading an uploaded file) `tenant` has queued
/// or running.
pub async fn uploads_of(db: &Db, tenant: &str) -> Result<i64, StorageError> {
    on_pool!(db, write, pool => Ok(sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM import_queue WHERE tenant_id = $1 AND upload_dir IS NOT NULL",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?))
}

/// Every queued job, oldest first.
pub async fn queued(db: &Db) -> Result<Vec<Queued>, StorageError> {
    on_pool!(db, read, pool => sqlx::query(
        "SELECT job_id, tenant_id, integration_id, kind, source, upload_dir, actor, params
           FROM import_queue ORDER BY queued_at, job_id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(Queued {
            job_id: row.text("job_id")?,
            tenant_id: row.text("tenant_id")?,
            integration_id: row.opt_text("integration_id")?,
            kind: row.text("kind")?,
            source: row.text("source")?,
            upload_dir: row.opt_text("upload_dir")?,
            actor: row.text("actor")?,
            params: row.opt_text("params")?,
        })
    })
    .collect())
}

/// Counts one more start of `job_id`; answers the starts so far (this one
/// included), `None` when the job is no longer queued.
pub async fn count_start(db: &Db, job_id: &str) -> Result<Option<i64>, StorageError> {
    on_pool!(db, write, pool => Ok(sqlx::query_scalar::<_, i64>(
        "UPDATE import_queue SET starts = starts + 1 WHERE job_id = $1 RETURNING CAST(starts AS BIGINT)",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await?))
}

/// Takes back the start [`count_start`] counted: the run returned, so it
/// did not end the process.
pub async fn uncount_start(db: &Db, job_id: &str) -> Result<(), StorageError> {
    on_pool!(db, write, pool => {
        sqlx::query("UPDATE import_queue SET starts = starts - 1 WHERE job_id = $1 AND starts > 0")
            .bind(job_id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Takes a finished job off the queue.
pub async fn dequeue(db: &Db, job_id: &str) -> Result<(), StorageError> {
    on_pool!(db, write, pool => {
        sqlx::query("DELETE FROM import_queue WHERE job_id = $1")
            .bind(job_id)
            .execute(pool)
            .await?;
    });
    Ok(())
}
