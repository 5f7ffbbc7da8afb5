//! Durable state. The model is kept as one record per object ("<kind>/<id>" → JSON) so a
//! change writes only the objects it touched, in one transaction. The default backend is
//! redb (embedded, ACID, fsync on commit: an acknowledged change survives kill -9, and a
//! crash mid-write leaves the previous commit readable), one host's. The shared one is
//! etcd (`etcd`): a fleet of daemons on one cluster, each committing by compare-and-swap
//! on the cluster's revision and catching up with what the others committed.

pub mod etcd;

use std::{collections::BTreeMap, future::Future, path::Path, pin::Pin};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::model::State;

/// A store operation's future (boxed: `Store` is used as a trait object).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

pub trait Store: Send {
    /// The stored state (empty if nothing was ever stored).
    fn load(&mut self) -> StoreFuture<'_, State>;
    /// Atomically replaces the stored state by `next`, given the state it currently holds.
    /// A shared store refuses with `StoreError::Conflict` when another daemon committed
    /// since this one last loaded or saved (nothing is written: catch up and try again),
    /// and with `StoreError::Unavailable` when it cannot be reached.
    fn save<'a>(&'a mut self, current: &'a State, next: &'a State) -> StoreFuture<'a, ()>;
    /// A shared store: the state as it is now, if others committed since this daemon last
    /// loaded or saved (`None`: nothing new). A store only this daemon writes has nothing.
    fn catch_up(&mut self) -> StoreFuture<'_, Option<State>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether nothing was ever committed to it (a seed file may be imported).
    fn never_written(&self) -> bool {
        true
    }
    /// A shared store: the revision of the last commit this daemon read or wrote (0 for
    /// a store only this daemon writes).
    fn revision(&self) -> i64 {
        0
    }
    /// What the logs call it.
    fn describe(&self) -> String;
}

/// Why a shared store refused a change (carried in the `anyhow::Error` of `save`).
#[derive(Debug)]
pub enum StoreError {
    /// Another daemon committed first: nothing was written.
    Conflict,
    /// The store cannot be reached (etcd lost its majority, or this host lost etcd):
    /// nothing was written.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict => write!(f, "another daemon committed a change first"),
            StoreError::Unavailable(why) => write!(f, "the shared store is unreachable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The `StoreError` an error is (or wraps), if any.
pub fn store_error(e: &anyhow::Error) -> Option<&StoreError> {
    e.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(OBJECTS)?;
        txn.commit()?;
        Ok(Self { db })
    }
}

/// Rebuilds a state from records; an unreadable record names its key.
pub fn from_records<'a>(records: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<State> {
    let mut s = State::default();
    for (k, v) in records {
        let (kind, _) = k
            .split_once('/')
            .with_context(|| format!("bad key {k:?}"))?;
        let bad = || format!("record {k} is unreadable");
        match kind {
            "account" => s
                .accounts
                .push(serde_json::from_slice(v).with_context(bad)?),
            "vpc" => s.vpcs.push(serde_json::from_slice(v).with_context(bad)?),
            "service" => s
                .services
                .push(serde_json::from_slice(v).with_context(bad)?),
            "endpoint" => s
                .endpoints
                .push(serde_json::from_slice(v).with_context(bad)?),
            "sg" => s
                .security_groups
                .push(serde_json::from_slice(v).with_context(bad)?),
            "acl" => s.acls.push(serde_json::from_slice(v).with_context(bad)?),
            _ => anyhow::bail!("record {k}: unknown kind {kind}"),
        }
    }
    Ok(s)
}

impl RedbStore {
    /// `load`, synchronously.
    pub fn read(&self) -> Result<State> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let mut pairs = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            pairs.push((k.value().to_string(), v.value().to_vec()));
        }
        // Keys sort by kind then id; keep creation order stable by id within a kind.
        from_records(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    /// `save`, synchronously.
    pub fn write(&mut self, current: &State, next: &State) -> Result<()> {
        let (puts, deletes) = changes(current, next)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OBJECTS)?;
            for (k, v) in &puts {
                table.insert(k.as_str(), v.as_slice())?;
            }
            for k in &deletes {
                table.remove(k.as_str())?;
            }
        }
        txn.commit().context("committing the state")?;
        Ok(())
    }
}

/// redb is synchronous and local: its calls run in place (a commit's fsync is the only
/// wait, as before the trait was asynchronous).
impl Store for RedbStore {
    fn load(&mut self) -> StoreFuture<'_, State> {
        let r = self.read();
        Box::pin(async { r })
    }

    fn save<'a>(&'a mut self, current: &'a State, next: &'a State) -> StoreFuture<'a, ()> {
        let r = self.write(current, next);
        Box::pin(async { r })
    }

    fn describe(&self) -> String {
        "redb".to_string()
    }
}

