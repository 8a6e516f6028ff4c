//! The stack's own UDP services framed for the guest: DHCP replies ([`crate::dhcp`]) and
//! TFTP ([`crate::tftp`]).

use super::*;

impl Stack {
    pub(super) fn dhcp(&mut self, data: &[u8], now: Instant) {
        let Some(r) = self.dhcp.handle(&self.cfg, data, now) else {
            return;
        };
        let (eth, ip) = self.headers_to_guest(r.mac, self.cfg.host, r.dst, PROTO_UDP);
        let f = udp_frame(
            eth,
            ip,
            Udp {
                src_port: 67,
                dst_port: 68,
            },
            &r.payload,
        );
        self.push(f);
    }

    pub(super) fn tftp_out(&mut self, client: SocketAddrV4, payload: &[u8]) {
        let Some(mac) = self.out.guest_mac else {
            return self.who_has(*client.ip());
        };
        let (eth, ip) = self.headers_to_guest(mac, self.cfg.host, *client.ip(), PROTO_UDP);
        let f = udp_frame(
            eth,
            ip,
            Udp {
                src_port: 69,
                dst_port: client.port(),
            },
            payload,
        );
        self.push(f);
    }
}
