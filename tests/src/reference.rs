//! The lab's own XDP programs (tests/lab-ebpf, bin `privatelink-pass`, built by
//! tests/build.rs), beside privatelink's data path but never part of it:
//! - `privatelink_pass` returns every frame to the kernel: attached to the far end of a
//!   veth pair (`pl-xdp-pass`), since the kernel delivers XDP-redirected frames into a veth
//!   only when its peer runs an XDP program;
//! - `privatelink_tx`, `privatelink_redirect`, `privatelink_redirect_map`,
//!   `privatelink_redirect_lookup` (and `_pieces`), `privatelink_first_floor`,
//!   `privatelink_nat_floor`, `privatelink_count`, `privatelink_gen` and
//!   `privatelink_replay`: the benchmarks' baselines and floors, sink, generator and
//!   replayer.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode},
};

/// Buckets per piece of `PL_BASE_PIECES` (tests/lab-ebpf's `PIECE_BUCKETS`).
pub const PIECE_BUCKETS: u32 = 88;

/// The lab's XDP object.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/privatelink-pass"));

/// The program that only returns XDP_PASS (for veth peers in labs).
pub const PASS_PROGRAM: &str = "privatelink_pass";

/// The lab's object, loaded on first use; its programs are loaded on first use too.
#[derive(Default)]
pub struct Reference {
    ebpf: Option<Ebpf>,
    /// `PL_BASE_TABLE`'s buckets (`privatelink_redirect_lookup`), if not 1.
    table_buckets: Option<u32>,
    /// The cycle whose order `PL_REPLAY_ORDER` holds (`set_replay_order`), 0 for none.
    replay_order: u32,
}

impl Reference {
    /// The object with `PL_BASE_TABLE` made `buckets` long and its count set: for
    /// `privatelink_redirect_lookup` and `privatelink_first_floor`.
    pub fn with_table(buckets: u32) -> Result<Self> {
        anyhow::ensure!(buckets > 0, "a table of no buckets");
        let mut r = Reference {
            ebpf: None,
            table_buckets: Some(buckets),
            replay_order: 0,
        };
        let mut count: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(r.object()?.map_mut("PL_BASE_BUCKETS").context("no map")?)?;
        count.set(0, buckets, 0)?;
        Ok(r)
    }

    /// Fills `PL_BASE_PIECES` with `buckets` buckets (at least) in pieces of
    /// `PIECE_BUCKETS` (`privatelink_redirect_lookup_pieces`); `PL_BASE_BUCKETS` must say
    /// `buckets` (`with_table`).
    pub fn with_pieces(&mut self, buckets: u32) -> Result<()> {
        let pieces = buckets.div_ceil(PIECE_BUCKETS);
        let obj = self.object()?;
        let mut outer: aya::maps::ArrayOfMaps<_, aya::maps::Array<aya::maps::MapData, [u64; 44]>> =
            aya::maps::ArrayOfMaps::try_from(obj.map_mut("PL_BASE_PIECES").context("no map")?)?;
        anyhow::ensure!(
            pieces <= outer.len(),
            "{pieces} pieces, room for {}",
            outer.len()
        );
        for i in 0..pieces {
            let piece = aya::maps::Array::<aya::maps::MapData, [u64; 44]>::create(PIECE_BUCKETS, 0)
                .context("making a piece")?;
            outer.set(i, &piece, 0).context("setting a piece")?;
        }
        Ok(())
    }

    /// One of the reference programs (the module's list), loaded on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let p = xdp_program(self.object()?, name)?;
        if p.fd().is_err() {
            load_retrying(p)?;
        }
        Ok(p)
    }

    /// Points `privatelink_redirect` (and `privatelink_redirect_lookup`) at `ifindex`
    /// (`PL_BASE_TARGET`).
    pub fn set_redirect_target(&mut self, ifindex: u32) -> Result<()> {
        let obj = self.object()?;
        let mut m: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(obj.map_mut("PL_BASE_TARGET").context("no map")?)?;
        m.set(0, ifindex, 0)?;
        Ok(())
    }

    /// Makes `privatelink_replay` visit a cycle of `n` values in a scrambled order: a
    /// permutation of 1..=n drawn from a generator seeded by `n` (the same for every call
    /// with `n`; written once while it stays). Scrambled, because the cold rows' flows
    /// differ in their source port only, and a key hash linear in the port puts ports in
    /// counting order a fixed stride of buckets apart (a stride prefetcher follows that).
    pub fn set_replay_order(&mut self, n: u32) -> Result<()> {
        anyhow::ensure!(
            (1..=u32::from(u16::MAX)).contains(&n),
            "a replay cycle of {n} values: 1 to 65 535"
        );
        if self.replay_order == n {
            return Ok(());
        }
        // Known for no cycle until every value is written (a write that fails partway
        // leaves neither order).
        self.replay_order = 0;
        let obj = self.object()?;
        let mut m: aya::maps::Array<_, u16> =
            aya::maps::Array::try_from(obj.map_mut("PL_REPLAY_ORDER").context("no map")?)?;
        for (i, v) in scrambled(n).into_iter().enumerate() {
            m.set(i as u32, v, 0)?;
        }
        self.replay_order = n;
        Ok(())
    }

    /// The object (its maps configure the reference programs).
    pub fn object(&mut self) -> Result<&mut Ebpf> {
        if self.ebpf.is_none() {
            let mut loader = EbpfLoader::new();
            if let Some(n) = self.table_buckets {
                loader.map_max_entries("PL_BASE_TABLE", n);
            }
            self.ebpf = Some(loader.load(OBJECT)?);
        }
        Ok(self.ebpf.as_mut().expect("just set"))
    }
}

/// 1..=n in a scrambled order (Fisher-Yates, splitmix64 seeded by `n`).
pub fn scrambled(n: u32) -> Vec<u16> {
    let mut state = u64::from(n);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        privatelink_common::hash::mix64(state)
    };
    let mut v: Vec<u16> = (1..=n).map(|i| i as u16).collect();
    for i in (1..v.len()).rev() {
        v.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    v
}

/// Attaches the pass-through program to `ifaces` and keeps it there while the returned
/// object lives.
pub fn attach_pass(ifaces: &[String]) -> Result<Reference> {
    let mut r = Reference::default();
    let prog = r.program(PASS_PROGRAM)?;
    for i in ifaces {
        prog.attach(i, XdpMode::Driver)
            .with_context(|| format!("attaching the pass program to {i}"))?;
    }
    Ok(r)
}

/// The XDP program `name` of `ebpf`.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?
        .try_into()?)
}

/// Loads a program, trying again (up to 5 times, as libbpf does) when the kernel answers
/// EAGAIN: the verifier gives up when a signal is pending for the process (as
/// privatelink-user's dataplane does for its own programs).
fn load_retrying(p: &mut Xdp) -> Result<(), ProgramError> {
    let mut tries = 0;
    loop {
        match p.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}
