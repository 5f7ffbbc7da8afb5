//! Pinned maps across daemon builds: a compatible pin is re-used (its entries survive), an
//! incompatible one (another layout or conntrack size) is replaced rather than misread.

use aya::maps::{Array, MapInfo};
use privatelink_common::{Config, map_names};
use privatelink_user::dataplane::{Dataplane, LoadOptions};

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_of(dp: &Dataplane) -> Config {
    let a: Array<_, Config> = Array::try_from(dp.map(map_names::CONFIG).unwrap()).unwrap();
    a.get(&0, 0).unwrap()
}

#[test]
fn compatible_pins_are_reused_and_incompatible_ones_replaced() {
    let dir = Dir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/privatelink-test-pins-{}",
        std::process::id()
    )));
    let opts = |n| LoadOptions {
        pin_dir: Some(dir.0.clone()),
        conntrack_entries: n,
    };
    let marker = Config {
        tcp_timeout_ns: 7,
        other_timeout_ns: 8,
        closing_timeout_ns: 9,
        ..Default::default()
    };
    {
        let mut dp = Dataplane::load(&opts(1024)).unwrap();
        dp.set_config(&marker).unwrap();
    }
    let ct = dir.0.join(map_names::CONNTRACK);
    assert_eq!(MapInfo::from_pin(&ct).unwrap().max_entries(), 1024);
    // Same build, same size: everything re-used.
    {
        let dp = Dataplane::load(&opts(1024)).unwrap();
        assert_eq!(config_of(&dp), marker, "the pinned config map was re-used");
    }
    let id_before = MapInfo::from_pin(&ct).unwrap().id();
    // Another conntrack size: that map is replaced, the others stay.
    {
        let dp = Dataplane::load(&opts(4096)).unwrap();
        assert_eq!(config_of(&dp), marker);
    }
    let after = MapInfo::from_pin(&ct).unwrap();
    assert_eq!(after.max_entries(), 4096);
    assert_ne!(after.id(), id_before, "a new conntrack map");
}

/// A map of an earlier build whose key or value layout differs (PL_ENDPOINTS with a value
/// 4 bytes shorter, PL_LISTENERS with a 64-bit key), pinned where the daemon looks: the
/// next daemon replaces exactly those two, logs a warning naming each with the sizes it
/// found, refills them from its state, and re-uses every other pinned map as it was.
/// (A layout change that keeps both sizes: see the next test.)
#[test]
fn a_pinned_map_of_another_layout_is_replaced_with_a_warning_naming_it() {
    use std::collections::BTreeMap;

    use aya::maps::HashMap;
    use privatelink_common::{EndpointEni, ListenerSet, VpcAddr};
    use privatelink_tests::apidaemon::{ApiDaemon, two_parties};
    use privatelink_user::{client::Client, dataplane, model::numeric_id};
    use serde_json::json;

    let mut d = ApiDaemon::start("plpin").unwrap();
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (a, b) = two_parties(&admin, &d.url).unwrap();
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "whitelist": ["acct-a"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    a.post(
        "/v1/endpoints",
        &json!({"id": "ep-1", "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.10"}]}),
    )
    .unwrap();
    let ids = |d: &ApiDaemon| -> BTreeMap<&str, u32> {
        map_names::ALL
            .iter()
            .map(|n| (*n, MapInfo::from_pin(d.pin.join(n)).unwrap().id()))
            .collect()
    };
    let before = ids(&d);
    let old_value = std::mem::size_of::<EndpointEni>() - 4;
    let old: [(&str, usize, usize); 2] = [
        (
            map_names::ENDPOINTS,
            std::mem::size_of::<VpcAddr>(),
            old_value,
        ),
        (map_names::LISTENERS, 8, std::mem::size_of::<ListenerSet>()),
    ];
    let mut old_ids = BTreeMap::new();
    for (name, key, value) in old {
        let pin = d.pin.join(name);
        std::fs::remove_file(&pin).unwrap();
        let (key, value) = (key.to_string(), value.to_string());
        privatelink_tests::netns::run(std::process::Command::new("bpftool").args([
            "map",
            "create",
            pin.to_str().unwrap(),
            "type",
            "hash",
            "key",
            &key,
            "value",
            &value,
            "entries",
            &privatelink_common::MAX_ENDPOINTS.to_string(),
            "name",
            name,
        ]))
        .unwrap();
        old_ids.insert(name, MapInfo::from_pin(&pin).unwrap().id());
    }
    let logged = d.log().len();
    d.restart().unwrap();
    let log = d.log()[logged..].to_string();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("pinned map does not fit this build"))
        .collect();
    assert_eq!(warnings.len(), 2, "one warning per replaced map:\n{log}");
    for (name, key, value) in old {
        let w = warnings
            .iter()
            .find(|w| w.contains(name))
            .unwrap_or_else(|| panic!("no warning names {name}:\n{log}"));
        assert!(
            w.contains(&format!("key_size={key}")) && w.contains(&format!("value_size={value}")),
            "the warning gives the sizes found: {w}"
        );
        let now = MapInfo::from_pin(d.pin.join(name)).unwrap();
        assert_ne!(now.id(), old_ids[name], "{name} replaced");
        assert_ne!(now.id(), before[name]);
    }
    let after = ids(&d);
    for (name, id) in &before {
        if old.iter().all(|(n, _, _)| n != name) {
            assert_eq!(after[name], *id, "{name} re-used");
        }
    }
    // The new maps have this build's layout and the state's entries again.
    let eps = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let eps: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&eps).unwrap();
    let key = VpcAddr {
        vpc_id: numeric_id("vpc-a"),
        addr: [10, 10, 1, 10],
    };
    assert_eq!(eps.get(&key, 0).unwrap().endpoint_id, numeric_id("ep-1"));
    let listeners = dataplane::open_pinned(&d.pin, map_names::LISTENERS).unwrap();
    let listeners: HashMap<_, u32, ListenerSet> = HashMap::try_from(&listeners).unwrap();
    assert!(listeners.get(&numeric_id("epsrv-b"), 0).is_ok());
}

