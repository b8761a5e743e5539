//! Meters (the `meters` read model): the tenant's meters with their last
//! reading, and a meter's readings over a time range. Readings arrive
//! over MQTT (`karvon_adapters::mqtt`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, FixedOffset, Utc};
use karvon_adapters::read_models::meters;
use karvon_domain::ids::meter_stream_id;
use karvon_domain::meter::{MeterCommand, RelayAction};
use karvon_projections::meters::{CommandRow, MeterRow, ReadingRow};
use karvon_projections::names;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, new_id, path_id};
use super::envelope::{CommandData, Envelope, Items, Page, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, next_page, page_size, reader, wait_for_position};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_meters))
        .routes(routes!(get_meter))
        .routes(routes!(meter_readings))
        .routes(routes!(request_command, list_commands))
        .routes(routes!(meter_consumption))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsumptionQuery {
    /// `hourly`, `daily` (default) or `monthly`, in the tenant's zone.
    period: Option<String>,
    /// Local date, inclusive (default: 7 days before `to`).
    #[param(value_type = Option<String>, format = Date)]
    from: Option<chrono::NaiveDate>,
    /// Local date, inclusive (default: today).
    #[param(value_type = Option<String>, format = Date)]
    to: Option<chrono::NaiveDate>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumptionBuckets {
    /// Oldest first; periods without readings left out.
    buckets: Vec<ConsumptionView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumptionView {
    /// The period's first local instant (`2026-01-02T00:00:00+05:00`).
    period_start: String,
    /// kWh: the last register at or before the period's end minus the
    /// last one at or before its start (not a sum of interval messages).
    #[schema(value_type = String)]
    consumption: Decimal,
    readings: i64,
    /// Steps where the register went down in the period.
    backwards_steps: i64,
}

#[utoipa::path(get, path = "/api/v1/meters/{id}/consumption", tag = "meters",
    summary = "A meter's consumption per local hour, day or month, from register differences",
    params(("id" = String, Path, description = "Meter id"), ConsumptionQuery),
    responses((status = 200, description = "OK", body = inline(Envelope<ConsumptionBuckets>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn meter_consumption(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(meter_id): Path<String>,
    ApiQuery(query): ApiQuery<ConsumptionQuery>,
) -> Result<Json<Envelope<ConsumptionBuckets>>, ApiError> {
    use chrono::TimeZone;
    use karvon_projections::meters::{ConsumptionPeriod, consumption};
    wait_for_position(&state, &principal, &headers, &[names::METERS]).await?;
    let period = match query.period.as_deref() {
        Some("hourly") => ConsumptionPeriod::Hourly,
        None | Some("daily") => ConsumptionPeriod::Daily,
        Some("monthly") => ConsumptionPeriod::Monthly,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "period {other:?} is not hourly, daily or monthly"
            )));
        }
    };
    let zone = principal.time_zone;
    let today = Utc::now().with_timezone(&zone).date_naive();
    let to = query.to.unwrap_or(today);
    let from = query.from.unwrap_or(to - chrono::Duration::days(7));
    if from > to || (to - from).num_days() > 3 * 366 {
        return Err(ApiError::validation(
            "from must not be after to, and the range spans at most 3 years",
        ));
    }
    let instant = |day: chrono::NaiveDate| {
        day.and_hms_opt(0, 0, 0)
            .and_then(|midnight| zone.from_local_datetime(&midnight).earliest())
            .map(|local| local.with_timezone(&Utc))
            .ok_or_else(|| ApiError::validation(format!("{day} has no start in {zone}")))
    };
    let (start, end) = (instant(from)?, instant(to + chrono::Duration::days(1))?);
    let mut tx = reader(&state, &principal).await?;
    let registers =
        meters::registers(&mut tx, principal.tenant.as_str(), &meter_id, start, end).await?;
    finish(tx).await?;
    let local = |at: DateTime<Utc>| at.with_timezone(&zone).naive_local();
    let buckets = consumption(&registers, local, period, start)
        .into_iter()
        .map(|bucket| ConsumptionView {
            period_start: zone
                .from_local_datetime(&bucket.period_start)
                .earliest()
                .map_or_else(|| bucket.period_start.to_string(), |at| at.to_rfc3339()),
            consumption: bucket.consumption,
            readings: bucket.readings,
            backwards_steps: bucket.backwards_steps,
        })
        .collect();
    Ok(ok(ConsumptionBuckets { buckets }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// `relay_off`, `relay_on` or `set_tariff`.
    #[schema(value_type = String)]
    command: RelayAction,
    /// Required for `set_tariff`.
    tariff_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/meters/{id}/commands", tag = "meters",
    summary = "Ask a meter to cut or restore its supply (or change tariff): published on MQTT, confirmed by its status",
    request_body = CommandBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry"), ("id" = String, Path, description = "Meter id")),
    responses(
        (status = 202, description = "Requested; `id` is the command id", body = inline(Envelope<CommandData>)),
        (status = 404, description = "The meter never reported", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn request_command(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(meter_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<CommandBody>,
) -> Result<CommandAnswer, ApiError> {
    let meter_id = path_id(&meter_id)?;
    let command_id = new_id();
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        command_id.clone(),
    )?;
    let request = command.body;
    if request
        .tariff_id
        .as_ref()
        .is_some_and(|tariff| tariff.trim().is_empty() || tariff.len() > 64)
    {
        return Err(ApiError::validation("tariff_id must be 1–64 characters"));
    }
    let stream = meter_stream_id(&context.tenant, &meter_id);
    let executed = state
        .meters
        .execute(
            &stream,
            MeterCommand::RequestRelay {
                command_id,
                action: request.command,
                tariff_id: request.tariff_id,
                at: Utc::now(),
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::ACCEPTED, executed, context))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandView {
    command_id: String,
    /// `relay_off`, `relay_on` or `set_tariff`.
    command: String,
    tariff_id: Option<String>,
    /// `requested`, `published`, `confirmed` or `timed_out`.
    status: String,
    requested_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<CommandRow> for CommandView {
    fn from(row: CommandRow) -> Self {
        Self {
            command_id: row.command_id,
            command: row.action,
            tariff_id: row.tariff_id,
            status: row.status,
            requested_at: row.requested_at,
            updated_at: row.updated_at,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/meters/{id}/commands", tag = "meters",
    summary = "A meter's relay commands and where they stand, newest first",
    params(("id" = String, Path, description = "Meter id")),
    responses((status = 200, description = "OK", body = inline(Envelope<Items<CommandView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_commands(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(meter_id): Path<String>,
) -> Result<Json<Envelope<Items<CommandView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::METERS]).await?;
    let mut tx = reader(&state, &principal).await?;
    let rows = meters::commands(&mut tx, principal.tenant.as_str(), &meter_id).await?;
    finish(tx).await?;
    Ok(ok(Items {
        items: rows.into_iter().map(CommandView::from).collect(),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeterView {
    meter_id: String,
    station: Option<String>,
    meter_type: Option<String>,
    /// `connected`, `disconnected` or `unknown`.
    status: String,
    last_reading_at: Option<DateTime<Utc>>,
    /// `{reading, consumption, voltage, current, power_factor}` as sent.
    #[schema(value_type = Object)]
    last_reading: serde_json::Value,
    readings: i64,
    /// Readings for an instant already recorded that carried other values.
    conflicts: i64,
    /// Since when nothing was heard from it (the acrel integration's
    /// `offline_after_secs` passed without a reading); `null` while it
    /// reports.
    silent_since: Option<DateTime<Utc>>,
}

impl From<MeterRow> for MeterView {
    fn from(row: MeterRow) -> Self {
        Self {
            meter_id: row.meter_id,
            station: row.station,
            meter_type: row.meter_type,
            status: row.status,
            last_reading_at: row.last_reading_at,
            last_reading: row.last_reading,
            readings: row.readings,
            conflicts: row.conflicts,
            silent_since: row.silent_since,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadingView {
    at: DateTime<Utc>,
    #[schema(value_type = Option<String>)]
    reading: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    consumption: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    voltage: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    current: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    power_factor: Option<Decimal>,
    /// `register_backwards` when the register went below the reading
    /// before it; `consumption_anomaly` when its interval consumption was
    /// beyond mean ± 3σ of the meter's last 30 days.
    flags: Vec<&'static str>,
}

impl From<ReadingRow> for ReadingView {
    fn from(row: ReadingRow) -> Self {
        Self {
            at: row.at,
            reading: row.reading,
            consumption: row.consumption,
            voltage: row.voltage,
            current: row.current,
            power_factor: row.power_factor,
            flags: [
                (row.backwards, "register_backwards"),
                (row.anomalous, "consumption_anomaly"),
            ]
            .into_iter()
            .filter_map(|(set, flag)| set.then_some(flag))
            .collect(),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MeterQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/meters", tag = "meters", summary = "The tenant's meters",
    params(MeterQuery),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<MeterView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_meters(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<MeterQuery>,
) -> Result<Json<Envelope<Page<MeterView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::METERS]).await?;
    let limit = page_size(query.limit)?;
    let mut tx = reader(&state, &principal).await?;
    let rows = meters::list_meters(
        &mut tx,
        principal.tenant.as_str(),
        query.cursor.as_deref(),
        limit + 1,
    )
    .await?;
    finish(tx).await?;
    let mut items: Vec<MeterView> = rows.into_iter().map(MeterView::from).collect();
    let next_cursor = next_page(&mut items, limit).map(|last| last.meter_id.clone());
    Ok(ok(Page { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/meters/{id}", tag = "meters", summary = "One meter, its status and last reading",
    params(("id" = String, Path, description = "Meter id")),
    responses((status = 200, description = "OK", body = inline(Envelope<MeterView>)), (status = 404, description = "Not found", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn get_meter(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(meter_id): Path<String>,
) -> Result<Json<Envelope<MeterView>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::METERS]).await?;
    let mut tx = reader(&state, &principal).await?;
    let row = meters::get_meter(&mut tx, principal.tenant.as_str(), &meter_id).await?;
    finish(tx).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no meter {meter_id}")))?;
    Ok(ok(MeterView::from(row)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// RFC 3339, inclusive.
    #[param(value_type = Option<String>)]
    from: Option<DateTime<FixedOffset>>,
    /// RFC 3339, exclusive.
    #[param(value_type = Option<String>)]
    to: Option<DateTime<FixedOffset>>,
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>)]
    cursor: Option<DateTime<FixedOffset>>,
}

#[utoipa::path(get, path = "/api/v1/meters/{id}/readings", tag = "meters", summary = "A meter's readings, oldest first",
    params(("id" = String, Path, description = "Meter id"), ReadingsQuery),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<ReadingView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn meter_readings(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(meter_id): Path<String>,
    ApiQuery(query): ApiQuery<ReadingsQuery>,
) -> Result<Json<Envelope<Page<ReadingView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::METERS]).await?;
    let limit = page_size(query.limit)?;
    let utc = |time: Option<DateTime<FixedOffset>>| time.map(|time| time.with_timezone(&Utc));
    let mut tx = reader(&state, &principal).await?;
    let rows = meters::readings(
        &mut tx,
        principal.tenant.as_str(),
        &meter_id,
        utc(query.from),
        utc(query.to),
        utc(query.cursor),
        limit + 1,
    )
    .await?;
    finish(tx).await?;
    let mut items: Vec<ReadingView> = rows.into_iter().map(ReadingView::from).collect();
    let next_cursor = next_page(&mut items, limit).map(|last| last.at.to_rfc3339());
    Ok(ok(Page { items, next_cursor }))
}
