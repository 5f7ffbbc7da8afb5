//! What a cloud console lets each party do, as operations on the model: who may call
//! them, what they check, what they change. No I/O; the API is a thin adapter over these.
//! One file per kind, each request type beside its operations.

use crate::model::{Lookup, Owned, State, Vpc, lookup};

mod account;
mod connection;
mod endpoint;
mod security;
mod service;
mod vpc;

pub use account::*;
pub use connection::*;
pub use endpoint::*;
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

fn own_vpc<'a>(s: &'a State, account: &str, field: &str, id: &str) -> R<&'a Vpc> {
    mine(lookup(&s.vpcs, account, id), "VPC", field, id)
}

#[cfg(test)]
mod tests;
