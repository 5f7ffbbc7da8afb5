//! Diffing desired map content against what the maps hold, and applying only the changes.

use std::collections::BTreeMap;

/// One change to a map.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<K, V> {
    Upsert(K, V),
    Delete(K),
}

/// The changes that turn `current` into `desired`: upserts first (new and changed entries),
/// deletes last, so that nothing in use disappears before its replacement exists.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Vec<Change<K, V>> {
    let mut out: Vec<Change<K, V>> = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| Change::Upsert(k.clone(), v.clone()))
        .collect();
    out.extend(
        current
            .keys()
            .filter(|k| !desired.contains_key(k))
            .map(|k| Change::Delete(k.clone())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_entries_are_touched() {
        let cur = BTreeMap::from([(1, 'a'), (2, 'b'), (3, 'c')]);
        let want = BTreeMap::from([(1, 'a'), (2, 'x'), (4, 'd')]);
        assert_eq!(
            diff(&cur, &want),
            vec![
                Change::Upsert(2, 'x'),
                Change::Upsert(4, 'd'),
                Change::Delete(3)
            ]
        );
        assert!(diff(&want, &want).is_empty());
    }
}
