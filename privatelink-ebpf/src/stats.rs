//! Per-CPU verdict counters: `PL_STATS[reason] += 1`, the last step of every walk (the
//! entry program and each path program count their verdict). Uses only `maps`.

use privatelink_common::Reason;

use crate::maps::PL_STATS;

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = PL_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}
