//! Accounts (operator) and authentication: who holds a token.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, admin_only, unique};
use crate::model::{Account, State};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// An account as the API shows it (no token hash).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub name: String,
}

/// The response to account creation: the only time the token is shown.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CreatedAccount {
    pub id: String,
    pub name: String,
    pub token: String,
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who holds `token`: the admin or an account.
pub fn authenticate(s: &State, admin_token_sha256: &str, token: Option<&str>) -> R<Caller> {
    let Some(token) = token else {
        return Err(OpError::unauthorized("missing bearer token"));
    };
    let h = token_hash(token);
    if h == admin_token_sha256 {
        return Ok(Caller::Admin);
    }
    s.accounts
        .iter()
        .find(|a| a.token_sha256.as_deref() == Some(h.as_str()))
        .map(|a| Caller::Account(a.id.clone()))
        .ok_or_else(|| OpError::unauthorized("unknown token"))
}

pub fn create_account(
    s: &mut State,
    c: &Caller,
    req: NewAccount,
    token: String,
) -> R<CreatedAccount> {
    admin_only(c)?;
    unique(s.account(&req.id).is_some(), "account", &req.id)?;
    s.accounts.push(Account {
        id: req.id.clone(),
        name: req.name.clone(),
        token_sha256: Some(token_hash(&token)),
    });
    Ok(CreatedAccount {
        id: req.id,
        name: req.name,
        token,
    })
}

pub fn list_accounts(s: &State, c: &Caller) -> Vec<AccountView> {
    s.accounts
        .iter()
        .filter(|a| c.sees(&a.id))
        .map(|a| AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
        })
        .collect()
}
