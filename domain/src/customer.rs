//! The `Customer` aggregate: a tenant's customer, registered and updated
//! from HTTP (and later from 1C clients).
//!
//! Identity: tenant + customer id (stream id `<tenant>/<customer>`).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::contact::ContactDetails;
use crate::{EVENT_VERSION_1, Id};

/// What is known about a customer; `PUT` replaces all of it.
pub type CustomerDetails = ContactDetails;

fn validate(details: &CustomerDetails) -> Result<(), CustomerError> {
    details
        .validate()
        .map_err(|(field, reason)| CustomerError::Invalid { field, reason })
}

#[derive(Debug, Clone, PartialEq)]
pub enum CustomerCommand {
    Register {
        customer_id: Id,
        details: CustomerDetails,
    },
    Update {
        details: CustomerDetails,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerEvent {
    CustomerRegistered {
        customer_id: Id,
        #[serde(flatten)]
        details: CustomerDetails,
    },
    CustomerUpdated {
        customer_id: Id,
        #[serde(flatten)]
        details: CustomerDetails,
    },
}

impl CustomerEvent {
    pub fn customer_id(&self) -> &Id {
        match self {
            CustomerEvent::CustomerRegistered { customer_id, .. }
            | CustomerEvent::CustomerUpdated { customer_id, .. } => customer_id,
        }
    }

    pub fn details(&self) -> &CustomerDetails {
        match self {
            CustomerEvent::CustomerRegistered { details, .. }
            | CustomerEvent::CustomerUpdated { details, .. } => details,
        }
    }
}

impl DomainEvent for CustomerEvent {
    fn event_type(&self) -> String {
        match self {
            CustomerEvent::CustomerRegistered { .. } => "CustomerRegistered",
            CustomerEvent::CustomerUpdated { .. } => "CustomerUpdated",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("customer {0} already exists with different details")]
    AlreadyRegistered(Id),
    #[error("customer is not registered")]
    NotRegistered,
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    customer_id: Option<Id>,
    details: Option<CustomerDetails>,
}

impl Customer {
    /// `None` until registered.
    pub fn details(&self) -> Option<&CustomerDetails> {
        self.details.as_ref()
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = "Customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            CustomerCommand::Register {
                customer_id,
                details,
            } => {
                validate(&details)?;
                if let Some(existing) = &self.details {
                    if *existing == details {
                        return Ok(());
                    }
                    return Err(CustomerError::AlreadyRegistered(customer_id));
                }
                sink.write(
                    CustomerEvent::CustomerRegistered {
                        customer_id,
                        details,
                    },
                    self,
                )
                .await;
            }
            CustomerCommand::Update { details } => {
                validate(&details)?;
                let customer_id = self
                    .customer_id
                    .clone()
                    .ok_or(CustomerError::NotRegistered)?;
                if self.details.as_ref() == Some(&details) {
                    return Ok(());
                }
                sink.write(
                    CustomerEvent::CustomerUpdated {
                        customer_id,
                        details,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CustomerEvent::CustomerRegistered {
                customer_id,
                details,
            }
            | CustomerEvent::CustomerUpdated {
                customer_id,
                details,
            } => {
                self.customer_id = Some(customer_id);
                self.details = Some(details);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn details(name: &str) -> CustomerDetails {
        CustomerDetails {
            name: name.into(),
            phone: Some("+998901234567".into()),
            email: None,
            tax_id: None,
            address: None,
        }
    }

    fn id() -> Id {
        Id::parse("C1").expect("id")
    }

    #[test]
    fn a_customer_is_registered_then_updated() {
        TestFramework::<Customer>::with(())
            .given_no_previous_events()
            .when(CustomerCommand::Register {
                customer_id: id(),
                details: details("Aziz"),
            })
            .then_expect_events(vec![CustomerEvent::CustomerRegistered {
                customer_id: id(),
                details: details("Aziz"),
            }]);
        TestFramework::<Customer>::with(())
            .given(vec![CustomerEvent::CustomerRegistered {
                customer_id: id(),
                details: details("Aziz"),
            }])
            .when(CustomerCommand::Update {
                details: details("Aziz Karimov"),
            })
            .then_expect_events(vec![CustomerEvent::CustomerUpdated {
                customer_id: id(),
                details: details("Aziz Karimov"),
            }]);
    }

    #[test]
    fn updating_an_unknown_customer_or_reusing_an_id_is_refused() {
        TestFramework::<Customer>::with(())
            .given_no_previous_events()
            .when(CustomerCommand::Update {
                details: details("X"),
            })
            .then_expect_error(CustomerError::NotRegistered);
        TestFramework::<Customer>::with(())
            .given(vec![CustomerEvent::CustomerRegistered {
                customer_id: id(),
                details: details("Aziz"),
            }])
            .when(CustomerCommand::Register {
                customer_id: id(),
                details: details("Other"),
            })
            .then_expect_error(CustomerError::AlreadyRegistered(id()));
    }
}
