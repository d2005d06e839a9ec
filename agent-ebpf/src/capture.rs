//! Capture: the cgroup connect hooks of enrolled pods.
//!
//! A pod's connect() to a destination outside it is rewritten to the node agent's outbound
//! listener, and the original destination is remembered by socket cookie (sockops moves it to
//! the connection's 4-tuple once established, for the agent to look up on accept). No
//! iptables rule, no conntrack entry: the socket simply connects elsewhere.

use aya_ebpf::{
    EbpfContext, bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    maps::lpm_trie::Key, programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use weft_ebpf_common::{
    OrigDst, POD_DIRECT_OK, POD_ENROLLED, SETTING_DIRECT_LOCAL, Settings, counter,
};

use crate::maps::{EXCL_CIDRS, EXCL_PORTS, ORIG_BY_COOKIE, count, pod_flags, settings, v4_mapped};

/// The verdict a connect hook returns to let the call go on (0 would fail it with EPERM).
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;

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
    if settings.agent_ip == 0 || loopback || ip == settings.agent_ip {
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
    Route::Agent(OrigDst { ip, port, _pad: 0 })
}

/// Records the original destination and returns true if the socket should be redirected.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    // SAFETY: the helper takes this program type's context as is.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Without the record the agent could not forward the connection, so leave it direct.
    match ORIG_BY_COOKIE.insert(&cookie, orig, 0) {
        Ok(()) => true,
        Err(err) => {
            warn!(
                ctx,
                "capture record failed ({}); connection left direct", err
            );
            false
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands a valid context; these fields are readable in connect4.
    let (ty, ip, port) = unsafe { ((*sa).type_, (*sa).user_ip4, (*sa).user_port) };
    if ty != SOCK_STREAM {
        return ALLOW;
    }
    let Some(settings) = settings() else {
        return ALLOW;
    };
    count(counter::CONNECT_SEEN, 1);
    // user_port holds the port in network order in its low 16 bits.
    if let Route::Agent(orig) = route(settings, ip, u16::from_be(port as u16))
        && remember(&ctx, &orig)
    {
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
/// Native IPv6 is not captured yet: the lab and the agent are IPv4-only.
#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands a valid context; these fields are readable in connect6.
    let (ty, ip6, port) = unsafe { ((*sa).type_, (*sa).user_ip6, (*sa).user_port) };
    if ty != SOCK_STREAM {
        return ALLOW;
    }
    let (Some(settings), Some(ip)) = (settings(), v4_mapped(ip6)) else {
        return ALLOW;
    };
    count(counter::CONNECT_SEEN, 1);
    if let Route::Agent(orig) = route(settings, ip, u16::from_be(port as u16))
        && remember(&ctx, &orig)
    {
        // SAFETY: connect6 may write user_ip6 (word by word) and user_port.
        unsafe {
            (*sa).user_ip6[3] = settings.agent_ip;
            (*sa).user_port = u32::from((settings.outbound_port as u16).to_be());
        }
        count(counter::REDIRECTED, 1);
    }
    ALLOW
}
