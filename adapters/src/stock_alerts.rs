//! Stock alerts: `low_stock`, `negative_stock`, `expired` and
//! `near_expiry`, one alert per (kind, product, warehouse), opened while
//! the condition holds and cleared when it goes away.
//!
//! A condition is a state, not an event, so it is judged on the state:
//! [`StockAlerts::check`] loads the stock item (and the product, for its
//! reorder level) from the event store and, per condition, sends the
//! alert `Ensure` (holds) or `Clear` (does not). Both are no-ops when the
//! alert already agrees, so a check may run any number of times: after
//! every stock movement (the alert rules ask for one), after a product's
//! reorder level changes (every warehouse holding it), and from the
//! [`StockAlerts::sweep`] that notices batches expiring as days pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use karvon_domain::alert::{Alert, AlertCommand, AlertDetails, Severity};
use karvon_domain::ids::{alert_stream_id, product_stream_id, stock_stream_id};
use karvon_domain::product::Product;
use karvon_domain::stock::StockItem;
use karvon_domain::{Id, TenantId};
use karvon_projections::EventMetadata;

use crate::StorageError;
use crate::alert_rules::alert_id;
use crate::db::Db;
use crate::reactions::{ReactionError, outcome};
use crate::read_models::{alerts, stock};
use crate::records::tenant_reader;
use crate::store::CommandExecutor;

/// Days ahead a batch counts as expiring soon (as `inventory-levels`'
/// `near_expiry_days` default).
pub const NEAR_EXPIRY_DAYS: u64 = 30;

/// Rows read per page when listing candidates.
const PAGE: i64 = 500;

/// Judges stock conditions and keeps their alerts in step.
#[derive(Clone)]
pub struct StockAlerts {
    db: Db,
    stock: Arc<CommandExecutor<StockItem>>,
    products: Arc<CommandExecutor<Product>>,
    alerts: Arc<CommandExecutor<Alert>>,
}

impl StockAlerts {
    pub fn new(
        db: &Db,
        stock: Arc<CommandExecutor<StockItem>>,
        alerts: Arc<CommandExecutor<Alert>>,
    ) -> Self {
        Self {
            db: db.clone(),
            stock,
            products: Arc::new(CommandExecutor::new(db.clone())),
            alerts,
        }
    }

    /// Judges the product's stock at `warehouse` (every warehouse the
    /// inventory read model lists for it when `None`) and opens or clears
    /// its four alerts. `metadata` is the cause's; it carries no key, the
    /// commands being idempotent by state.
    pub async fn check(
        &self,
        tenant: &TenantId,
        product: &Id,
        warehouse: Option<&Id>,
        metadata: &EventMetadata,
    ) -> Result<(), ReactionError> {
        let warehouses = match warehouse {
            Some(warehouse) => vec![warehouse.clone()],
            None => self
                .warehouses_of(tenant, product)
                .await
                .map_err(ReactionError::Failed)?,
        };
        if warehouses.is_empty() {
            return Ok(());
        }
        // The tenant's today only matters for dated batches: looked up once,
        // and only when a stock item holds one.
        let mut tenant_today = None;
        let reorder_level = self
            .products
            .load(&product_stream_id(tenant, product))
            .await
            .map_err(ReactionError::Failed)?
            .details()
            .and_then(|details| details.reorder_level)
            .map(|level| level.value());
        let metadata = EventMetadata {
            idempotency_key: None,
            request_hash: None,
            ..metadata.clone()
        };
        for warehouse in warehouses {
            let item = self
                .stock
                .load(&stock_stream_id(tenant, &warehouse, product))
                .await
                .map_err(ReactionError::Failed)?;
            let subject = format!("product:{product}@{warehouse}");
            let dated = item
                .lots()
                .as_slice()
                .iter()
                .any(|lot| lot.expiry_date.is_some());
            let today = match (dated, tenant_today) {
                (false, _) => Utc::now().date_naive(),
                (true, Some(today)) => today,
                (true, None) => {
                    let today = self.today(tenant).await.map_err(ReactionError::Failed)?;
                    tenant_today = Some(today);
                    today
                }
            };
            let conditions = item
                .lots()
                .conditions(reorder_level, today, NEAR_EXPIRY_DAYS);
            for (kind, holds) in conditions {
                let alert_id = alert_id(kind, &subject).map_err(ReactionError::Failed)?;
                let command = match holds {
                    Some(message) => AlertCommand::Ensure {
                        alert_id: alert_id.clone(),
                        details: AlertDetails {
                            kind: kind.to_string(),
                            severity: severity(kind),
                            subject: subject.clone(),
                            message,
                        },
                        at: metadata.occurred_at,
                    },
                    None => AlertCommand::Clear {
                        reason: format!("{kind} no longer holds"),
                        at: metadata.occurred_at,
                    },
                };
                let stream = alert_stream_id(tenant, &alert_id);
                outcome(self.alerts.execute(&stream, command, &metadata).await)?;
            }
        }
        Ok(())
    }

