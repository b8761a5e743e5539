//! The `Product` aggregate: a tenant's catalogue entry.
//!
//! Identity: tenant + product id (stream id `<tenant>/<product>`).

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id, Money};

/// The descriptive fields of a product; `PUT` replaces all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductDetails {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub unit: String,
    pub barcode: Option<String>,
    pub price: Option<Money>,
    pub reorder_level: Option<Money>,
    /// The product's ids in other systems, by system (`1c`, `regos`). A
    /// command only adds to them: one that names none keeps those known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_refs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProductCommand {
    Register {
        product_id: Id,
        details: ProductDetails,
    },
    Update {
        details: ProductDetails,
    },
    Discontinue {
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProductEvent {
    ProductRegistered {
        product_id: Id,
        #[serde(flatten)]
        details: ProductDetails,
    },
    ProductUpdated {
        product_id: Id,
        #[serde(flatten)]
        details: ProductDetails,
    },
    ProductDiscontinued {
        product_id: Id,
        reason: Option<String>,
    },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        match self {
            ProductEvent::ProductRegistered { .. } => "ProductRegistered",
            ProductEvent::ProductUpdated { .. } => "ProductUpdated",
            ProductEvent::ProductDiscontinued { .. } => "ProductDiscontinued",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("product {0} already exists with different details")]
    AlreadyRegistered(Id),
    #[error("product is not registered")]
    NotRegistered,
    #[error("product is discontinued")]
    Discontinued,
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    #[default]
    Active,
    Discontinued,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    product_id: Option<Id>,
    details: Option<ProductDetails>,
    status: ProductStatus,
}

impl Product {
    pub fn is_registered(&self) -> bool {
        self.product_id.is_some()
    }

    pub fn status(&self) -> ProductStatus {
        self.status
    }

    pub fn details(&self) -> Option<&ProductDetails> {
        self.details.as_ref()
    }
}

impl ProductDetails {
    /// Checks the free-text fields; numbers are checked by their types.
    pub fn validate(&self) -> Result<(), ProductError> {
        let check = |field: &'static str, value: &str, max: usize| {
            if value.trim().is_empty() {
                return Err(ProductError::Invalid {
                    field,
                    reason: "must not be empty",
                });
            }
            if value.chars().count() > max {
                return Err(ProductError::Invalid {
                    field,
                    reason: "is too long",
                });
            }
            Ok(())
        };
        check("sku", &self.sku, 64)?;
        check("name", &self.name, 256)?;
        check("category", &self.category, 128)?;
        check("unit", &self.unit, 32)?;
        if let Some(barcode) = &self.barcode {
            check("barcode", barcode, 64)?;
        }
        for (system, reference) in &self.external_refs {
            check("external_refs", system, 32)?;
            check("external_refs", reference, 128)?;
        }
        Ok(())
    }

    /// These details with the references `known` has and these lack.
    fn keeping_refs(mut self, known: Option<&ProductDetails>) -> Self {
        if let Some(known) = known {
            for (system, reference) in &known.external_refs {
                self.external_refs
                    .entry(system.clone())
                    .or_insert_with(|| reference.clone());
            }
        }
        self
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ProductCommand::Register {
                product_id,
                details,
            } => {
                details.validate()?;
                let details = details.keeping_refs(self.details.as_ref());
                if let Some(existing) = &self.details {
                    // A retried create with the same content is not an error.
                    if *existing == details {
                        return Ok(());
                    }
                    return Err(ProductError::AlreadyRegistered(product_id));
                }
                sink.write(
                    ProductEvent::ProductRegistered {
                        product_id,
                        details,
                    },
                    self,
                )
                .await;
            }
            ProductCommand::Update { details } => {
                details.validate()?;
                let details = details.keeping_refs(self.details.as_ref());
                let product_id = self.product_id.clone().ok_or(ProductError::NotRegistered)?;
                if self.status == ProductStatus::Discontinued {
                    return Err(ProductError::Discontinued);
                }
                if self.details.as_ref() == Some(&details) {
                    return Ok(());
                }
                sink.write(
                    ProductEvent::ProductUpdated {
                        product_id,
                        details,
                    },
                    self,
                )
                .await;
            }
            ProductCommand::Discontinue { reason } => {
                let product_id = self.product_id.clone().ok_or(ProductError::NotRegistered)?;
                if self.status == ProductStatus::Discontinued {
                    return Ok(());
                }
                sink.write(
                    ProductEvent::ProductDiscontinued { product_id, reason },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ProductEvent::ProductRegistered {
                product_id,
                details,
            } => {
                self.product_id = Some(product_id);
                self.details = Some(details);
                self.status = ProductStatus::Active;
            }
            ProductEvent::ProductUpdated { details, .. } => self.details = Some(details),
            ProductEvent::ProductDiscontinued { .. } => self.status = ProductStatus::Discontinued,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use rust_decimal::Decimal;

    use super::*;

    type ProductTest = TestFramework<Product>;

    fn id(value: &str) -> Id {
        Id::parse(value).expect("valid id")
    }

    fn details() -> ProductDetails {
        ProductDetails {
            sku: "MLK-1L".into(),
            name: "Milk 1 l".into(),
            category: "dairy".into(),
            unit: "pcs".into(),
            barcode: Some("4780000000011".into()),
            price: Some(Money::parse(Decimal::new(1250050, 2)).expect("price")),
            reorder_level: Some(Money::parse(Decimal::from(10)).expect("level")),
            external_refs: Default::default(),
        }
    }

    fn registered() -> ProductEvent {
        ProductEvent::ProductRegistered {
            product_id: id("P1"),
            details: details(),
        }
    }

    #[test]
    fn registering_a_new_product_records_it() {
        ProductTest::with(())
            .given_no_previous_events()
            .when(ProductCommand::Register {
                product_id: id("P1"),
                details: details(),
            })
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn registering_again_with_the_same_details_changes_nothing() {
        ProductTest::with(())
            .given(vec![registered()])
            .when(ProductCommand::Register {
                product_id: id("P1"),
                details: details(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn registering_again_with_other_details_is_refused() {
        let mut other = details();
        other.name = "Kefir".into();
        ProductTest::with(())
            .given(vec![registered()])
            .when(ProductCommand::Register {
                product_id: id("P1"),
                details: other,
            })
            .then_expect_error(ProductError::AlreadyRegistered(id("P1")));
    }

    #[test]
    fn registering_with_an_empty_name_is_refused() {
        let mut bad = details();
        bad.name = "  ".into();
        ProductTest::with(())
            .given_no_previous_events()
            .when(ProductCommand::Register {
                product_id: id("P1"),
                details: bad,
            })
            .then_expect_error(ProductError::Invalid {
                field: "name",
                reason: "must not be empty",
            });
    }

    #[test]
    fn updating_changes_the_details() {
        let mut changed = details();
        changed.price = None;
        ProductTest::with(())
            .given(vec![registered()])
            .when(ProductCommand::Update {
                details: changed.clone(),
            })
            .then_expect_events(vec![ProductEvent::ProductUpdated {
                product_id: id("P1"),
                details: changed,
            }]);
    }

    #[test]
    fn updating_with_identical_details_changes_nothing() {
        ProductTest::with(())
            .given(vec![registered()])
            .when(ProductCommand::Update { details: details() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn updating_an_unknown_product_is_refused() {
        ProductTest::with(())
            .given_no_previous_events()
            .when(ProductCommand::Update { details: details() })
            .then_expect_error(ProductError::NotRegistered);
    }

    #[test]
    fn updating_a_discontinued_product_is_refused() {
        ProductTest::with(())
            .given(vec![
                registered(),
                ProductEvent::ProductDiscontinued {
                    product_id: id("P1"),
                    reason: None,
                },
            ])
            .when(ProductCommand::Update { details: details() })
            .then_expect_error(ProductError::Discontinued);
    }

    #[test]
    fn discontinuing_records_it_once() {
        ProductTest::with(())
            .given(vec![registered()])
            .when(ProductCommand::Discontinue {
                reason: Some("recalled".into()),
            })
            .then_expect_events(vec![ProductEvent::ProductDiscontinued {
                product_id: id("P1"),
                reason: Some("recalled".into()),
            }]);
        ProductTest::with(())
            .given(vec![
                registered(),
                ProductEvent::ProductDiscontinued {
                    product_id: id("P1"),
                    reason: None,
                },
            ])
            .when(ProductCommand::Discontinue { reason: None })
            .then_expect_events(vec![]);
    }

    #[test]
    fn discontinuing_an_unknown_product_is_refused() {
        ProductTest::with(())
            .given_no_previous_events()
            .when(ProductCommand::Discontinue { reason: None })
            .then_expect_error(ProductError::NotRegistered);
    }
}
