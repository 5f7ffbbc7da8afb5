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
        // The nightly whose LLVM (22) matches the bpf-linker that xtask builds; a newer
        // nightly moves to another LLVM and the link fails.
        aya_build::Toolchain::Custom(include_str!("../privatelink-ebpf/toolchain").trim()),
    )
}
