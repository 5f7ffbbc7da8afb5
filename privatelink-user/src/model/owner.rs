//! Who owns what: every VPC, service, endpoint, security group and ACL belongs to one
//! account, which alone uses it. The API's operations and the validation of a state both
//! look objects up for an account here (and word their refusals each their own way).

use std::ops::Deref;

use super::{Endpoint, EndpointService, NetworkAcl, SecurityGroup, Vpc};

/// An object that belongs to an account.
pub trait Owned {
    fn id(&self) -> &str;
    fn owner(&self) -> &str;
}

macro_rules! owned {
    ($($t:ty),*) => {$(
        impl Owned for $t {
            fn id(&self) -> &str {
                &self.id
            }
            fn owner(&self) -> &str {
                &self.account
            }
        }
    )*};
}
owned!(Vpc, EndpointService, Endpoint, SecurityGroup, NetworkAcl);

/// An object looked up by id for an account.
pub enum Lookup<R> {
    /// It exists and is the account's.
    Mine(R),
    /// It exists and is another account's.
    Foreign(R),
    Missing,
}

/// Object `id` among `items` (`&T` or `&mut T`), as account `account` sees it.
pub fn lookup<R: Deref<Target: Owned>>(
    items: impl IntoIterator<Item = R>,
    account: &str,
    id: &str,
) -> Lookup<R> {
    match items.into_iter().find(|x| x.id() == id) {
        Some(x) if x.owner() == account => Lookup::Mine(x),
        Some(x) => Lookup::Foreign(x),
        None => Lookup::Missing,
    }
}
