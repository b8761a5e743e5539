//! The `ImportJob` aggregate: one run of an import from an external system
//! (1C products or clients, a CommerceML upload, REGOS sales), and
//! its progress.
//!
//! Identity: tenant + job id (stream id `<tenant>/<job>`). A job is
//! fetched, then processed chunk by chunk; each chunk's outcome is an
//! event committed together with the records it wrote, so a job that was
//! interrupted resumes after its last processed chunk and never counts a
//! chunk twice.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id};

/// What a job imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportKind {
    Products,
    Clients,
    Sales,
}

/// Where a job reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportSource {
    #[serde(rename = "1c_soap")]
    OneCSoap,
    #[serde(rename = "1c_odata")]
    OneCOdata,
    Commerceml,
    Regos,
}

/// A record the job could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub reference: String,
    pub reason: String,
}

/// What one chunk did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOutcome {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: Vec<Rejection>,
}

impl ChunkOutcome {
    /// Records the chunk went through, rejected ones included.
    pub fn processed(&self) -> u64 {
        self.created + self.updated + self.unchanged + self.rejected.len() as u64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImportJobCommand {
    Start {
        job_id: Id,
        integration_id: Option<Id>,
        kind: ImportKind,
        source: ImportSource,
        at: DateTime<Utc>,
    },
    /// The source was read: `total` records to process. Sent again after a
    /// resume re-reads the source.
    RecordFetched {
        total: u64,
    },
    ProcessChunk {
        chunk: u64,
        outcome: ChunkOutcome,
    },
    Complete {
        at: DateTime<Utc>,
    },
    Fail {
        message: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ImportJobEvent {
    ImportStarted {
        job_id: Id,
        integration_id: Option<Id>,
        kind: ImportKind,
        source: ImportSource,
        started_at: DateTime<Utc>,
    },
    ImportFetched {
        job_id: Id,
        total: u64,
    },
    ImportChunkProcessed {
        job_id: Id,
        chunk: u64,
        #[serde(flatten)]
        outcome: ChunkOutcome,
    },
    ImportCompleted {
        job_id: Id,
        finished_at: DateTime<Utc>,
    },
    ImportFailed {
        job_id: Id,
        message: String,
        finished_at: DateTime<Utc>,
    },
}

impl DomainEvent for ImportJobEvent {
    fn event_type(&self) -> String {
        match self {
            ImportJobEvent::ImportStarted { .. } => "ImportStarted",
            ImportJobEvent::ImportFetched { .. } => "ImportFetched",
            ImportJobEvent::ImportChunkProcessed { .. } => "ImportChunkProcessed",
            ImportJobEvent::ImportCompleted { .. } => "ImportCompleted",
            ImportJobEvent::ImportFailed { .. } => "ImportFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

impl ImportJobEvent {
    pub fn job_id(&self) -> &Id {
        match self {
            ImportJobEvent::ImportStarted { job_id, .. }
            | ImportJobEvent::ImportFetched { job_id, .. }
            | ImportJobEvent::ImportChunkProcessed { job_id, .. }
            | ImportJobEvent::ImportCompleted { job_id, .. }
            | ImportJobEvent::ImportFailed { job_id, .. } => job_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportJobError {
    #[error("job {0} was already started with other parameters")]
    AlreadyStarted(Id),
    #[error("the job has not started")]
    NotStarted,
    #[error("the job has finished")]
    Finished,
    #[error("chunk {given} is out of turn; the next is {next}")]
    OutOfTurn { given: u64, next: u64 },
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Reading the source.
    #[default]
    Fetching,
    /// Writing the records, chunk by chunk.
    Processing,
    Completed,
    Error,
}

impl ImportStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, ImportStatus::Completed | ImportStatus::Error)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportJob {
    started: Option<Started>,
    status: ImportStatus,
    total: u64,
    next_chunk: u64,
    processed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Started {
    job_id: Id,
    integration_id: Option<Id>,
    kind: ImportKind,
    source: ImportSource,
}

impl ImportJob {
    pub fn is_started(&self) -> bool {
        self.started.is_some()
    }

    pub fn status(&self) -> ImportStatus {
        self.status
    }

    /// The chunk to process next (chunks before it are committed).
    pub fn next_chunk(&self) -> u64 {
        self.next_chunk
    }

    pub fn kind(&self) -> Option<ImportKind> {
        self.started.as_ref().map(|started| started.kind)
    }

    pub fn source(&self) -> Option<ImportSource> {
        self.started.as_ref().map(|started| started.source)
    }

    pub fn integration_id(&self) -> Option<&Id> {
        self.started.as_ref()?.integration_id.as_ref()
    }

    fn running(&self) -> Result<Id, ImportJobError> {
        let started = self.started.as_ref().ok_or(ImportJobError::NotStarted)?;
        if self.status.is_finished() {
            return Err(ImportJobError::Finished);
        }
        Ok(started.job_id.clone())
    }
}

impl Aggregate for ImportJob {
    const TYPE: &'static str = "ImportJob";
    type Command = ImportJobCommand;
    type Event = ImportJobEvent;
    type Error = ImportJobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            ImportJobCommand::Start {
                job_id,
                integration_id,
                kind,
                source,
                at,
            } => {
                let wanted = Started {
                    job_id: job_id.clone(),
                    integration_id: integration_id.clone(),
                    kind,
                    source,
                };
                match &self.started {
                    Some(started) if *started == wanted => return Ok(()),
                    Some(_) => return Err(ImportJobError::AlreadyStarted(job_id)),
                    None => ImportJobEvent::ImportStarted {
                        job_id,
                        integration_id,
                        kind,
                        source,
                        started_at: at,
                    },
                }
            }
            ImportJobCommand::RecordFetched { total } => {
                let job_id = self.running()?;
                if self.status == ImportStatus::Processing && self.total == total {
                    return Ok(());
                }
                ImportJobEvent::ImportFetched { job_id, total }
            }
            ImportJobCommand::ProcessChunk { chunk, outcome } => {
                let job_id = self.running()?;
                if chunk != self.next_chunk {
                    return Err(ImportJobError::OutOfTurn {
                        given: chunk,
                        next: self.next_chunk,
                    });
                }
                ImportJobEvent::ImportChunkProcessed {
                    job_id,
                    chunk,
                    outcome,
                }
            }
            ImportJobCommand::Complete { at } => {
                if self.status == ImportStatus::Completed {
                    return Ok(());
                }
                ImportJobEvent::ImportCompleted {
                    job_id: self.running()?,
                    finished_at: at,
                }
            }
            ImportJobCommand::Fail { message, at } => {
                if self.status == ImportStatus::Error {
                    return Ok(());
                }
                ImportJobEvent::ImportFailed {
                    job_id: self.running()?,
                    message,
                    finished_at: at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ImportJobEvent::ImportStarted {
                job_id,
                integration_id,
                kind,
                source,
                ..
            } => {
                self.started = Some(Started {
                    job_id,
                    integration_id,
                    kind,
                    source,
                });
                self.status = ImportStatus::Fetching;
            }
            ImportJobEvent::ImportFetched { total, .. } => {
                self.total = total;
                self.status = ImportStatus::Processing;
            }
            ImportJobEvent::ImportChunkProcessed { outcome, .. } => {
                self.next_chunk += 1;
                self.processed += outcome.processed();
            }
            ImportJobEvent::ImportCompleted { .. } => self.status = ImportStatus::Completed,
            ImportJobEvent::ImportFailed { .. } => self.status = ImportStatus::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type JobTest = TestFramework<ImportJob>;

    fn id() -> Id {
        Id::parse("job-1").expect("id")
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_000_000, 0).expect("time")
    }

    fn started() -> ImportJobEvent {
        ImportJobEvent::ImportStarted {
            job_id: id(),
            integration_id: Some(Id::parse("int-1").expect("id")),
            kind: ImportKind::Products,
            source: ImportSource::OneCSoap,
            started_at: at(),
        }
    }

    fn start() -> ImportJobCommand {
        ImportJobCommand::Start {
            job_id: id(),
            integration_id: Some(Id::parse("int-1").expect("id")),
            kind: ImportKind::Products,
            source: ImportSource::OneCSoap,
            at: at(),
        }
    }

    fn outcome(created: u64) -> ChunkOutcome {
        ChunkOutcome {
            created,
            updated: 1,
            unchanged: 2,
            rejected: vec![Rejection {
                reference: "g-9".into(),
                reason: "Price \"x\" is not a number".into(),
            }],
        }
    }

    #[test]
    fn starting_twice_with_the_same_parameters_changes_nothing() {
        JobTest::with(())
            .given_no_previous_events()
            .when(start())
            .then_expect_events(vec![started()]);
        JobTest::with(())
            .given(vec![started()])
            .when(start())
            .then_expect_events(vec![]);
    }

    #[test]
    fn another_start_on_the_same_id_is_refused() {
        JobTest::with(())
            .given(vec![started()])
            .when(ImportJobCommand::Start {
                job_id: id(),
                integration_id: None,
                kind: ImportKind::Clients,
                source: ImportSource::Commerceml,
                at: at(),
            })
            .then_expect_error(ImportJobError::AlreadyStarted(id()));
    }

    #[test]
    fn chunks_are_taken_in_turn_and_never_twice() {
        let fetched = ImportJobEvent::ImportFetched {
            job_id: id(),
            total: 250,
        };
        let first = ImportJobEvent::ImportChunkProcessed {
            job_id: id(),
            chunk: 0,
            outcome: outcome(96),
        };
        JobTest::with(())
            .given(vec![started(), fetched.clone()])
            .when(ImportJobCommand::ProcessChunk {
                chunk: 0,
                outcome: outcome(96),
            })
            .then_expect_events(vec![first.clone()]);
        JobTest::with(())
            .given(vec![started(), fetched, first])
            .when(ImportJobCommand::ProcessChunk {
                chunk: 0,
                outcome: outcome(96),
            })
            .then_expect_error(ImportJobError::OutOfTurn { given: 0, next: 1 });
    }

    #[test]
    fn a_refetch_with_the_same_total_is_not_recorded_again() {
        let fetched = ImportJobEvent::ImportFetched {
            job_id: id(),
            total: 250,
        };
        JobTest::with(())
            .given(vec![started(), fetched])
            .when(ImportJobCommand::RecordFetched { total: 250 })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_finished_job_takes_no_more_chunks_and_finishing_again_is_a_no_op() {
        let completed = ImportJobEvent::ImportCompleted {
            job_id: id(),
            finished_at: at(),
        };
        JobTest::with(())
            .given(vec![started(), completed.clone()])
            .when(ImportJobCommand::ProcessChunk {
                chunk: 0,
                outcome: outcome(1),
            })
            .then_expect_error(ImportJobError::Finished);
        JobTest::with(())
            .given(vec![started(), completed.clone()])
            .when(ImportJobCommand::Complete { at: at() })
            .then_expect_events(vec![]);
        JobTest::with(())
            .given(vec![started(), completed])
            .when(ImportJobCommand::Fail {
                message: "late".into(),
                at: at(),
            })
            .then_expect_error(ImportJobError::Finished);
    }

    #[test]
    fn a_failure_names_its_reason() {
        JobTest::with(())
            .given(vec![started()])
            .when(ImportJobCommand::Fail {
                message: "1C answered HTTP 500".into(),
                at: at(),
            })
            .then_expect_events(vec![ImportJobEvent::ImportFailed {
                job_id: id(),
                message: "1C answered HTTP 500".into(),
                finished_at: at(),
            }]);
    }

    #[test]
    fn processed_counts_rejected_records_too() {
        assert_eq!(outcome(96).processed(), 100);
    }
}
