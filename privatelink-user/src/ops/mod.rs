//! What a cloud console lets each party do, as operations on the model: who may call
//! them, what they check, what they change. No I/O; the API is a thin adapter over these.
//! One file per kind, each request type beside its operations.

use std::{net::Ipv4Addr, ops::Deref};

use serde::{Deserialize, Deserializer};

use crate::model::{Endpoint, Lookup, Owned, State, Vpc, lookup};

mod account;
mod connection;
mod endpoint;
mod notification;
mod security;
mod service;
mod vpc;

pub use account::*;
pub use connection::*;
pub use endpoint::*;
pub use notification::*;
pub use security::*;
pub use service::*;
pub use vpc::*;

/// Who is calling: the operator (admin token) or one account (its token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Account(String),
}

pub use crate::error::{ErrorKind, OpError};

type R<T> = Result<T, OpError>;

fn admin_only(c: &Caller) -> R<()> {
    match c {
        Caller::Admin => Ok(()),
        Caller::Account(_) => Err(OpError::forbidden(
            "only the operator (admin token) may do this",
        )),
    }
}

fn account_of(c: &Caller) -> R<&str> {
    match c {
        Caller::Account(a) => Ok(a),
        Caller::Admin => Err(OpError::forbidden(
            "this is done with an account's token, not the admin token",
        )),
    }
}

impl Caller {
    /// Whether the caller sees what account `account` owns: the operator sees everything,
    /// an account what is its own.
    pub fn sees(&self, account: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Account(a) => a == account,
        }
    }
}

/// The objects of `items` the caller sees.
fn visible<T: Owned + Clone>(items: &[T], c: &Caller) -> Vec<T> {
    items
        .iter()
        .filter(|x| c.sees(x.owner()))
        .cloned()
        .collect()
}

/// The caller's own object `what` `id` (the request's `field`): another account's is
/// forbidden, a missing one not found.
fn mine<T>(l: Lookup<T>, what: &str, field: &str, id: &str) -> R<T> {
    match l {
        Lookup::Mine(x) => Ok(x),
        Lookup::Foreign(_) => Err(OpError::forbidden(format!(
            "{what} {id} belongs to another account"
        ))),
        Lookup::Missing => Err(OpError::not_found(field, format!("no {what} {id}"))),
    }
}

/// The caller's own object `what` `id` among `items` (`&T` or `&mut T`), as `mine`
/// refuses another's or a missing one; the operator has none.
fn own<P: Deref<Target: Owned>>(
    items: impl IntoIterator<Item = P>,
    c: &Caller,
    what: &str,
    field: &str,
    id: &str,
) -> R<P> {
    mine(lookup(items, account_of(c)?, id), what, field, id)
}

/// Object `what` `id` among `items` as the caller may see it: the operator any, an account
/// its own (as `own`).
fn seen<'a, T: Owned>(items: &'a [T], c: &Caller, what: &str, field: &str, id: &str) -> R<&'a T> {
    match c {
        Caller::Admin => items
            .iter()
            .find(|x| x.id() == id)
            .ok_or_else(|| OpError::not_found(field, format!("no {what} {id}"))),
        Caller::Account(_) => own(items, c, what, field, id),
    }
}

/// The caller's account, creating something in VPC `vpc` (the request's `vpc`), which must
/// be its own.
fn creator(s: &State, c: &Caller, vpc: &str) -> R<String> {
    let owner = account_of(c)?;
    mine(lookup(&s.vpcs, owner, vpc), "VPC", "vpc", vpc)?;
    Ok(owner.to_string())
}

/// Refuses to create a `what` with the id `id` when `taken`.
fn unique(taken: bool, what: &str, id: &str) -> R<()> {
    if taken {
        return Err(OpError::conflict(
            "id",
            format!("{what} {id} already exists"),
        ));
    }
    Ok(())
}

/// A patch's field: `v`, if given, replaces `field`.
fn set<T>(field: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *field = v;
    }
}

/// A patch field that can be cleared (`Option<Option<T>>` with `#[serde(default,
/// deserialize_with = "clearable")]`): left out, `None` (unchanged); `null`, `Some(None)`
/// (cleared); a value, `Some(Some(v))`.
fn clearable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Refuses address `a` (the request's `field`) for a new object in VPC `vpc` when it is
/// the forwarder host's own: the VPC's resolver or probe address, or another VPC's (the
/// daemon holds them on the VPCs' interfaces of one namespace, so each is local to all;
/// another VPC's is not named: it is another tenant's).
fn not_vpc_own(s: &State, vpc: &Vpc, field: &str, a: Ipv4Addr) -> R<()> {
    let role = if vpc.resolver == Some(a) {
        format!("VPC {}'s resolver", vpc.id)
    } else if vpc.probe_address == Some(a) {
        format!("VPC {}'s probe address", vpc.id)
    } else if s.host_addresses().contains(&a) {
        "an address of the forwarder host (another VPC's resolver or probe address)".into()
    } else {
        return Ok(());
    };
    Err(OpError::invalid(
        field,
        format!("{a} is {role}; choose another address"),
    ))
}

/// The ids of the endpoints `uses` picks (those that hold on to what is to be deleted).
fn endpoint_ids(s: &State, uses: impl Fn(&Endpoint) -> bool) -> Vec<&str> {
    s.endpoints
        .iter()
        .filter(|e| uses(e))
        .map(|e| e.id.as_str())
        .collect()
}

#[cfg(test)]
mod tests;
