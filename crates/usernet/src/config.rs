//! The stack's configuration: plain values, no QAPI. netdevd's `user` driver maps
//! `NetdevUserOptions` onto it with QEMU's checks.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// A host port forwarded into the guest (`hostfwd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    /// Where the host listens (`0.0.0.0` for any IPv4 address, `[::]` for any IPv6 one).
    pub host: std::net::SocketAddr,
    /// Where in the guest connections go, IPv4 or IPv6 whatever the host side's family;
    /// `[::]` stands for the guest's first IPv6 address learnt in the prefix
    /// ([`crate::stack::Stack::forward_guest`]).
    pub guest: std::net::SocketAddr,
    /// The rule as the user wrote it (for messages).
    pub rule: String,
}

/// Where a guest forwarding rule (`guestfwd`) sends the guest's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFwdTarget {
    /// Start this command (argv) for each connection, the connection on its stdin/stdout.
    Command(Vec<String>),
    /// Connect to this host address.
    Addr(std::net::SocketAddr),
}

/// A guest forwarding rule: guest connections to `server` go to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    pub server: std::net::SocketAddrV4,
    pub target: GuestFwdTarget,
    /// The rule as the user wrote it (for messages).
    pub rule: String,
}

/// How the guest's network looks. `Default` is QEMU's: 10.0.2.0/24, gateway 10.0.2.2,
/// DNS 10.0.2.3, leases from 10.0.2.15.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub net: Ipv4Addr,
    pub prefix: u8,
    /// The gateway; also stands for the host's loopback.
    pub host: Ipv4Addr,
    pub dns: Ipv4Addr,
    /// The first of 16 addresses the DHCP server leases.
    pub dhcp_start: Ipv4Addr,
    /// DHCP option 12 (at most 32 bytes are sent, as libslirp).
    pub hostname: Option<String>,
    /// DHCP option 15.
    pub domainname: Option<String>,
    /// DHCP option 119.
    pub dnssearch: Vec<String>,
    /// DHCP option 67 and the BOOTP `file` field.
    pub bootfile: Option<String>,
    /// DHCP option 66.
    pub tftp_server_name: Option<String>,
    /// Isolate the guest: no UDP out but DHCP, no router or DNS offered.
    pub restrict: bool,
    /// Serve IPv4 at all (`ipv4=off` turns it off).
    pub ipv4: bool,
    /// Serve IPv6 at all (`ipv6=off` turns it off).
    pub ipv6: bool,
    /// The guest's IPv6 prefix (QEMU's `ipv6-prefix`, as given: not masked).
    pub ipv6_prefix: Ipv6Addr,
    /// Its length, 1..=126 (QEMU's `ipv6-prefixlen`, 0 meaning 64).
    pub ipv6_prefixlen: u8,
    /// The gateway's IPv6 address; like `host`, it stands for the host's loopback.
    pub ipv6_host: Ipv6Addr,
    /// The IPv6 DNS address.
    pub ipv6_dns: Ipv6Addr,
    /// Resolvers DNS queries to `dns` go to.
    pub dns_upstream: Vec<SocketAddr>,
    /// DHCP lease time, seconds.
    pub lease_secs: u32,
    /// MTU offered (option 26).
    pub mtu: u16,
    /// Host ports forwarded into the guest.
    pub hostfwd: Vec<HostFwd>,
    /// Guest connections forwarded to commands or host addresses.
    pub guestfwd: Vec<GuestFwd>,
    /// Root of the read-only TFTP server on the gateway address (none: no TFTP).
    pub tftp_root: Option<std::path::PathBuf>,
    /// The `smb` server's private directory and the `smb.conf` to put in it: whoever runs
    /// the stack makes the directory when it starts and removes it when it stops.
    pub smb_dir: Option<(std::path::PathBuf, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            net: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
            host: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            hostname: None,
            domainname: None,
            dnssearch: Vec::new(),
            bootfile: None,
            tftp_server_name: None,
            restrict: false,
            ipv4: true,
            ipv6: true,
            ipv6_prefix: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            ipv6_prefixlen: 64,
            ipv6_host: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2),
            ipv6_dns: Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 3),
            dns_upstream: Vec::new(),
            lease_secs: 86400,
            mtu: 1500,
            hostfwd: Vec::new(),
            guestfwd: Vec::new(),
            tftp_root: None,
            smb_dir: None,
        }
    }
}

/// Whether `a` and `b` agree in their first `len` bits (`len` up to 128).
pub fn same_prefix6(a: Ipv6Addr, b: Ipv6Addr, len: u8) -> bool {
    let len = u32::from(len.min(128));
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    (u128::from(a) ^ u128::from(b)) & mask == 0
}

impl Config {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        })
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & u32::from(self.netmask()) == u32::from(self.net)
    }

    /// Whether `a` shares the IPv6 prefix's first `ipv6_prefixlen` bits (libslirp's
    /// `in6_equal_net`).
    pub fn in_prefix6(&self, a: Ipv6Addr) -> bool {
        same_prefix6(self.ipv6_prefix, a, self.ipv6_prefixlen)
    }

    /// The resolvers named in a resolv.conf text (`nameserver` lines, IPv4 and IPv6).
    pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver")).then(|| w.next()).flatten()
            })
            .filter_map(|a| a.split('%').next()?.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_qemus() {
        let c = Config::default();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.contains(c.dhcp_start));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 3, 1)));
    }

    #[test]
    fn resolv_conf() {
        let r = Config::parse_resolv_conf("# x\nnameserver 127.0.0.2\nsearch a\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\n");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], "127.0.0.2:53".parse().unwrap());
    }
}
