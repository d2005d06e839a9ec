//! Capture: the cgroup connect hooks of enrolled pods.
//!
//! A pod's connect() to a destination outside it is rewritten to the node agent's outbound
//! listener, and the original destination is remembered on the socket itself (socket storage;
//! sockops moves it to the connection's 4-tuple once established, for the agent to look up on
//! accept). No
//! iptables rule, no conntrack entry: the socket simply connects elsewhere.

use aya_ebpf::{
    bindings::bpf_sock_addr, macros::cgroup_sock_addr, maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use weft_ebpf_common::{
    OrigDst, POD_DIRECT_OK, POD_ENROLLED, SETTING_DIRECT_LOCAL, Settings, counter,
};

use crate::maps::{EXCL_CIDRS, EXCL_PORTS, ORIG_BY_SOCKET, count, pod_flags, settings, v4_mapped};

/// The verdicts of a connect hook: let the call go on, or fail it with EPERM.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
/// Only TCP is captured: an SCTP stream socket (also SOCK_STREAM) must not be rewritten to
/// the agent's TCP listener.
const IPPROTO_TCP: u32 = 6;

/// Where a connection should go.
enum Route {
    /// Leave it as the application asked.
    Direct,
    /// Send it to the agent, remembering where it was going.
    Agent(OrigDst),
}

/// Decides for an IPv4 destination (address in network order, port in host order).
#[inline(always)]
fn route(settings: &Settings, ip: u32, port: u16) -> Route {
    let loopback = (ip & 0xff) == 127; // first octet, network order on a little-endian host
    // 0.0.0.0 means this host: inside the pod, the pod itself. Sent to the agent, it would
    // become a connection to the node.
    let this_host = ip == 0;
    if settings.agent_ip == 0 || loopback || this_host || ip == settings.agent_ip {
        count(counter::BYPASSED, 1);
        return Route::Direct;
    }
    // SAFETY: read-only lookups of plain values written whole by the agent.
    if unsafe { EXCL_PORTS.get(&(port as u32)) }.is_some()
        || EXCL_CIDRS.get(Key::new(32, ip)).is_some()
    {
        count(counter::BYPASSED, 1);
        return Route::Direct;
    }
    if settings.flags & SETTING_DIRECT_LOCAL != 0
        && let Some(flags) = pod_flags(ip)
        && flags & (POD_ENROLLED | POD_DIRECT_OK) == (POD_ENROLLED | POD_DIRECT_OK)
    {
        count(counter::DIRECT_LOCAL, 1);
        return Route::Direct;
    }
    Route::Agent(OrigDst {
        ip,
        port,
        accepted: 0,
    })
}

/// Records the original destination on the socket; false if it could not be recorded.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    let mut initial = *orig;
    // SAFETY: the helper reads the context's own socket, which the kernel guarantees here.
    let record = unsafe { ORIG_BY_SOCKET.get_or_insert_ptr_mut(ctx, Some(&mut initial)) };
    if record.is_null() {
        warn!(ctx, "capture record failed; connect refused");
        return false;
    }
    // A socket that connects again (after a failed attempt) already has a record: overwrite it.
    // SAFETY: a non-null pointer from the helper is this socket's storage, sized for OrigDst.
    unsafe { *record = *orig };
    true
}

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands a valid context; these fields are readable in connect4.
    let (ty, protocol, ip, port) =
        unsafe { ((*sa).type_, (*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if ty != SOCK_STREAM || protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let Some(settings) = settings() else {
        return ALLOW;
    };
    count(counter::CONNECT_SEEN, 1);
    // user_port holds the port in network order in its low 16 bits.
    if let Route::Agent(orig) = route(settings, ip, u16::from_be(port as u16)) {
        // Without the record the agent could not forward the connection, and left direct
        // it would escape policy: fail it.
        if !remember(&ctx, &orig) {
            count(counter::CONNECT_REFUSED, 1);
            return REFUSE;
        }
        // SAFETY: connect4 may write user_ip4 and user_port (4-byte writes).
        unsafe {
            (*sa).user_ip4 = settings.agent_ip;
            (*sa).user_port = u32::from((settings.outbound_port as u16).to_be());
        }
        count(counter::REDIRECTED, 1);
    }
    ALLOW
}

/// IPv6 sockets that connect to IPv4 peers (`::ffff:a.b.c.d`) are captured like connect4.
/// Native IPv6 is not captured (the agent is IPv4-only), so it fails closed: a pod's TCP
/// connect() to a native IPv6 address other than its own (`::1`, `::`) is refused, where
/// it used to leave the mesh uncaptured.
#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands a valid context; these fields are readable in connect6.
    let (ty, protocol, ip6, port) =
        unsafe { ((*sa).type_, (*sa).protocol, (*sa).user_ip6, (*sa).user_port) };
    if ty != SOCK_STREAM || protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let Some(settings) = settings() else {
        return ALLOW;
    };
    let Some(ip) = v4_mapped(ip6) else {
        // `::1` reads as [0, 0, 0, 0x01000000] (network order on a little-endian host); `::`
        // (this host) is the pod itself too.
        let local = ip6 == [0, 0, 0, 0x0100_0000] || ip6 == [0; 4];
        if local {
            return ALLOW;
        }
        count(counter::CONNECT_REFUSED, 1);
        return REFUSE;
    };
    count(counter::CONNECT_SEEN, 1);
    if let Route::Agent(orig) = route(settings, ip, u16::from_be(port as u16)) {
        if !remember(&ctx, &orig) {
            count(counter::CONNECT_REFUSED, 1);
            return REFUSE;
        }
        // SAFETY: connect6 may write user_ip6 (word by word) and user_port.
        unsafe {
            (*sa).user_ip6[3] = settings.agent_ip;
            (*sa).user_port = u32::from((settings.outbound_port as u16).to_be());
        }
        count(counter::REDIRECTED, 1);
    }
    ALLOW
}
