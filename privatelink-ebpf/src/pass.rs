//! `privatelink-pass`: an XDP program with no maps that returns every frame to the kernel.
//! Attached to the far end of a veth pair (labs, tests) because the kernel delivers
//! XDP-redirected frames into a veth only when its peer runs an XDP program; also the
//! baseline of the benchmarks.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn privatelink_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
