//! Product recommendations from the sales read model: top sellers of the
//! current local period, or the products most often bought together with
//! one.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::NaiveDate;
use karvon_adapters::read_models::{catalog, sales as sales_model};
use karvon_projections::names;
use karvon_projections::sales;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::ReadAccess;
use super::command::path_id;
use super::envelope::{Envelope, ok};
use super::error::{ApiError, QueryErrors};
use super::extract::ApiQuery;
use super::query::{finish, reader, wait_for_position};

/// The recommendation routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(product_recommendations))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecommendationQuery {
    /// At most this many items (default 10, at most 100).
    limit: Option<i64>,
    /// `daily`, `weekly`, `monthly` (default), `yearly` — the current local
    /// period — or `all`.
    period: Option<String>,
    /// With it: products bought together with this one.
    product_id: Option<String>,
}

/// A best seller, or a product bought together with the given one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub product_id: String,
    /// From the catalogue; null for products it does not know.
    pub name: Option<String>,
    /// Top sellers: quantity sold in the period.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qty_sold: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revenue: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sales_count: Option<i64>,
    /// Bought together: sales containing both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub together: Option<i64>,
    /// together / all sales in the period (4 decimals).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support: Option<Decimal>,
    /// together / sales containing `product_id` (4 decimals).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Decimal>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendations {
    pub period: String,
    pub date_from: NaiveDate,
    pub date_to: NaiveDate,
    pub product_id: Option<String>,
    pub items: Vec<Recommendation>,
}

#[utoipa::path(get, path = "/api/integrations/product-recommendations", tag = "sales",
    summary = "Top sellers of the current period, or products bought together with one",
    params(RecommendationQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<Recommendations>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn product_recommendations(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<RecommendationQuery>,
) -> Result<Json<Envelope<Recommendations>>, ApiError> {
    let period = query.period.unwrap_or_else(|| "monthly".to_string());
    let today = principal.today();
    let date_from = match period.as_str() {
        "all" => NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or(today),
        period if sales::PERIODS.contains(&period) => sales::period_start(period, today),
        _ => {
            return Err(ApiError::validation(
                "period must be daily, weekly, monthly, yearly or all",
            ));
        }
    };
    let limit = match query.limit {
        None => 10,
        Some(limit) if (1..=100).contains(&limit) => limit as usize,
        Some(_) => return Err(ApiError::validation("limit must be between 1 and 100")),
    };
    let product = query.product_id.as_deref().map(path_id).transpose()?;
    wait_for_position(&state, &principal, &headers, &[names::SALES]).await?;
    let tenant = principal.tenant.as_str();
    let mut tx = reader(&state, &principal).await?;
    let rows = sales_model::sale_products(&mut tx, tenant, date_from, today).await?;
    let tuples = rows.iter().map(|row| {
        (
            row.sale_id.as_str(),
            row.product_id.as_str(),
            row.qty,
            row.revenue,
        )
    });
    let mut items: Vec<Recommendation> = match &product {
        None => sales::top_sellers(tuples, limit)
            .into_iter()
            .map(|row| Recommendation {
                product_id: row.product_id,
                name: None,
                qty_sold: Some(row.qty_sold),
                revenue: Some(row.revenue),
                sales_count: Some(row.sales_count),
                together: None,
                support: None,
                confidence: None,
            })
            .collect(),
        Some(product) => sales::bought_together(tuples, product.as_str(), limit)
            .into_iter()
            .map(|row| Recommendation {
                product_id: row.product_id,
                name: None,
                qty_sold: None,
                revenue: None,
                sales_count: None,
                together: Some(row.together),
                support: Some(row.support),
                confidence: Some(row.confidence),
            })
            .collect(),
    };
    let ids: Vec<String> = items.iter().map(|item| item.product_id.clone()).collect();
    let mut names = catalog::product_names(&mut tx, tenant, &ids).await?;
    for item in &mut items {
        item.name = names.remove(&item.product_id);
    }
    finish(tx).await?;
    Ok(ok(Recommendations {
        period,
        date_from,
        date_to: today,
        product_id: product.map(|product| product.to_string()),
        items,
    }))
}
