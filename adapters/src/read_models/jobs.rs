//! Import jobs (`jobs.import_jobs`): the pure fold
//! `karvon_projections::jobs`, the row's storage declaration, and the
//! queries of the status endpoint and the job worker.

use cqrs_es::Aggregate;
use karvon_domain::import_job::{ImportJob, ImportKind, ImportSource, ImportStatus};
use karvon_projections::jobs::{self, JobRow};
use karvon_projections::names;

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;
use crate::records::{self, Reader, Record, Value, record, serde_text_field};
use crate::runner::Projection;

record! {
    JobRow => "import_jobs", key(tenant_id, job_id),
    {
        tenant_id, job_id, integration_id, kind, source, status, total, processed, created,
        updated, unchanged, errors, rejected, message, started_at, finished_at,
    }
}

serde_text_field!(ImportKind, ImportSource, ImportStatus);

fn text(value: &str) -> Value {
    Value::Text(Some(value.to_string()))
}

pub struct JobsProjection;

#[async_trait::async_trait]
impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        names::JOBS
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[ImportJob::TYPE])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[JobRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<JobRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let items = super::events_of::<ImportJob>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let key = vec![
                    text(&event.metadata.tenant_id),
                    text(payload.job_id().as_str()),
                ];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, items, |row, (event, payload)| {
            jobs::apply(row, &event.metadata.tenant_id, &payload)
        })
        .await
    }
}

pub async fn get_job(
    reader: &mut Reader,
    tenant: &str,
    job_id: &str,
) -> Result<Option<JobRow>, StorageError> {
    records::get(
        &mut reader.conn(),
        names::JOBS,
        vec![text(tenant), text(job_id)],
    )
    .await
}
