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