/// Two maps whose sizes still fit but whose recorded layout fingerprint is another build's
/// (as when fields are reordered or retyped at the same size): the next daemon replaces
/// exactly those two, with a warning naming each and the fingerprints found and expected,
/// refills the endpoint map from its state, and records this build's fingerprints again. A
/// record that cannot be read is reported and its map judged by its sizes (kept).
#[test]
fn a_pinned_map_recorded_with_another_layout_of_the_same_size_is_replaced() {
    use std::collections::BTreeMap;

    use aya::maps::HashMap;
    use privatelink_common::{EndpointEni, VpcAddr};
    use privatelink_tests::apidaemon::{ApiDaemon, two_parties};
    use privatelink_user::{client::Client, dataplane, model::numeric_id};
    use serde_json::json;

    let mut d = ApiDaemon::start("plpinl").unwrap();
    let admin = Client::new(&d.url, Some(d.admin_token.clone()));
    let (a, b) = two_parties(&admin, &d.url).unwrap();
    b.post(
        "/v1/services",
        &json!({"id": "epsrv-b", "vpc": "vpc-b", "backends": [{"zone": "zone-a", "address": "10.10.0.10"}],
                "snat": ["10.10.0.200"], "whitelist": ["acct-a"], "listeners": [{"protocol": "tcp", "port": 80}]}),
    )
    .unwrap();
    a.post(
        "/v1/endpoints",
        &json!({"id": "ep-1", "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a1", "eni": "10.10.1.10"}]}),
    )
    .unwrap();
    let dir = d.pin.join(dataplane::LAYOUTS_DIR);
    let records = || -> BTreeMap<String, String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .map(|e| {
                let (n, f) = e.rsplit_once('-').unwrap_or((&e, ""));
                (n.to_string(), f.to_string())
            })
            .collect()
    };
    let ours = records();
    assert_eq!(
        ours.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut all = map_names::ALL.to_vec();
            all.sort();
            all
        },
        "one record per map"
    );
    assert!(ours.values().all(|f| f.len() == 16), "{ours:?}");
    let ids = |d: &ApiDaemon| -> BTreeMap<&str, u32> {
        map_names::ALL
            .iter()
            .map(|n| (*n, MapInfo::from_pin(d.pin.join(n)).unwrap().id()))
            .collect()
    };
    let before = ids(&d);
    // Another build's records: two other fingerprints, one line unreadable.
    let other = "00000000deadbeef";
    let replaced = [map_names::ENDPOINTS, map_names::CONNTRACK];
    for (name, f) in &ours {
        let new = if replaced.contains(&name.as_str()) {
            format!("{name}-{other}")
        } else if name == map_names::STATS {
            format!("{name}-nothex")
        } else {
            continue;
        };
        std::fs::remove_dir(dir.join(format!("{name}-{f}"))).unwrap();
        std::fs::create_dir(dir.join(new)).unwrap();
    }
    let logged = d.log().len();
    d.restart().unwrap();
    let log = d.log()[logged..].to_string();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("pinned map does not fit this build"))
        .collect();
    assert_eq!(warnings.len(), 2, "one warning per replaced map:\n{log}");
    let after = ids(&d);
    for name in replaced {
        let w = warnings
            .iter()
            .find(|w| w.contains(&format!("map={name}")))
            .unwrap_or_else(|| panic!("no warning names {name}:\n{log}"));
        assert!(
            w.contains(&format!("layout={other}"))
                && w.contains(&format!("this_build={}", ours[name])),
            "the warning gives both fingerprints: {w}"
        );
        assert_ne!(after[name], before[name], "{name} replaced");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("unreadable layout record")),
        "the unreadable record is reported:\n{log}"
    );
    for (name, id) in &before {
        if !replaced.contains(name) {
            assert_eq!(after[name], *id, "{name} re-used");
        }
    }
    assert_eq!(records(), ours, "this build's fingerprints recorded again");
    let eps = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let eps: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&eps).unwrap();
    let key = VpcAddr {
        vpc_id: numeric_id("vpc-a"),
        addr: [10, 10, 1, 10],
    };
    assert_eq!(eps.get(&key, 0).unwrap().endpoint_id, numeric_id("ep-1"));
}
