//! Frames a guest sends to the user-mode stack: any sequence of frames (ARP, IPv4, UDP,
//! DHCP, DNS, ICMP, TCP with any flags and options) never panics, and what the stack sends
//! back always parses as Ethernet. Frames are cut from the input at 0xFE bytes so one
//! input can drive a whole exchange (e.g. a SYN, then data).
#![no_main]

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netdevd_usernet::stack::FlowId;
use netdevd_usernet::{Config, HostIo, Stack};

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
        Ok(d.len() / 2)
    }
    fn tcp_peek(
        &mut self,
        _id: FlowId,
        skip: usize,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        // 3000 bytes at most past the oldest, then end of stream.
        let n = max.min(3000usize.saturating_sub(skip));
        buf.resize(buf.len() + n, 7);
        Ok(n)
    }
    fn tcp_consume(&mut self, _id: FlowId, _n: usize) {}
    fn tcp_shutdown(&mut self, _id: FlowId) {}
    fn tcp_close(&mut self, _id: FlowId, _abort: bool) {}
    fn tcp_command(&mut self, _id: FlowId, _argv: &[String]) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // TFTP names are fuzzed too, rooted in the temp directory (nothing outside can be read).
    let mut s = Stack::new(Config {
        dns_upstream: vec!["127.0.0.1:53".parse().unwrap()],
        tftp_root: Some(std::env::temp_dir()),
        ..Config::default()
    });
    let mut now = Instant::now();
    let mut h = Host;
    for (i, frame) in data.split(|&b| b == 0xfe).enumerate() {
        s.from_guest(frame, now, &mut h);
        // Let every flow the frames made see host events too.
        for id in 1..4 {
            s.tcp_connected(id, i % 2 == 0, now, &mut h);
            s.tcp_readable(id, i % 3 == 0, now, &mut h);
            s.tcp_writable(id, now, &mut h);
            s.from_host(id, frame, now);
        }
        now += Duration::from_millis(300);
        s.tcp_timers(now, &mut h);
        while let Some(f) = s.pop_frame() {
            assert!(f.len() >= 14);
        }
    }
});
