//! ARP: requests for the stack's addresses (gateway, DNS, guestfwd servers) answered with
//! the gateway MAC; `who_has` asks the guest for its MAC when a frame must go to it before
//! the stack has seen it.

use super::*;

impl Stack {
    pub(super) fn arp(&mut self, p: &[u8]) {
        let Some(a) = Arp::parse(p) else {
            return self.drop_frame(DropReason::BadArp);
        };
        if a.op != Arp::REQUEST || !self.is_ours(a.tpa) {
            return;
        }
        let reply = Arp {
            op: Arp::REPLY,
            sha: GATEWAY_MAC,
            spa: a.tpa,
            tha: a.sha,
            tpa: a.spa,
        };
        self.push(reply.frame(a.sha));
    }

    /// The guest has not sent anything yet, so its MAC is unknown: ask for it (ARP). The
    /// frame that needed it is lost; TCP's retransmission sends it again.
    pub(super) fn who_has(&mut self, ip: Ipv4Addr) {
        self.out.who_has(ip);
    }
}
