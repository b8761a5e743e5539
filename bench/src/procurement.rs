//! Supplier performance at the scale: 100 suppliers × 10,000
//! purchase orders (3 lines each, one or two receipts, some closed), then
//! - the `procurement` projection's catch-up (a rebuild from zero) in
//!   events/s, beside the same runner folding nothing (the cost of reading
//!   the feed and checkpointing);
//! - `GET /api/integrations/supplier-performance` over the whole year
//!   through the real router: p50/p99, beside a single-row read
//!   (`GET /api/v1/suppliers/{id}`) in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use karvon_adapters::StorageError;
use karvon_adapters::db::Conn;
use karvon_adapters::feed::FeedEvent;
use karvon_adapters::read_models::procurement::ProcurementProjection;
use karvon_adapters::runner::{self, Projection};
use karvon_adapters::store::CommandExecutor;
use karvon_app::{Config, Role};
use karvon_domain::contact::ContactDetails;
use karvon_domain::purchase_order::{
    OrderDetails, OrderLine, PurchaseOrder, PurchaseOrderCommand, ReceiptLine,
};
use karvon_domain::supplier::{Supplier, SupplierCommand};
use karvon_domain::{Id, Money, Quantity};
use karvon_tests::{TestDb, spawn_app_with, system_metadata, test_config, wait_caught_up};
use rust_decimal::Decimal;

use crate::Latencies;

const SUPPLIERS: usize = 100;

pub async fn run(db: &TestDb, orders: usize) -> anyhow::Result<()> {
    let store = db.db().await?;
    store.migrate().await?;
    let started = Instant::now();
    load(&store, orders).await?;
    let events = karvon_tests::event_count(&store).await?;
    let load_rate = events as f64 / started.elapsed().as_secs_f64();
    karvon_tests::wait_settled(&store).await;

    let folded = runner::rebuild(&store, &ProcurementProjection, 1000)
        .await
        .context("rebuild procurement")?;
    let nothing = runner::rebuild(&store, &FoldNothing, 1000)
        .await
        .context("rebuild nothing")?;
    let folded_rate = folded.events as f64 / folded.elapsed.as_secs_f64();
    let nothing_rate = nothing.events as f64 / nothing.elapsed.as_secs_f64();

    let mut config: Config = test_config(db);
    config.log = "warn".into();
    let app = spawn_app_with(config, Role::All).await?;
    wait_caught_up(&store, &["procurement"], Duration::from_secs(600)).await?;
    let today = Utc::now().date_naive();
    let year = today - chrono::Duration::days(366);
    let performance = app.url(&format!(
        "/api/integrations/supplier-performance?date_from={year}&date_to={today}"
    ));
    let (status, body) = app.send(app.client.get(&performance)).await;
    anyhow::ensure!(status.is_success(), "supplier-performance: {status} {body}");
    let suppliers_answered = body["data"]["items"].as_array().map_or(0, Vec::len);
    let one_supplier = app.url("/api/v1/suppliers/S7");
    let queries = measure(&app, &performance, 200).await?;
    let single = measure(&app, &one_supplier, 200).await?;
    app.stop().await?;

    println!(
        "== Supplier performance: {SUPPLIERS} suppliers × {orders} POs ({events} events, written at {load_rate:.0} events/s through the executor) =="
    );
    println!(
        "procurement catch-up (batch 1000):   {folded_rate:>9.0} events/s  ({:.1}s)",
        folded.elapsed.as_secs_f64()
    );
    println!("baseline runner folding nothing:     {nothing_rate:>9.0} events/s");
    println!(
        "ratio:                               {:>9.2} of the feed rate",
        folded_rate / nothing_rate
    );
    println!(
        "supplier-performance, whole year ({suppliers_answered} suppliers): p50 {:.1} ms  p99 {:.1} ms",
        queries.percentile(0.5),
        queries.percentile(0.99)
    );
    println!(
        "baseline GET one supplier:                         p50 {:.1} ms  p99 {:.1} ms  (p99 ratio {:.1}x)\n",
        single.percentile(0.5),
        single.percentile(0.99),
        queries.percentile(0.99) / single.percentile(0.99)
    );
    Ok(())
}

