//! Ending TCP connections that no agent task holds: the same-node connections the kernel
//! carries directly between two pods (spliced by sk_msg, or plain), which were made before
//! a policy governed their destination. The kernel's sock_diag netlink interface lists a
//! network namespace's sockets (`SOCK_DIAG_BY_FAMILY`) and aborts one (`SOCK_DESTROY`,
//! Linux 4.5+ with `CONFIG_INET_DIAG_DESTROY`, as `ss -K` does): the socket's owner sees
//! ECONNABORTED and the peer a reset. Messages as in the kernel's
//! `include/uapi/linux/inet_diag.h`, built with `netlink-packet-sock-diag`.
//!
//! A BPF socket iterator with `bpf_sock_destroy` (Linux 6.5+) would do the same from inside
//! the kernel; sock_diag needs no further program and works on older kernels too.

use std::fs::File;
use std::io;
use std::net::SocketAddr;

use crate::redirect::netns::in_netns;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// One TCP socket of a namespace, established or listening, as it sees itself.
#[derive(Debug, Clone)]
pub struct Established {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A listening socket (its remote address is unspecified).
    pub listening: bool,
    /// The socket's inode: `socket:[inode]` among a process's file descriptors.
    pub inode: u32,
    id: SocketId,
}

fn socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

fn send<T>(socket: &Socket, mut message: NetlinkMessage<T>) -> io::Result<()>
where
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
{
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    Ok(())
}

fn request(socket_id: SocketId, states: StateFlags) -> InetRequest {
    InetRequest {
        family: AF_INET,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    }
}

/// The established and listening IPv4 TCP sockets in `netns`.
pub fn established(netns: &File) -> io::Result<Vec<Established>> {
    in_netns(netns, || {
        let socket = socket()?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        send(
            &socket,
            NetlinkMessage::new(
                header,
                SockDiagMessage::InetRequest(request(
                    SocketId::new_v4(),
                    StateFlags::ESTABLISHED | StateFlags::LISTEN,
                ))
                .into(),
            ),
        )?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let size = socket.recv(&mut &mut buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..size])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        let id = &response.header.socket_id;
                        found.push(Established {
                            local: SocketAddr::new(id.source_address, id.source_port),
                            remote: SocketAddr::new(id.destination_address, id.destination_port),
                            // TCP_LISTEN in the kernel's tcp_states.h.
                            listening: response.header.state == 10,
                            inode: response.header.inode,
                            id: id.clone(),
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(err) => {
                        return Err(io::Error::other(format!("sock_diag dump: {err:?}")));
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    })
}

/// The inodes of the sockets this process holds (`/proc/self/fd`), to tell its own sockets
/// in another namespace from those of the processes there.
pub fn own_socket_inodes() -> std::collections::HashSet<u32> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Default::default();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Aborts each of `sockets` in `netns`; returns how many the kernel destroyed (a socket
/// that closed in the meantime is not an error).
pub fn destroy(netns: &File, sockets: &[Established]) -> io::Result<usize> {
    in_netns(netns, || {
        let socket = socket()?;
        let mut destroyed = 0;
        let mut buf = vec![0u8; 8192];
        for target in sockets {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let message = SockDiagDestroy::new(SockDiagMessage::InetRequest(request(
                target.id.clone(),
                StateFlags::ESTABLISHED,
            )));
            send(&socket, NetlinkMessage::new(header, message.into()))?;
            let size = socket.recv(&mut &mut buf[..], 0)?;
            match <NetlinkMessage<SockDiagDestroy>>::deserialize(&buf[..size]) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::Error(err),
                    ..
                }) => match err.code {
                    None => destroyed += 1,
                    // ENOENT: it is gone already.
                    Some(code) if code.get() == -libc::ENOENT => {}
                    Some(code) => {
                        return Err(io::Error::from_raw_os_error(-code.get()));
                    }
                },
                Ok(_) => destroyed += 1,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        Ok(destroyed)
    })
}