    /// Checks every stock item that holds a batch expired or expiring soon
    /// by its tenant's today, and every one with an open `expired` or
    /// `near_expiry` alert, so alerts follow the calendar with no stock
    /// movement. Returns the items checked.
    pub async fn sweep(&self) -> Result<usize, StorageError> {
        let mut checked = 0;
        for tenant in crate::auth_store::tenant_ids(&self.db).await? {
            let Ok(tenant) = TenantId::parse(tenant) else {
                continue;
            };
            let items = self.candidates(&tenant).await?;
            let metadata = sweep_metadata(&tenant, Utc::now());
            for (warehouse, product) in items {
                match self
                    .check(&tenant, &product, Some(&warehouse), &metadata)
                    .await
                {
                    Ok(()) => checked += 1,
                    Err(ReactionError::Contended) => {}
                    Err(ReactionError::Failed(error)) => return Err(error),
                }
            }
        }
        Ok(checked)
    }

    /// (warehouse, product) pairs the sweep looks at.
    async fn candidates(&self, tenant: &TenantId) -> Result<BTreeSet<(Id, Id)>, StorageError> {
        let today = self.today(tenant).await?;
        let mut found = BTreeSet::new();
        let mut reader = tenant_reader(&self.db, tenant.as_str()).await?;
        for (expired, near_expiry) in [(true, false), (false, true)] {
            let mut filter = stock::InventoryFilter {
                expired,
                near_expiry,
                near_expiry_days: NEAR_EXPIRY_DAYS as i64,
                today,
                limit: PAGE,
                ..stock::InventoryFilter::default()
            };
            loop {
                let page = stock::inventory_levels(&mut reader, tenant.as_str(), &filter).await?;
                for level in &page {
                    if let (Ok(warehouse), Ok(product)) = (
                        Id::parse(level.warehouse_id.as_str()),
                        Id::parse(level.product_id.as_str()),
                    ) {
                        found.insert((warehouse, product));
                    }
                }
                match page.last() {
                    Some(last) if page.len() as i64 == PAGE => {
                        filter.after = Some((last.warehouse_id.clone(), last.product_id.clone()));
                    }
                    _ => break,
                }
            }
        }
        for kind in ["expired", "near_expiry"] {
            for status in ["active", "acknowledged"] {
                let open = alerts::list(
                    &mut reader,
                    tenant.as_str(),
                    Some(status),
                    Some(kind),
                    10_000,
                )
                .await?;
                found.extend(open.iter().filter_map(|row| stock_subject(&row.subject)));
            }
        }
        reader.finish().await?;
        Ok(found)
    }

    /// Warehouses the inventory read model lists for the product.
    async fn warehouses_of(
        &self,
        tenant: &TenantId,
        product: &Id,
    ) -> Result<Vec<Id>, StorageError> {
        let mut reader = tenant_reader(&self.db, tenant.as_str()).await?;
        let mut filter = stock::InventoryFilter {
            product_id: Some(product.to_string()),
            near_expiry_days: NEAR_EXPIRY_DAYS as i64,
            today: Utc::now().date_naive(),
            limit: PAGE,
            ..stock::InventoryFilter::default()
        };
        let mut warehouses = Vec::new();
        loop {
            let page = stock::inventory_levels(&mut reader, tenant.as_str(), &filter).await?;
            warehouses.extend(
                page.iter()
                    .filter_map(|level| Id::parse(level.warehouse_id.as_str()).ok()),
            );
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => {
                    filter.after = Some((last.warehouse_id.clone(), last.product_id.clone()));
                }
                _ => break,
            }
        }
        reader.finish().await?;
        Ok(warehouses)
    }

    /// The tenant's local date now (UTC for an unknown zone).
    async fn today(&self, tenant: &TenantId) -> Result<NaiveDate, StorageError> {
        let zone = crate::auth_store::tenant(&self.db, tenant.as_str())
            .await?
            .and_then(|tenant| tenant.time_zone.parse::<chrono_tz::Tz>().ok())
            .unwrap_or(chrono_tz::UTC);
        Ok(Utc::now().with_timezone(&zone).date_naive())
    }
}

fn severity(kind: &str) -> Severity {
    match kind {
        "negative_stock" | "expired" => Severity::Critical,
        _ => Severity::Warning,
    }
}

/// `product:<p>@<w>` → (warehouse, product).
fn stock_subject(subject: &str) -> Option<(Id, Id)> {
    let (product, warehouse) = subject.strip_prefix("product:")?.rsplit_once('@')?;
    Some((Id::parse(warehouse).ok()?, Id::parse(product).ok()?))
}

fn sweep_metadata(tenant: &TenantId, now: DateTime<Utc>) -> EventMetadata {
    EventMetadata {
        tenant_id: tenant.to_string(),
        occurred_at: now,
        source: karvon_projections::Source::System.as_str().to_string(),
        actor: "stock_sweep".to_string(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
        causation_id: None,
        idempotency_key: None,
        request_hash: None,
        response_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stock_subject_names_its_warehouse_and_product() {
        let (warehouse, product) = stock_subject("product:P-1@W-1").expect("subject");
        assert_eq!((warehouse.as_str(), product.as_str()), ("W-1", "P-1"));
        assert_eq!(stock_subject("meter:M-1"), None);
    }
}
