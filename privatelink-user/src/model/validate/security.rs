use std::collections::BTreeSet;

use super::{FieldError, Ids, check_acl_rules, check_cidr, check_ports, err};
use crate::model::State;

impl State {
    pub(super) fn validate_filters(&self, ids: &mut Ids) -> Result<(), FieldError> {
        for (i, g) in self.security_groups.iter().enumerate() {
            let f = format!("security_groups[{i}]");
            self.owned_object(&f, ids, g, &g.vpc)?;
            let mut rule_ids = BTreeSet::new();
            for (j, r) in g.rules.iter().enumerate() {
                let h = format!("{f}.rules[{j}]");
                if !(1..=100).contains(&r.priority) {
                    return err(
                        format!("{h}.priority"),
                        format!("{} is outside 1-100", r.priority),
                    );
                }
                check_ports(&h, r.protocol, r.ports)?;
                check_cidr(&h, r.cidr)?;
                if !r.id.is_empty() && !rule_ids.insert(r.id.clone()) {
                    return err(format!("{h}.id"), format!("duplicate rule id {}", r.id));
                }
            }
        }
        let mut bound = BTreeSet::new();
        for (i, a) in self.acls.iter().enumerate() {
            let f = format!("acls[{i}]");
            let vpc = self.owned_object(&f, ids, a, &a.vpc)?;
            for (j, v) in a.vswitches.iter().enumerate() {
                if !vpc.vswitches.iter().any(|s| s.id == *v) {
                    return err(
                        format!("{f}.vswitches[{j}]"),
                        format!("VPC {} has no vSwitch {v:?}", vpc.id),
                    );
                }
                if !bound.insert(v.clone()) {
                    return err(
                        format!("{f}.vswitches[{j}]"),
                        format!("vSwitch {v} already has an ACL"),
                    );
                }
            }
            for (dir, rules) in [("ingress", &a.ingress), ("egress", &a.egress)] {
                check_acl_rules(&format!("{f}.{dir}"), rules)?;
            }
        }
        Ok(())
    }
}
