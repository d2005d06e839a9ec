//! The agent's dial address: a link-local IPv4 address on the node's loopback that the agent
//! dials the node's pods from. Pods' gates trust it (with the agent's socket mark) in place
//! of the node's own address, which NodePort traffic and hostNetwork pods share.
//!
//! Added with an `RTM_NEWADDR` request over rtnetlink (`rtnetlink(7)`, messages as in the
//! kernel's `include/uapi/linux/if_addr.h`), built with `netlink-packet-route`. An address
//! that is already there (a previous agent's) is kept: adding it again is not an error.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_ROUTE};

/// The loopback's interface index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Makes `ip/32` an address of this namespace's loopback (host scope: the node never offers
/// it as a source for anything but the agent's explicit binds).
pub fn ensure(ip: Ipv4Addr) -> io::Result<()> {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = 32;
    message.header.scope = AddressScope::Host;
    message.header.index = LOOPBACK_IFINDEX;
    message
        .attributes
        .push(AddressAttribute::Local(IpAddr::V4(ip)));
    message
        .attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut request = NetlinkMessage::new(header, RouteNetlinkMessage::NewAddress(message).into());
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut answer = vec![0u8; 4096];
    let size = socket.recv(&mut &mut answer[..], 0)?;
    match <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&answer[..size]) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::Error(err),
            ..
        }) => match err.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
    }
}
