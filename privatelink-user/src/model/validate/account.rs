use std::collections::BTreeMap;

use super::{FieldError, check_id};
use crate::model::State;

impl State {
    pub(super) fn validate_accounts(
        &self,
        ids: &mut BTreeMap<u32, String>,
    ) -> Result<(), FieldError> {
        for (i, a) in self.accounts.iter().enumerate() {
            check_id(format!("accounts[{i}].id"), &a.id, ids)?;
        }
        Ok(())
    }
}
