use super::{FieldError, Ids, check_id};
use crate::model::State;

impl State {
    pub(super) fn validate_accounts(&self, ids: &mut Ids) -> Result<(), FieldError> {
        for (i, a) in self.accounts.iter().enumerate() {
            check_id(format!("accounts[{i}].id"), &a.id, ids)?;
        }
        Ok(())
    }
}
