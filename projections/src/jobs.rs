//! Import jobs and their progress: one row per job, shaped like the status
//! answer.

use chrono::{DateTime, Utc};
use karvon_domain::import_job::{ImportJobEvent, ImportKind, ImportSource, ImportStatus};

/// Rejected records kept per job (the count is always complete).
pub const REJECTED_KEPT: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub tenant_id: String,
    pub job_id: String,
    pub integration_id: Option<String>,
    pub kind: ImportKind,
    pub source: ImportSource,
    pub status: ImportStatus,
    pub total: i64,
    pub processed: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub errors: i64,
    /// `[{reference, reason}]`, the first [`REJECTED_KEPT`].
    pub rejected: serde_json::Value,
    pub message: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    /// Whole percent of `total` processed (100 once completed).
    pub fn progress_percent(&self) -> i64 {
        match self.status {
            ImportStatus::Completed => 100,
            _ if self.total <= 0 => 0,
            _ => (self.processed * 100 / self.total).clamp(0, 100),
        }
    }
}

/// Folds one job event into the job's row (`None` before it started).
pub fn apply(row: Option<JobRow>, tenant_id: &str, event: &ImportJobEvent) -> Option<JobRow> {
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    match event {
        ImportJobEvent::ImportStarted {
            job_id,
            integration_id,
            kind,
            source,
            started_at,
        } => Some(JobRow {
            tenant_id: tenant_id.to_string(),
            job_id: job_id.to_string(),
            integration_id: integration_id.as_ref().map(ToString::to_string),
            kind: *kind,
            source: *source,
            status: ImportStatus::Fetching,
            total: 0,
            processed: 0,
            created: 0,
            updated: 0,
            unchanged: 0,
            errors: 0,
            rejected: serde_json::Value::Array(Vec::new()),
            message: None,
            started_at: *started_at,
            finished_at: None,
        }),
        ImportJobEvent::ImportFetched { total, .. } => row.map(|row| JobRow {
            total: count(*total),
            status: ImportStatus::Processing,
            ..row
        }),
        ImportJobEvent::ImportChunkProcessed { outcome, .. } => row.map(|mut row| {
            row.processed += count(outcome.processed());
            row.created += count(outcome.created);
            row.updated += count(outcome.updated);
            row.unchanged += count(outcome.unchanged);
            row.errors += count(outcome.rejected.len() as u64);
            if let serde_json::Value::Array(kept) = &mut row.rejected {
                for rejection in &outcome.rejected {
                    if kept.len() >= REJECTED_KEPT {
                        break;
                    }
                    kept.push(serde_json::json!({
                        "ref": rejection.reference,
                        "reason": rejection.reason,
                    }));
                }
            }
            row
        }),
        ImportJobEvent::ImportCompleted { finished_at, .. } => row.map(|row| JobRow {
            status: ImportStatus::Completed,
            finished_at: Some(*finished_at),
            ..row
        }),
        ImportJobEvent::ImportFailed {
            message,
            finished_at,
            ..
        } => row.map(|row| JobRow {
            status: ImportStatus::Error,
            message: Some(message.clone()),
            finished_at: Some(*finished_at),
            ..row
        }),
    }
}

#[cfg(test)]
mod tests {
    use karvon_domain::Id;
    use karvon_domain::import_job::{ChunkOutcome, Rejection};

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_000_000, 0).expect("time")
    }

    #[test]
    fn chunks_add_up_and_progress_follows_them() {
        let job_id = Id::parse("job-1").expect("id");
        let events = [
            ImportJobEvent::ImportStarted {
                job_id: job_id.clone(),
                integration_id: None,
                kind: ImportKind::Products,
                source: ImportSource::Commerceml,
                started_at: at(),
            },
            ImportJobEvent::ImportFetched {
                job_id: job_id.clone(),
                total: 400,
            },
            ImportJobEvent::ImportChunkProcessed {
                job_id: job_id.clone(),
                chunk: 0,
                outcome: ChunkOutcome {
                    created: 90,
                    updated: 5,
                    unchanged: 4,
                    rejected: vec![Rejection {
                        reference: "g".into(),
                        reason: "bad price".into(),
                    }],
                },
            },
        ];
        let row = events
            .iter()
            .fold(None, |row, event| apply(row, "t1", event))
            .expect("row");
        assert_eq!(row.status, ImportStatus::Processing);
        assert_eq!((row.processed, row.created, row.errors), (100, 90, 1));
        assert_eq!(row.progress_percent(), 25);
        assert_eq!(row.rejected[0]["ref"], "g");
        let done = apply(
            Some(row),
            "t1",
            &ImportJobEvent::ImportCompleted {
                job_id,
                finished_at: at(),
            },
        )
        .expect("row");
        assert_eq!(done.progress_percent(), 100);
        assert_eq!(done.finished_at, Some(at()));
    }
}
