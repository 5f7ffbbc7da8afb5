use std::collections::BTreeSet;

use super::{FieldError, Ids, check_cidr, check_id, err, overlap};
use crate::model::State;

const MAX_IFNAME: usize = 15;

impl State {
    pub(super) fn validate_vpcs(&self, ids: &mut Ids) -> Result<(), FieldError> {
        let mut ifaces = BTreeSet::new();
        for (i, v) in self.vpcs.iter().enumerate() {
            let f = format!("vpcs[{i}]");
            check_id(format!("{f}.id"), &v.id, ids)?;
            if !self.account_exists(&v.account) {
                return err(
                    format!("{f}.account"),
                    format!("unknown account {:?}", v.account),
                );
            }
            check_cidr(&f, &v.cidr)?;
            if v.interface.is_empty() || v.interface.len() > MAX_IFNAME {
                return err(
                    format!("{f}.interface"),
                    format!("{:?} is not an interface name", v.interface),
                );
            }
            if !ifaces.insert(v.interface.clone()) {
                return err(
                    format!("{f}.interface"),
                    format!("{} is already attached to another VPC", v.interface),
                );
            }
            for (j, s) in v.vswitches.iter().enumerate() {
                let g = format!("{f}.vswitches[{j}]");
                check_id(format!("{g}.id"), &s.id, ids)?;
                if !v.cidr.contains(&s.cidr) {
                    return err(
                        format!("{g}.cidr"),
                        format!("{} is not inside the VPC's {}", s.cidr, v.cidr),
                    );
                }
                if s.zone.is_empty() {
                    return err(format!("{g}.zone"), "a vSwitch needs a zone");
                }
                for (k, o) in v.vswitches.iter().enumerate().take(j) {
                    if overlap(&o.cidr, &s.cidr) {
                        return err(
                            format!("{g}.cidr"),
                            format!("{} overlaps vswitches[{k}] {}", s.cidr, o.cidr),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
