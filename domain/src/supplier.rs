//! The `Supplier` aggregate: who a tenant buys from. Purchase orders name
//! a registered supplier.
//!
//! Identity: tenant + supplier id (stream id `<tenant>/<supplier>`).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::contact::ContactDetails;
use crate::{EVENT_VERSION_1, Id};

#[derive(Debug, Clone, PartialEq)]
pub enum SupplierCommand {
    Register {
        supplier_id: Id,
        details: ContactDetails,
    },
    Update {
        details: ContactDetails,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupplierEvent {
    SupplierRegistered {
        supplier_id: Id,
        #[serde(flatten)]
        details: ContactDetails,
    },
    SupplierUpdated {
        supplier_id: Id,
        #[serde(flatten)]
        details: ContactDetails,
    },
}

impl SupplierEvent {
    pub fn supplier_id(&self) -> &Id {
        match self {
            SupplierEvent::SupplierRegistered { supplier_id, .. }
            | SupplierEvent::SupplierUpdated { supplier_id, .. } => supplier_id,
        }
    }

    pub fn details(&self) -> &ContactDetails {
        match self {
            SupplierEvent::SupplierRegistered { details, .. }
            | SupplierEvent::SupplierUpdated { details, .. } => details,
        }
    }
}

impl DomainEvent for SupplierEvent {
    fn event_type(&self) -> String {
        match self {
            SupplierEvent::SupplierRegistered { .. } => "SupplierRegistered",
            SupplierEvent::SupplierUpdated { .. } => "SupplierUpdated",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupplierError {
    #[error("supplier {0} already exists with different details")]
    AlreadyRegistered(Id),
    #[error("supplier is not registered")]
    NotRegistered,
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Supplier {
    supplier_id: Option<Id>,
    details: Option<ContactDetails>,
}

impl Supplier {
    pub fn is_registered(&self) -> bool {
        self.supplier_id.is_some()
    }
}

impl Aggregate for Supplier {
    const TYPE: &'static str = "Supplier";
    type Command = SupplierCommand;
    type Event = SupplierEvent;
    type Error = SupplierError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let (supplier_id, details, registering) = match command {
            SupplierCommand::Register {
                supplier_id,
                details,
            } => (supplier_id, details, true),
            SupplierCommand::Update { details } => {
                let known = self
                    .supplier_id
                    .clone()
                    .ok_or(SupplierError::NotRegistered)?;
                (known, details, false)
            }
        };
        details
            .validate()
            .map_err(|(field, reason)| SupplierError::Invalid { field, reason })?;
        if self.details.as_ref() == Some(&details) {
            return Ok(());
        }
        let event = match (registering, self.details.is_some()) {
            (true, true) => return Err(SupplierError::AlreadyRegistered(supplier_id)),
            (true, false) => SupplierEvent::SupplierRegistered {
                supplier_id,
                details,
            },
            (false, _) => SupplierEvent::SupplierUpdated {
                supplier_id,
                details,
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SupplierEvent::SupplierRegistered {
                supplier_id,
                details,
            }
            | SupplierEvent::SupplierUpdated {
                supplier_id,
                details,
            } => {
                self.supplier_id = Some(supplier_id);
                self.details = Some(details);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn details(name: &str) -> ContactDetails {
        ContactDetails {
            name: name.into(),
            phone: None,
            email: Some("sales@example.uz".into()),
            tax_id: Some("301234567".into()),
            address: None,
        }
    }

    fn id() -> Id {
        Id::parse("SUP-1").expect("id")
    }

    fn registered() -> SupplierEvent {
        SupplierEvent::SupplierRegistered {
            supplier_id: id(),
            details: details("Toshkent Choy"),
        }
    }

    #[test]
    fn a_supplier_is_registered_updated_and_the_same_details_change_nothing() {
        TestFramework::<Supplier>::with(())
            .given_no_previous_events()
            .when(SupplierCommand::Register {
                supplier_id: id(),
                details: details("Toshkent Choy"),
            })
            .then_expect_events(vec![registered()]);
        TestFramework::<Supplier>::with(())
            .given(vec![registered()])
            .when(SupplierCommand::Update {
                details: details("Toshkent Choy LLC"),
            })
            .then_expect_events(vec![SupplierEvent::SupplierUpdated {
                supplier_id: id(),
                details: details("Toshkent Choy LLC"),
            }]);
        TestFramework::<Supplier>::with(())
            .given(vec![registered()])
            .when(SupplierCommand::Register {
                supplier_id: id(),
                details: details("Toshkent Choy"),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn unknown_suppliers_reused_ids_and_empty_names_are_refused() {
        TestFramework::<Supplier>::with(())
            .given_no_previous_events()
            .when(SupplierCommand::Update {
                details: details("X"),
            })
            .then_expect_error(SupplierError::NotRegistered);
        TestFramework::<Supplier>::with(())
            .given(vec![registered()])
            .when(SupplierCommand::Register {
                supplier_id: id(),
                details: details("Other"),
            })
            .then_expect_error(SupplierError::AlreadyRegistered(id()));
        TestFramework::<Supplier>::with(())
            .given_no_previous_events()
            .when(SupplierCommand::Register {
                supplier_id: id(),
                details: details(" "),
            })
            .then_expect_error(SupplierError::Invalid {
                field: "name",
                reason: "must be 1 to the allowed number of characters",
            });
    }
}
