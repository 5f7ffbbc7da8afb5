//! Builds the XDP program with the nightly toolchain into OUT_DIR; `src/ebpf.rs` embeds it.

use anyhow::Result;

fn main() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../privatelink-ebpf");
    // The eBPF crate also compiles privatelink-common: rebuild when either changes.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../privatelink-common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "privatelink-ebpf",
            root_dir: root,
            no_default_features: false,
            features: &[],
        }],
        aya_build::Toolchain::default(),
    )
}
