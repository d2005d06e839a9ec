//! Weft's eBPF programs: the kernel half of the agent.
//!
//! Follow a connection: `capture` (cgroup connect4/connect6) decides where it goes, `splice`
//! (sockops + sk_msg) moves bytes between sockets on the same node without the TCP/IP stack,
//! `enforce` (tc on each pod's veth) is the inbound gate, and `lookup` (sk_lookup in each pod's
//! network namespace) hands plaintext from outside the mesh to the agent. `maps` holds their
//! shared state, whose layout is defined in `weft-ebpf-common`.
#![no_std]
#![no_main]

mod capture;
mod enforce;
mod lookup;
mod maps;
mod splice;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves there is no path here; the loop only satisfies the type.
    loop {}
}

/// The license the kernel checks before it allows GPL-only helpers (the sockmap ones are).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