/// Sequential GETs; every answer must be a success.
async fn measure(
    app: &karvon_tests::TestApp,
    url: &str,
    count: usize,
) -> anyhow::Result<Latencies> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = app.client.get(url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(Latencies(latencies))
}

fn id(value: String) -> anyhow::Result<Id> {
    Id::parse(value).map_err(|error| anyhow::anyhow!("id: {error}"))
}

/// Suppliers, then POs from 8 tasks: each PO has 3 lines; most get one
/// receipt (some late, some short, some with rejections or another price),
/// every third a second one; every fifth is closed.
async fn load(store: &karvon_tests::Db, orders: usize) -> anyhow::Result<()> {
    let suppliers = CommandExecutor::<Supplier>::new(store.clone());
    let metadata = system_metadata();
    for index in 0..SUPPLIERS {
        let supplier_id = id(format!("S{index}"))?;
        let details = ContactDetails {
            name: format!("Supplier {index}"),
            phone: None,
            email: None,
            tax_id: None,
            address: None,
        };
        let stream = format!("default/{supplier_id}");
        let command = SupplierCommand::Register {
            supplier_id,
            details,
        };
        suppliers.execute(&stream, command, &metadata).await?;
    }
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let executor = CommandExecutor::<PurchaseOrder>::new(store);
            let metadata = system_metadata();
            for index in (task..orders).step_by(8) {
                for command in purchase_order(index)? {
                    let stream = format!("default/PO{index}");
                    executor.execute(&stream, command, &metadata).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn purchase_order(index: usize) -> anyhow::Result<Vec<PurchaseOrderCommand>> {
    let number = |value: i64| Decimal::from(value);
    let qty = |value: i64| Quantity::parse(number(value)).map_err(anyhow::Error::msg);
    let money = |value: i64| Money::parse(number(value)).map_err(anyhow::Error::msg);
    let ordered_at = Utc::now() - chrono::Duration::hours((index % 8_700) as i64);
    let expected_at = ordered_at + chrono::Duration::days(3);
    let lines = (0..3)
        .map(|line| {
            Ok(OrderLine {
                product_id: id(format!("P{}", (index + line) % 500))?,
                qty: qty(10)?,
                unit_price: money(100 + line as i64)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let place = PurchaseOrderCommand::Place {
        po_id: id(format!("PO{index}"))?,
        details: OrderDetails {
            supplier_id: id(format!("S{}", index % SUPPLIERS))?,
            ordered_at,
            expected_at,
            lines: lines.clone(),
        },
    };
    let mut commands = vec![place];
    let receipts = if index % 3 == 0 { 2 } else { 1 };
    for receipt in 0..receipts {
        let received = if receipts == 2 {
            5
        } else {
            10 - (index % 2) as i64
        };
        let lines = lines
            .iter()
            .map(|line| {
                Ok(ReceiptLine {
                    product_id: line.product_id.clone(),
                    qty_received: qty(received)?,
                    qty_rejected: money(i64::from(index % 7 == 0))?,
                    unit_price: (index % 5 == 1).then(|| money(105)).transpose()?,
                    batch: None,
                    expiry_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let late = chrono::Duration::hours(24 * (2 + (index % 3) as i64) + receipt * 12);
        commands.push(PurchaseOrderCommand::Receive {
            receipt_id: format!("R{index}-{receipt}"),
            warehouse_id: id(format!("W{}", index % 4))?,
            received_at: ordered_at + late,
            lines,
            allow_over_delivery: false,
        });
    }
    if index % 5 == 0 {
        commands.push(PurchaseOrderCommand::Close { reason: None });
    }
    Ok(commands)
}

/// The baseline: a projection that reads the feed and checkpoints but
/// folds nothing.
struct FoldNothing;

#[async_trait::async_trait]
impl Projection for FoldNothing {
    fn name(&self) -> &'static str {
        "bench_nothing"
    }

    /// What the procurement read model reads.
    fn aggregate_types(&self) -> karvon_adapters::feed::Wanted {
        Some(&["Supplier", "PurchaseOrder"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    async fn create_tables(&self, _conn: &mut Conn<'_>, _schema: &str) -> Result<(), StorageError> {
        Ok(())
    }

    async fn apply(
        &self,
        _conn: &mut Conn<'_>,
        _schema: &str,
        _events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        Ok(())
    }
}
