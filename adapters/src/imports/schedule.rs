//! The daily REGOS sync: each `regos` integration runs at its
//! `settings.sync_time` (local, the tenant's zone). Whichever instance
//! first records the day in `scheduled_runs` starts the job; a run missed
//! while no instance was up starts at the next look, its window reaching
//! back to the day after the last scheduled run.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use serde_json::json;

use super::{Imports, Queued, spelled};
use crate::StorageError;
use crate::db::{Db, on_pool};
use crate::integrations;
use karvon_domain::import_job::{ImportKind, ImportSource};

/// The local day whose run is due at `now`, and that run's instant; `None`
/// when the integration was registered after it.
fn due(
    now: DateTime<Utc>,
    zone: chrono_tz::Tz,
    sync_time: NaiveTime,
    registered: DateTime<Utc>,
) -> Option<NaiveDate> {
    let local = now.with_timezone(&zone);
    let today = local.date_naive();
    let day = if local.time() >= sync_time {
        today
    } else {
        today.pred_opt()?
    };
    let at = zone
        .from_local_datetime(&day.and_time(sync_time))
        .earliest()?
        .with_timezone(&Utc);
    (at >= registered).then_some(day)
}

impl Imports {
    /// Starts every daily sync that is due and not yet started.
    pub async fn start_due_runs(&self) -> Result<(), StorageError> {
        for (integration, registered) in integrations::of_kind(&self.db, "regos").await? {
            let zone = crate::auth_store::tenant(&self.db, &integration.tenant_id)
                .await?
                .and_then(|tenant| tenant.time_zone.parse().ok())
                .unwrap_or(chrono_tz::UTC);
            let sync_time = integration.settings["sync_time"]
                .as_str()
                .and_then(|text| NaiveTime::parse_from_str(text, "%H:%M").ok())
                .unwrap_or(NaiveTime::MIN);
            let Some(day) = due(Utc::now(), zone, sync_time, registered) else {
                continue;
            };
            let id = integration.id.to_string();
            let last = last_run(&self.db, &id).await?;
            if last.is_some_and(|last| last >= day) {
                continue;
            }
            let job_id = uuid::Uuid::now_v7().to_string();
            if !claim(&self.db, &id, day, &job_id).await? {
                continue;
            }
            // From the day after the last run (at most a month back), else
            // yesterday, to the run's day.
            let from = last
                .and_then(|last| last.succ_opt())
                .map(|next| next.max(day - chrono::Duration::days(31)))
                .unwrap_or_else(|| day.pred_opt().unwrap_or(day))
                .min(day);
            let job = Queued {
                job_id,
                tenant_id: integration.tenant_id.clone(),
                integration_id: Some(id.clone()),
                kind: spelled(&ImportKind::Sales),
                source: spelled(&ImportSource::Regos),
                upload_dir: None,
                actor: "system:schedule".to_string(),
                params: Some(
                    json!({"date_from": from.to_string(), "date_to": day.to_string()}).to_string(),
                ),
            };
            match self.start(job).await {
                Ok(started) => {
                    tracing::info!(integration = id, %day, job_id = started.job_id, "daily REGOS sync started")
                }
                Err(error) => {
                    tracing::warn!(integration = id, %error, "daily REGOS sync did not start")
                }
            }
        }
        Ok(())
    }
}

async fn last_run(db: &Db, integration_id: &str) -> Result<Option<NaiveDate>, StorageError> {
    let days: Vec<String> = on_pool!(db, read, pool => sqlx::query_scalar(
        "SELECT CAST(scheduled_for AS TEXT) FROM scheduled_runs WHERE integration_id = $1",
    )
    .bind(integration_id)
    .fetch_all(pool)
    .await?);
    Ok(days
        .iter()
        .filter_map(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
        .max())
}

/// Records the run of `day`; false when another instance did.
async fn claim(
    db: &Db,
    integration_id: &str,
    day: NaiveDate,
    job_id: &str,
) -> Result<bool, StorageError> {
    let day = day.to_string();
    let insert = match db.backend() {
        crate::db::Backend::Postgres => {
            "INSERT INTO scheduled_runs (integration_id, scheduled_for, job_id)
             VALUES ($1, $2::date, $3) ON CONFLICT DO NOTHING"
        }
        crate::db::Backend::Sqlite => {
            "INSERT INTO scheduled_runs (integration_id, scheduled_for, job_id)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        }
    };
    let inserted = on_pool!(db, write, pool => sqlx::query(insert)
        .bind(integration_id)
        .bind(&day)
        .bind(job_id)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("time")
    }

    #[test]
    fn the_due_day_follows_the_local_sync_time() {
        let zone: chrono_tz::Tz = "Asia/Tashkent".parse().expect("zone");
        let three = NaiveTime::from_hms_opt(3, 0, 0).expect("time");
        let registered = at("2026-01-01T00:00:00Z");
        // 02:59 in Tashkent (UTC+5) on the 10th: yesterday's run is due.
        assert_eq!(
            due(at("2026-01-09T21:59:00Z"), zone, three, registered),
            NaiveDate::from_ymd_opt(2026, 1, 9)
        );
        // 03:00 there: today's.
        assert_eq!(
            due(at("2026-01-09T22:00:00Z"), zone, three, registered),
            NaiveDate::from_ymd_opt(2026, 1, 10)
        );
        // Nothing was due since the integration was registered.
        assert_eq!(
            due(
                at("2026-01-10T10:00:00Z"),
                zone,
                three,
                at("2026-01-10T09:00:00Z")
            ),
            None
        );
    }
}
