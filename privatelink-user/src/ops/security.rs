//! Security groups and network ACLs (consumer).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, creator, endpoint_ids, own, unique, visible};
use crate::model::{AclRule, NetworkAcl, SecurityGroup, SgRule, State};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecurityGroup {
    pub id: String,
    pub vpc: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<SgRule>,
}

fn own_group<'a>(s: &'a mut State, c: &Caller, id: &str) -> R<&'a mut SecurityGroup> {
    own(
        &mut s.security_groups,
        c,
        "security group",
        "security_group",
        id,
    )
}

fn next_rule_id(g: &mut SecurityGroup) -> String {
    let used = g
        .rules
        .iter()
        .filter_map(|r| r.id.strip_prefix('r')?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    g.last_rule = g.last_rule.max(used) + 1;
    format!("r{}", g.last_rule)
}

pub fn create_security_group(s: &mut State, c: &Caller, req: NewSecurityGroup) -> R<SecurityGroup> {
    let owner = creator(s, c, &req.vpc)?;
    let taken = s.security_groups.iter().any(|g| g.id == req.id);
    unique(taken, "security group", &req.id)?;
    let mut g = SecurityGroup {
        id: req.id,
        account: owner,
        vpc: req.vpc,
        name: req.name,
        rules: Vec::new(),
        last_rule: 0,
    };
    for mut r in req.rules {
        r.id = next_rule_id(&mut g);
        g.rules.push(r);
    }
    s.security_groups.push(g.clone());
    Ok(g)
}

pub fn list_security_groups(s: &State, c: &Caller) -> Vec<SecurityGroup> {
    visible(&s.security_groups, c)
}

pub fn delete_security_group(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own_group(s, c, id)?;
    let users = endpoint_ids(s, |e| e.security_groups.iter().any(|g| g == id));
    if !users.is_empty() {
        return Err(OpError::conflict(
            "security_group",
            format!("{id} is attached to {}", users.join(", ")),
        ));
    }
    s.security_groups.retain(|g| g.id != id);
    Ok(())
}

pub fn add_sg_rule(s: &mut State, c: &Caller, id: &str, mut rule: SgRule) -> R<SgRule> {
    let g = own_group(s, c, id)?;
    rule.id = next_rule_id(g);
    g.rules.push(rule.clone());
    Ok(rule)
}

pub fn remove_sg_rule(s: &mut State, c: &Caller, id: &str, rule: &str) -> R<()> {
    let g = own_group(s, c, id)?;
    let before = g.rules.len();
    g.rules.retain(|r| r.id != rule);
    if g.rules.len() == before {
        return Err(OpError::not_found(
            "rule",
            format!("security group {id} has no rule {rule}"),
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAcl {
    pub id: String,
    pub vpc: String,
    pub vswitches: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub ingress: Vec<AclRule>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub egress: Vec<AclRule>,
}

pub fn create_acl(s: &mut State, c: &Caller, req: NewAcl) -> R<NetworkAcl> {
    let owner = creator(s, c, &req.vpc)?;
    unique(s.acls.iter().any(|a| a.id == req.id), "ACL", &req.id)?;
    let acl = NetworkAcl {
        id: req.id,
        account: owner,
        vpc: req.vpc,
        vswitches: req.vswitches,
        ingress: req.ingress,
        egress: req.egress,
    };
    s.acls.push(acl.clone());
    Ok(acl)
}

pub fn list_acls(s: &State, c: &Caller) -> Vec<NetworkAcl> {
    visible(&s.acls, c)
}

pub fn delete_acl(s: &mut State, c: &Caller, id: &str) -> R<()> {
    own(&s.acls, c, "ACL", "acl", id)?;
    s.acls.retain(|a| a.id != id);
    Ok(())
}
