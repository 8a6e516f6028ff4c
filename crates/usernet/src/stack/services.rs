//! The stack's own UDP services framed for the guest: DHCP replies ([`crate::dhcp`]) and
//! TFTP ([`crate::tftp`]).

use super::*;

impl Stack {
    pub(super) fn dhcp(&mut self, data: &[u8], now: Instant) {
        let Some(r) = self.dhcp.handle(&self.cfg, data, now) else {
            return;
        };
        let id = self.next_ip_id();
        let ip = Ipv4 {
            src: self.cfg.host,
            dst: r.dst,
            proto: PROTO_UDP,
            ttl: 64,
            id,
        };
        let f = udp_frame(
            Eth {
                dst: r.mac,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
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
        let Some(mac) = self.guest_mac else {
            return self.who_has(*client.ip());
        };
        let id = self.next_ip_id();
        let ip = Ipv4 {
            src: self.cfg.host,
            dst: *client.ip(),
            proto: PROTO_UDP,
            ttl: 64,
            id,
        };
        let f = udp_frame(
            Eth {
                dst: mac,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
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
