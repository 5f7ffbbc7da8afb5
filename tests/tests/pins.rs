//! Pinned maps across daemon builds: a compatible pin is re-used (its entries survive), an
//! incompatible one (another layout or conntrack size) is replaced rather than misread.

use aya::maps::{Array, MapInfo};
use privatelink_common::{
    Config, FlowEntry, FlowEntry6, FlowGeometry, FlowKey, FlowKey6, PROTO_TCP, PROTO_UDP,
    flowtable::{KEY_HASH_PARAMS, key_hash_params},
    map_names,
};
use privatelink_tests::apidaemon::{ApiDaemon, two_parties};
use privatelink_user::{
    client::Client,
    dataplane::{Dataplane, LoadOptions},
};
use serde_json::json;

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon in API mode (its own namespace and pins) holding the two parties, service
/// epsrv-b and endpoint ep-1 (ENI 10.10.1.10).
fn daemon_with_an_endpoint(prefix: &str) -> ApiDaemon {
    let d = ApiDaemon::start(prefix).unwrap();
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
    d
}

/// The kernel id of every pinned map.
fn pinned_ids(d: &ApiDaemon) -> std::collections::BTreeMap<&'static str, u32> {
    map_names::ALL
        .iter()
        .map(|n| (*n, MapInfo::from_pin(d.pin.join(n)).unwrap().id()))
        .collect()
}

/// Restarts the daemon (`kill -9`, start); what it logged while starting.
fn restart_and_log(d: &mut ApiDaemon) -> String {
    let logged = d.log().len();
    d.restart().unwrap();
    d.log()[logged..].to_string()
}

/// The warnings of pinned maps replaced, one line each.
fn replacement_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("pinned map does not fit this build"))
        .collect()
}