/// The records to write and to remove to go from `old` to `new`: objects are compared in
/// memory, only changed ones are serialized.
/// Records to write (key, JSON) and keys to remove.
pub type Changes = (Vec<(String, Vec<u8>)>, Vec<String>);

pub fn changes(old: &State, new: &State) -> Result<Changes> {
    fn kind<T: serde::Serialize + PartialEq>(
        name: &str,
        old: &[T],
        new: &[T],
        id: impl Fn(&T) -> &str,
        puts: &mut Vec<(String, Vec<u8>)>,
        deletes: &mut Vec<String>,
    ) -> Result<()> {
        let before: BTreeMap<&str, &T> = old.iter().map(|x| (id(x), x)).collect();
        let after: BTreeMap<&str, &T> = new.iter().map(|x| (id(x), x)).collect();
        for (k, v) in &after {
            if before.get(k) != Some(v) {
                puts.push((format!("{name}/{k}"), serde_json::to_vec(v)?));
            }
        }
        deletes.extend(
            before
                .keys()
                .filter(|k| !after.contains_key(*k))
                .map(|k| format!("{name}/{k}")),
        );
        Ok(())
    }
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    kind(
        "account",
        &old.accounts,
        &new.accounts,
        |x| &x.id,
        &mut puts,
        &mut deletes,
    )?;
    kind(
        "vpc",
        &old.vpcs,
        &new.vpcs,
        |x| &x.id,
        &mut puts,
        &mut deletes,
    )?;
    kind(
        "service",
        &old.services,
        &new.services,
        |x| &x.id,
        &mut puts,
        &mut deletes,
    )?;
    kind(
        "endpoint",
        &old.endpoints,
        &new.endpoints,
        |x| &x.id,
        &mut puts,
        &mut deletes,
    )?;
    kind(
        "sg",
        &old.security_groups,
        &new.security_groups,
        |x| &x.id,
        &mut puts,
        &mut deletes,
    )?;
    kind(
        "acl",
        &old.acls,
        &new.acls,
        |x| &x.id,
        &mut puts,
        &mut deletes,
    )?;
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_state;

    const LAB: &str = include_str!("../../../tests/lab.toml");

    #[test]
    fn round_trips_and_writes_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = RedbStore::open(dir.path()).unwrap();
        assert_eq!(st.read().unwrap(), State::default());
        let s = parse_state(LAB).unwrap();
        st.write(&State::default(), &s).unwrap();
        let mut loaded = st.read().unwrap();
        loaded.vpcs.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = s.clone();
        want.vpcs.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(loaded.endpoints, want.endpoints);
        assert_eq!(loaded.vpcs, want.vpcs);
        let mut next = s.clone();
        next.endpoints.clear();
        let (puts, deletes) = changes(&s, &next).unwrap();
        assert!(puts.is_empty(), "nothing else is rewritten");
        assert_eq!(deletes, vec!["endpoint/ep-a".to_string()]);
        st.write(&s, &next).unwrap();
        drop(st);
        let st = RedbStore::open(dir.path()).unwrap();
        assert!(
            st.read().unwrap().endpoints.is_empty(),
            "delete persisted across reopen"
        );
        assert_eq!(st.read().unwrap().services.len(), 1);
    }

    /// An earlier build stored services without listeners: such a record loads, with no
    /// listeners (it publishes nothing), and is named for the start-up warning.
    #[test]
    fn a_service_stored_without_listeners_loads_publishing_nothing() {
        let record = br#"{"id":"epsrv-old","account":"acct-b","type":"interface","vpc":"vpc-b",
            "backends":[{"zone":"zone-a","address":"10.10.0.10"}],"snat":["10.10.0.200"]}"#;
        let s = from_records([("service/epsrv-old", record.as_slice())]).unwrap();
        assert!(s.services[0].listeners.is_empty());
        assert_eq!(s.legacy_without_listeners(), vec!["epsrv-old"]);
        let l = crate::desired::listener_set(&s.services[0]);
        assert!(!l.admits(privatelink_common::PROTO_TCP, 80));
    }

    #[test]
    fn a_corrupt_record_is_named() {
        let e = from_records([("endpoint/ep-x", b"{not json".as_slice())]).unwrap_err();
        assert!(format!("{e:#}").contains("endpoint/ep-x"), "{e:#}");
    }
}
