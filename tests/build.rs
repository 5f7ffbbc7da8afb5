//! Builds the lab's XDP programs (tests/lab-ebpf: pass-through, reference and benchmark
//! programs) with the nightly toolchain into OUT_DIR; `src/reference.rs` embeds them.

use anyhow::Result;

fn main() -> Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "privatelink-lab-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/lab-ebpf"),
            no_default_features: false,
            features: &[],
        }],
        // The data path's nightly (see privatelink-user/build.rs): bpf-linker is built
        // against its LLVM.
        aya_build::Toolchain::Custom(include_str!("../privatelink-ebpf/toolchain").trim()),
    )
}
