//! The reference programs of `privatelink-pass` (map-free XDP programs for labs and
//! benchmark baselines), kept apart from the data plane proper.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use super::{Dataplane, load_retrying, xdp_program};

/// A map-less program that passes every frame (veth peers in labs; benchmark baseline).
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/privatelink-pass"));

impl Dataplane {
    /// The pass-through program, loaded on first use (a baseline for benchmarks).
    pub fn pass_program(&mut self) -> Result<&mut Xdp> {
        self.reference_program(privatelink_common::PASS_PROGRAM_NAME)
    }

    /// One of the map-free reference programs of `privatelink-pass` (`privatelink_pass`,
    /// `privatelink_tx`, `privatelink_redirect`, `privatelink_gen`), loaded on first use.
    pub fn reference_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let p = xdp_program(self.reference_object()?, name)?;
        if p.fd().is_err() {
            load_retrying(p)?;
        }
        Ok(p)
    }

    /// The `privatelink-pass` object (its maps configure the reference programs).
    pub fn reference_object(&mut self) -> Result<&mut Ebpf> {
        if self.pass.is_none() {
            self.pass = Some(load_pass()?);
        }
        Ok(self.pass.as_mut().expect("just set"))
    }
}

/// Attaches the pass-through program to `ifaces` and keeps it there while the returned
/// object lives.
pub fn attach_pass(ifaces: &[String]) -> Result<Ebpf> {
    let mut ebpf = load_pass()?;
    let prog = pass_program(&mut ebpf)?;
    for i in ifaces {
        prog.attach(i, XdpMode::Driver)
            .with_context(|| format!("attaching the pass program to {i}"))?;
    }
    Ok(ebpf)
}

fn load_pass() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(PASS_OBJECT)?;
    load_retrying(pass_program(&mut ebpf)?)?;
    Ok(ebpf)
}

fn pass_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    xdp_program(ebpf, privatelink_common::PASS_PROGRAM_NAME)
}
