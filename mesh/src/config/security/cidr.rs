//! IP blocks as AuthorizationPolicy writes them (`ipBlocks`, `remoteIpBlocks`, and the
//! values of the `source.ip`-like conditions): a CIDR or a bare address, IPv4 or IPv6.
//!
//! Parsed once, at configuration time, so that matching a connection is two masks and a
//! compare. The CIDR notation is RFC 4632 (IPv4) and RFC 4291 section 2.3 (IPv6).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network: an address and a prefix length. A bare address is a /32 or /128.
///
/// Host bits after the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`), which is what
/// matching by prefix means anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Text that is neither an IP address nor `address/prefix-length`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}")]
pub struct InvalidCidr(pub String);

impl Cidr {
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<Self, InvalidCidr> {
        let max = max_len(address);
        if prefix_len > max {
            return Err(InvalidCidr(format!("{address}/{prefix_len}")));
        }
        Ok(Cidr {
            network: mask(address, prefix_len),
            prefix_len,
        })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the block. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a
    /// dual-stack socket reports an IPv4 peer) counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let same_family = ip.is_ipv4() == self.network.is_ipv4();
        same_family && mask(ip, self.prefix_len) == self.network
    }
}

fn max_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & kept))
        }
    }
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCidr(text.to_string());
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => {
                // Digits only: `u8::from_str` would also take `+8`.
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                let len = len.parse::<u8>().map_err(|_| invalid())?;
                (address, Some(len))
            }
            None => (text, None),
        };
        let address = address.parse::<IpAddr>().map_err(|_| invalid())?;
        let prefix_len = prefix_len.unwrap_or_else(|| max_len(address));
        Cidr::new(address, prefix_len).map_err(|_| invalid())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_bare_addresses() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::1", "fd00::1/128"),
            ("fd00:1:2::/48", "fd00:1:2::/48"),
            ("fd00:1:2:3::/48", "fd00:1:2::/48"),
            ("::/0", "::/0"),
        ];
        for (text, want) in cases {
            let cidr: Cidr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(cidr.to_string(), want, "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_block() {
        for text in [
            "",
            "10.0.0/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "fd00::/129",
            "host",
            "10.0.0.0/8/8",
            " 10.0.0.1",
        ] {
            assert_eq!(
                text.parse::<Cidr>(),
                Err(InvalidCidr(text.into())),
                "{text:?}"
            );
        }
        assert_eq!(
            "10.0.0/8".parse::<Cidr>().unwrap_err().to_string(),
            "invalid CIDR \"10.0.0/8\""
        );
    }

    #[test]
    fn contains_by_prefix_and_family() {
        let cases = [
            ("10.0.0.0/8", "10.255.0.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "192.168.1.1", true),
            ("0.0.0.0/0", "fd00::1", false),
            ("::/0", "10.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("fd00::/16", "fd00:abcd::1", true),
            ("fd00::/16", "fd01::1", false),
            ("fd00::1", "fd00::1", true),
        ];
        for (block, addr, want) in cases {
            let cidr: Cidr = block.parse().unwrap();
            assert_eq!(cidr.contains(ip(addr)), want, "{block} contains {addr}");
        }
    }
}
