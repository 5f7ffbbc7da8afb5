//! The DNS names the product gives: an endpoint's domain name, one zone domain name per
//! zone, and a service's default domain name, all under one configurable apex
//! `<region>.<suffix>` (one zone an on-premises resolver forwards):
//!
//! - endpoint: `<endpoint>.<service>.<region>.<suffix>`
//! - zone: `<zone>.<endpoint>.<service>.<region>.<suffix>`
//! - service (no address records: its endpoints live in many VPCs): `<service>.<region>.<suffix>`
//!
//! The zone is a label of its own (not `<endpoint>-<zone>` as some clouds write it): ids
//! contain `-`, so endpoint `ep-a` in zone `zone-a` and endpoint `ep-a-zone-a` would meet.
//! An id that is not a clean lowercase DNS label is written `pl--<8 hex digits of its
//! numeric id>` (see `label`).

use serde::{Deserialize, Serialize};

use super::numeric_id;

/// The suffix and region the names are built under (the daemon's `--dns-suffix` and
/// `--dns-region`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Naming {
    pub suffix: String,
    pub region: String,
}

pub const DEFAULT_SUFFIX: &str = "privatelink.internal";
pub const DEFAULT_REGION: &str = "region-1";

impl Default for Naming {
    fn default() -> Self {
        Self {
            suffix: DEFAULT_SUFFIX.into(),
            region: DEFAULT_REGION.into(),
        }
    }
}

impl Naming {
    /// Checks suffix and region (lowercase, LDH labels; the region one label).
    pub fn check(&self) -> Result<(), String> {
        check_domain(&self.suffix).map_err(|e| format!("the DNS suffix {e}"))?;
        if !is_clean_label(&self.region) {
            return Err(format!(
                "the DNS region {:?} is not one lowercase DNS label (a-z, 0-9, inner -)",
                self.region
            ));
        }
        Ok(())
    }

    /// The zone every name lies in: `<region>.<suffix>`.
    pub fn apex(&self) -> String {
        format!("{}.{}", self.region, self.suffix)
    }

    /// A service's default domain name.
    pub fn service(&self, service: &str) -> String {
        format!("{}.{}", label(service), self.apex())
    }

    /// An endpoint's domain name: every healthy zone's ENI address (zone affinity aside).
    pub fn endpoint(&self, endpoint: &str, service: &str) -> String {
        format!("{}.{}", label(endpoint), self.service(service))
    }

    /// The domain name of an endpoint's ENI in `zone`: that ENI's address only.
    pub fn zone(&self, zone: &str, endpoint: &str, service: &str) -> String {
        format!("{}.{}", label(zone), self.endpoint(endpoint, service))
    }
}

/// Whether `s` is a lowercase LDH label that stands for itself: 1-63 of `a-z0-9-`, no `-`
/// first or last, and not `--` at positions 3-4 (reserved: `xn--`, and our `pl--`).
pub fn is_clean_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !(b.len() >= 4 && &b[2..4] == b"--")
}

/// The DNS label of an id: the id itself if it is a clean label; else `pl--` and the 8 hex
/// digits of its numeric id (never a clean label itself, so it meets no id; distinct ids
/// have distinct numeric ids, which the model keeps). Ids with capitals take the second
/// form, so `Ep-A` and `ep-a` never share a name.
pub fn label(id: &str) -> String {
    if is_clean_label(id) {
        id.to_string()
    } else {
        format!("pl--{:08x}", numeric_id(id))
    }
}

/// The longest name DNS carries, in presentation form without the final dot.
pub const MAX_NAME_LEN: usize = 253;

/// Checks a domain name a provider or operator gives (a custom service domain, the
/// suffix): lowercase LDH labels separated by dots, at least two, at most 253 characters,
/// no final dot. Returns what is wrong.
pub fn check_domain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{name:?} is not a domain name: 1-{MAX_NAME_LEN} characters"
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "{name:?} is not a domain name: give at least two labels (example.com)"
        ));
    }
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a domain name: the label {l:?} is not 1-63 of a-z, 0-9 and inner -"
            ));
        }
    }
    Ok(())
}

/// Whether `name` is `zone` or lies under it (both lowercase, no final dot).
pub fn is_within(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_the_documented_shape() {
        let n = Naming::default();
        assert_eq!(n.apex(), "region-1.privatelink.internal");
        assert_eq!(
            n.endpoint("ep-a", "epsrv-b"),
            "ep-a.epsrv-b.region-1.privatelink.internal"
        );
        assert_eq!(
            n.zone("zone-a", "ep-a", "epsrv-b"),
            "zone-a.ep-a.epsrv-b.region-1.privatelink.internal"
        );
        assert_eq!(
            n.service("epsrv-b"),
            "epsrv-b.region-1.privatelink.internal"
        );
    }

    #[test]
    fn ids_that_are_not_labels_are_hashed_and_never_meet_a_clean_id() {
        for id in ["Ep-A", "ep_a", "-a", "a-", "ab--c", &"a".repeat(64)] {
            let l = label(id);
            assert!(l.starts_with("pl--") && l.len() == 12, "{id}: {l}");
            assert!(!is_clean_label(&l), "{l}");
        }
        assert_ne!(label("Ep-A"), label("ep-a"));
        assert_eq!(label("ep-a"), "ep-a");
        assert_eq!(label("a1"), "a1");
    }

    #[test]
    fn domains_are_checked_and_containment_is_by_labels() {
        assert!(check_domain("web.provider-b.example").is_ok());
        for bad in ["", "com", "Web.example", "a..b", "-a.b", "a_b.c", "a.b."] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        assert!(check_domain(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(is_within("a.b.c", "b.c"));
        assert!(is_within("b.c", "b.c"));
        assert!(!is_within("ab.c", "b.c"));
        assert!(!is_within("c", "b.c"));
        assert!(Naming::default().check().is_ok());
        let bad = Naming {
            region: "Region_1".into(),
            ..Naming::default()
        };
        assert!(bad.check().is_err());
    }
}
