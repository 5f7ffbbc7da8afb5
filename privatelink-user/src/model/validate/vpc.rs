use std::collections::{BTreeMap, BTreeSet};

use super::{FieldError, check_id, err};
use crate::model::State;

const MAX_IFNAME: usize = 15;

impl State {
    pub(super) fn validate_vpcs(&self, ids: &mut BTreeMap<u32, String>) -> Result<(), FieldError> {
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
            if v.cidr != v.cidr.trunc() {
                return err(
                    format!("{f}.cidr"),
                    format!(
                        "{} has host bits set (did you mean {}?)",
                        v.cidr,
                        v.cidr.trunc()
                    ),
                );
            }
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
                    if o.cidr.contains(&s.cidr.network()) || s.cidr.contains(&o.cidr.network()) {
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