/// The flow tables' geometry as the loaded programs were given it (IPv4's, IPv6's): their
/// object's read-only data as bpftool dumps it, at the variables' offsets in the object's
/// symbol table. The programs must also have been given each table's key hash parameters,
/// those of its geometry's seed (`PL_FLOW_HASH`, `PL_FLOW_HASH6`): asserted here.
fn programs_geometry(dp: &Dataplane) -> (FlowGeometry, FlowGeometry) {
    use object::{Object, ObjectSymbol};
    let aya::maps::Map::Array(data) = dp.map(".rodata").unwrap() else {
        panic!("the object's read-only data is an array map");
    };
    let id = data.info().unwrap().id().to_string();
    let out = privatelink_tests::netns::run(
        std::process::Command::new("bpftool").args(["-j", "map", "dump", "id", &id]),
    )
    .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bytes: Vec<u8> = dump[0]["value"]
        .as_array()
        .unwrap_or_else(|| panic!("one element of bytes: {out}"))
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let elf = object::File::parse(privatelink_user::dataplane::EBPF_OBJECT).unwrap();
    // The words of the variable `name`, `n` of them.
    let words = |name: &str, n: usize| -> Vec<u64> {
        let sym = elf
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"));
        assert_eq!(sym.size(), 8 * n as u64, "{name}");
        let at = sym.address() as usize;
        bytes[at..at + 8 * n]
            .chunks(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
            .collect()
    };
    let geometry = |name: &str, hash: &str| {
        let g = FlowGeometry::from_word(words(name, 1)[0]);
        assert_eq!(
            words(hash, KEY_HASH_PARAMS),
            key_hash_params(g.seed),
            "{hash}: the parameters of {name}'s seed"
        );
        g
    };
    (
        geometry("PL_FLOW_GEOMETRY", "PL_FLOW_HASH"),
        geometry("PL_FLOW_GEOMETRY6", "PL_FLOW_HASH6"),
    )
}

/// The flow tables' geometry as their word 0 holds it (IPv4's, IPv6's).
fn tables_geometry(dp: &Dataplane) -> (FlowGeometry, FlowGeometry) {
    (
        dp.flow_geometry::<FlowEntry>().unwrap(),
        dp.flow_geometry::<FlowEntry6>().unwrap(),
    )
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
        ..LoadOptions::default()
    };
    let marker = Config {
        tcp_timeout_ns: 7,
        other_timeout_ns: 8,
        closing_timeout_ns: 9,
        ..Default::default()
    };
    // A flow of each family, written where the tables' geometry puts it.
    let key = FlowKey::new(7, [10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, PROTO_TCP);
    let entry = FlowEntry {
        new_sport: 4242,
        ..FlowEntry::default()
    };
    let key6 = FlowKey6::new(7, [0xfd; 16], [0xfe; 16], 1000, 80, PROTO_UDP);
    let entry6 = FlowEntry6 {
        new_sport: 4343,
        ..FlowEntry6::default()
    };
    let geometries = {
        let mut dp = Dataplane::load(&opts(1024)).unwrap();
        dp.set_config(&marker).unwrap();
        dp.put_flow::<FlowEntry>(&key, entry).unwrap();
        dp.put_flow::<FlowEntry6>(&key6, entry6).unwrap();
        let g = tables_geometry(&dp);
        assert_eq!(
            programs_geometry(&dp),
            g,
            "the programs were given the tables' geometry"
        );
        g
    };
    let ct = dir.0.join(map_names::CONNTRACK);
    // 1 024 entries: 256 buckets of four slots, after 9 elements of heads (the geometry,
    // a spare word and 256 buckets' heads, 32 words to an element).
    assert_eq!(MapInfo::from_pin(&ct).unwrap().max_entries(), 9 + 256);
    // Same build, same size: everything re-used.
    {
        let dp = Dataplane::load(&opts(1024)).unwrap();
        assert_eq!(config_of(&dp), marker, "the pinned config map was re-used");
        // The flow tables kept with their geometry (which the programs are given at load:
        // another seed would have cleared them) and their flows.
        let g = tables_geometry(&dp);
        assert_eq!(g, geometries, "the kept tables' geometry");
        assert_eq!(programs_geometry(&dp), g, "and the programs were given it");
        assert_eq!(dp.flow::<FlowEntry>(&key).unwrap(), Some(entry));
        assert_eq!(dp.flow::<FlowEntry6>(&key6).unwrap(), Some(entry6));
    }
    let id_before = MapInfo::from_pin(&ct).unwrap().id();
    // Another conntrack size: that map is replaced, the others stay.
    {
        let dp = Dataplane::load(&opts(4096)).unwrap();
        assert_eq!(config_of(&dp), marker);
    }
    let after = MapInfo::from_pin(&ct).unwrap();
    assert_eq!(after.max_entries(), 33 + 1024);
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
    use privatelink_user::{dataplane, model::numeric_id};

    let mut d = daemon_with_an_endpoint("plpin");
    let before = pinned_ids(&d);
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
    let log = restart_and_log(&mut d);
    let warnings = replacement_warnings(&log);
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
    let after = pinned_ids(&d);
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

/// Pins whose sizes still fit but whose records say they are not this build's layout:
/// two recorded with another build's fingerprint (fields reordered or retyped at the same
/// size), one whose record names another map id (re-created by a build that crashed
/// before recording, or by a build from before records), one with no record at all. The
/// next daemon replaces exactly those four, each with a warning naming the map and what
/// was found, re-uses the others, refills the endpoint map from its state and records this
/// build's fingerprints with the new maps' ids. An unreadable record is reported and
/// ignored (its map has a valid one and is kept).
#[test]
fn a_pinned_map_recorded_with_another_layout_of_the_same_size_is_replaced() {
    use std::collections::BTreeMap;

    use aya::maps::HashMap;
    use privatelink_common::{EndpointEni, VpcAddr};
    use privatelink_user::{dataplane, model::numeric_id};

    let mut d = daemon_with_an_endpoint("plpinl");
    let dir = d.pin.join(dataplane::LAYOUTS_DIR);
    // name -> (fingerprint, map id), from NAME-HEX-ID.
    let records = || -> BTreeMap<String, (String, u32)> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .map(|e| {
                let v: Vec<&str> = e.rsplitn(3, '-').collect();
                assert_eq!(v.len(), 3, "a record NAME-HEX-ID: {e}");
                (v[2].to_string(), (v[1].to_string(), v[0].parse().unwrap()))
            })
            .collect()
    };
    let ours = records();
    let before = pinned_ids(&d);
    assert_eq!(
        ours.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut all = map_names::ALL.to_vec();
            all.sort();
            all
        },
        "one record per map"
    );
    for (name, (f, id)) in &ours {
        assert_eq!(f.len(), 16, "{name}: {f}");
        assert_eq!(
            *id,
            before[name.as_str()],
            "{name}: the record names its map's id"
        );
    }
    let record = |name: &str, f: &str, id: u32| dir.join(format!("{name}-{f}-{id}"));
    let other = "00000000deadbeef";
    let (endpoints, conntrack, config, stats, ifaces) = (
        map_names::ENDPOINTS,
        map_names::CONNTRACK,
        map_names::CONFIG,
        map_names::STATS,
        map_names::IFACES,
    );
    for name in [endpoints, conntrack, config, stats] {
        let (f, id) = &ours[name];
        std::fs::remove_dir(record(name, f, *id)).unwrap();
    }
    std::fs::create_dir(record(endpoints, other, before[endpoints])).unwrap();
    std::fs::create_dir(record(conntrack, other, before[conntrack])).unwrap();
    std::fs::create_dir(record(config, &ours[config].0, before[config] + 100_000)).unwrap();
    std::fs::create_dir(dir.join(format!("{ifaces}-nothex"))).unwrap();
    let replaced = [
        (
            endpoints,
            format!("layout={other} (map {})", before[endpoints]),
        ),
        (
            conntrack,
            format!("layout={other} (map {})", before[conntrack]),
        ),
        (
            config,
            format!(
                "layout={} (map {})",
                ours[config].0,
                before[config] + 100_000
            ),
        ),
        (stats, "layout=no record".to_string()),
    ];

    let log = restart_and_log(&mut d);
    let warnings = replacement_warnings(&log);
    assert_eq!(warnings.len(), 4, "one warning per replaced map:\n{log}");
    let after = pinned_ids(&d);
    for (name, found) in &replaced {
        let w = warnings
            .iter()
            .find(|w| w.contains(&format!("map={name} ")))
            .unwrap_or_else(|| panic!("no warning names {name}:\n{log}"));
        assert!(
            w.contains(found) && w.contains(&format!("this_build={}", ours[*name].0)),
            "the warning gives what was found ({found}) and this build's fingerprint: {w}"
        );
        assert_ne!(after[name], before[name], "{name} replaced");
    }
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("unreadable layout record")
            && l.contains(&format!("{ifaces}-nothex"))),
        "the unreadable record is reported:\n{log}"
    );
    for (name, id) in &before {
        if replaced.iter().all(|(n, _)| n != name) {
            assert_eq!(after[name], *id, "{name} re-used");
        }
    }
    let now = records();
    for (name, (f, id)) in &now {
        assert_eq!(
            *f, ours[name].0,
            "{name}: this build's fingerprint recorded again"
        );
        assert_eq!(
            *id,
            after[name.as_str()],
            "{name}: with the pinned map's id"
        );
    }
    assert_eq!(
        now.len(),
        ours.len(),
        "stale and unreadable records removed"
    );
    let eps = dataplane::open_pinned(&d.pin, map_names::ENDPOINTS).unwrap();
    let eps: HashMap<_, VpcAddr, EndpointEni> = HashMap::try_from(&eps).unwrap();
    let key = VpcAddr {
        vpc_id: numeric_id("vpc-a"),
        addr: [10, 10, 1, 10],
    };
    assert_eq!(eps.get(&key, 0).unwrap().endpoint_id, numeric_id("ep-1"));
}
