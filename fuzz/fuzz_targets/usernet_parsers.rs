//! Each parser that sees guest bytes, reached directly rather than through checksums the
//! fuzzer would rarely get right: the Ethernet/ARP/IPv4/UDP/TCP views, the DHCP server and
//! the TFTP server on any payload, and the stack on well-formed UDP frames (to the DHCP,
//! DNS and TFTP ports) and offloaded frames built around the input. (DNS queries are not
//! parsed: they are relayed as opaque datagrams.) Nothing may panic.
#![no_main]

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use netdevd_usernet::dhcp::DhcpServer;
use netdevd_usernet::stack::FlowId;
use netdevd_usernet::tftp::TftpServer;
use netdevd_usernet::{Config, HostIo, Stack};
use netdevd_wire::packet::{udp_frame, Arp, Eth, Ipv4, Tcp, Udp, ETHERTYPE_IPV4, PROTO_UDP};
use netdevd_wire::VirtioNetHdr;

struct Host;

impl HostIo for Host {
    fn udp_open(&mut self, _id: FlowId, _t: SocketAddr) -> io::Result<()> {
        Ok(())
    }
    fn udp_send(&mut self, _id: FlowId, _d: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn udp_close(&mut self, _id: FlowId) {}
    fn icmp_open(&mut self, _id: FlowId, _t: std::net::IpAddr) -> io::Result<()> {
        Ok(())
    }
    fn tcp_connect(&mut self, _id: FlowId, t: SocketAddr) -> io::Result<bool> {
        // Sometimes connected at once, as to a loopback address.
        Ok(t.port() % 2 == 0)
    }
    fn tcp_send(&mut self, _id: FlowId, d: &[u8]) -> io::Result<usize> {
        Ok(d.len())
    }
    fn tcp_peek(
        &mut self,
        _id: FlowId,
        _skip: usize,
        _buf: &mut Vec<u8>,
        _max: usize,
    ) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn tcp_consume(&mut self, _id: FlowId, _n: usize) {}
    fn tcp_shutdown(&mut self, _id: FlowId) {}
    fn tcp_close(&mut self, _id: FlowId, _abort: bool) {}
    fn tcp_command(&mut self, _id: FlowId, _argv: &[String]) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    // The views.
    if let Some((_, rest)) = Eth::parse(data) {
        let _ = Arp::parse(rest);
        if let Some((ip, p)) = Ipv4::parse(rest) {
            let _ = Udp::parse_with(&ip, p, false);
            let _ = Tcp::parse_with(&ip, p, false);
        }
    }
    let ip = Ipv4 {
        src: Ipv4Addr::new(10, 0, 2, 15),
        dst: Ipv4Addr::new(10, 0, 2, 2),
        proto: PROTO_UDP,
        ttl: 64,
        id: 1,
    };
    let _ = Tcp::parse_with(&ip, data, false);
    // The servers, on the payload as it is.
    let cfg = Config {
        dns_upstream: vec!["127.0.0.1:53".parse().unwrap()],
        tftp_root: Some(std::env::temp_dir()),
        ..Config::default()
    };
    let _ = DhcpServer::default().handle(&cfg, data, now);
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 1234);
    let _ = TftpServer::new(std::env::temp_dir()).handle(client, data, now);
    // The stack, on checksummed UDP frames to each service, then offloaded frames.
    let mut s = Stack::new(cfg);
    let eth = Eth {
        dst: [0xff; 6],
        src: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        ethertype: ETHERTYPE_IPV4,
    };
    for (dst, port) in [
        (Ipv4Addr::new(255, 255, 255, 255), 67),
        (Ipv4Addr::new(10, 0, 2, 3), 53),
        (Ipv4Addr::new(10, 0, 2, 2), 69),
    ] {
        let f = udp_frame(
            eth,
            Ipv4 { dst, ..ip },
            Udp {
                src_port: 68,
                dst_port: port,
            },
            data,
        );
        s.from_guest(&f, now, &mut Host);
    }
    if data.len() >= VirtioNetHdr::LEN {
        if let Some(hdr) = VirtioNetHdr::parse(&data[..VirtioNetHdr::LEN]) {
            s.from_guest_offloaded(&data[VirtioNetHdr::LEN..], &hdr, now, &mut Host);
        }
    }
    while s.pop_frame().is_some() {}
});
