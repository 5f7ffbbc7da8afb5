//! Connections (provider): the state of each endpoint of a provider's service.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, service::own_service};
use crate::model::{Connection, Endpoint, State};

/// What a provider does to a connection (an endpoint of its service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionAction {
    Accept,
    Reject,
    Disable,
    Enable,
}

/// A connection as the provider sees it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub endpoint: String,
    pub account: String,
    pub service: String,
    #[schema(value_type = String)]
    pub state: Connection,
    #[schema(value_type = Vec<String>)]
    pub enis: Vec<Ipv4Addr>,
}

impl From<&Endpoint> for ConnectionView {
    fn from(e: &Endpoint) -> Self {
        Self {
            endpoint: e.id.clone(),
            account: e.account.clone(),
            service: e.service.clone(),
            state: e.connection,
            enis: e.zones.iter().map(|z| z.eni).collect(),
        }
    }
}

pub fn list_connections(s: &mut State, c: &Caller, service: &str) -> R<Vec<ConnectionView>> {
    own_service(s, c, service)?;
    Ok(s.endpoints
        .iter()
        .filter(|e| e.service == service)
        .map(ConnectionView::from)
        .collect())
}

/// Pending → Connected (accept) / Rejected (reject); Connected → Disconnected (disable);
/// Disconnected → Connected (enable). Anything else is a conflict.
pub fn connection_action(
    s: &mut State,
    c: &Caller,
    service: &str,
    endpoint: &str,
    a: ConnectionAction,
) -> R<ConnectionView> {
    own_service(s, c, service)?;
    let ep = s
        .endpoints
        .iter_mut()
        .find(|e| e.id == endpoint && e.service == service)
        .ok_or_else(|| {
            OpError::not_found(
                "endpoint",
                format!("no connection from endpoint {endpoint} to {service}"),
            )
        })?;
    use Connection::*;
    let next = match (ep.connection, a) {
        (Pending, ConnectionAction::Accept) | (Rejected, ConnectionAction::Accept) => Connected,
        (Pending, ConnectionAction::Reject) | (Connected, ConnectionAction::Reject) => Rejected,
        (Connected, ConnectionAction::Disable) => Disconnected,
        (Disconnected, ConnectionAction::Enable) => Connected,
        (state, a) => {
            return Err(OpError::conflict(
                "state",
                format!("cannot {a:?} a connection that is {state:?}").to_lowercase(),
            ));
        }
    };
    ep.connection = next;
    Ok(ConnectionView::from(&*ep))
}
