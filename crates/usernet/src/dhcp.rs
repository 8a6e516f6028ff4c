//! The DHCP server (RFC 2131, options RFC 2132, domain search RFC 3397), addressed as
//! libslirp's `bootp.c`: 16 addresses from `dhcp_start`, leased by client MAC (a MAC keeps
//! its address), but no guest can starve it (see [`DhcpServer`]); the server
//! identifier and router are the gateway address; DNS is the DNS address; `restrict` leaves
//! router and DNS out.
//!
//! Sans-IO: [`DhcpServer::handle`] takes a request's UDP payload and returns the reply's.
//! Plain BOOTP requests (no option 53) and malformed messages are dropped.
//!
//! Requests are read by our own checked parser ([`Request::parse`]); `dhcproto` only
//! encodes replies we build (its decoder asserts on some malformed options, and guest
//! bytes must never reach an assertion).

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Encodable, Name};

use crate::config::Config;

/// Addresses in the pool, as libslirp's NB_BOOTP_CLIENTS.
pub const POOL: usize = 16;

/// How long an offer is remembered. An offer binds nothing: it only says which slot a
/// REQUEST from that client may take, and lapses after this.
pub const OFFER_SECS: u64 = 10;

/// A bound lease.
#[derive(Debug, Clone, Copy)]
struct Lease {
    mac: [u8; 6],
    until: Instant,
    /// When the client was last heard from (its REQUEST, or any frame, see
    /// [`DhcpServer::seen`]).
    last_seen: Instant,
    /// The client sent something after its ACK: a guest that uses its address, not a MAC
    /// that asked once and went away.
    confirmed: bool,
}

/// An address offered to a client that has not asked for it yet.
#[derive(Debug, Clone, Copy)]
struct Offer {
    mac: [u8; 6],
    until: Instant,
}

/// The server's leases, slot `i` for address `dhcp_start + i`.
///
/// Starvation: an OFFER reserves nothing, so a guest sending DISCOVERs from random MACs
/// takes no address. When the pool is full, a new client is offered the slot worth least:
/// an expired lease, then a lease never confirmed by traffic (oldest first), then the
/// confirmed lease whose client has been silent longest. The old lease goes only when the
/// new client REQUESTs the offered address, so a guest that uses its address keeps it
/// through any flood of DISCOVERs and REQUESTs from MACs that send nothing else.
#[derive(Debug, Default)]
pub struct DhcpServer {
    leases: [Option<Lease>; POOL],
    offers: [Option<Offer>; POOL],
}

/// What the server reads from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: [u8; 6],
    /// Option 53.
    pub kind: u8,
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
}

const MAGIC: [u8; 4] = [99, 130, 83, 99];

impl Request {
    /// Parse a BOOTREQUEST over Ethernet (htype 1, hlen 6) carrying option 53. Every read
    /// is checked; anything else is `None`.
    pub fn parse(p: &[u8]) -> Option<Request> {
        let h = p.get(..240)?;
        if h[0] != 1 || h[1] != 1 || h[2] != 6 || h[236..240] != MAGIC {
            return None;
        }
        let ip = |o: usize| Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&h[28..34]);
        let mut kind = None;
        let mut requested = None;
        let mut opts = &p[240..];
        while let Some((&code, rest)) = opts.split_first() {
            match code {
                0 => {
                    opts = rest;
                    continue;
                }
                255 => break,
                _ => {}
            }
            let (&len, rest) = rest.split_first()?;
            let val = rest.get(..len as usize)?;
            match (code, len) {
                (53, 1) => kind = Some(val[0]),
                (50, 4) => requested = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
                _ => {}
            }
            opts = &rest[len as usize..];
        }
        Some(Request {
            xid: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            flags: u16::from_be_bytes([h[10], h[11]]),
            ciaddr: ip(12),
            giaddr: ip(24),
            mac,
            kind: kind?,
            requested,
        })
    }
}

/// A reply to send: UDP payload from server port 67 to client port 68.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub payload: Vec<u8>,
    /// The client's hardware address (Ethernet destination).
    pub mac: [u8; 6],
    /// Where the IP packet goes (broadcast, as libslirp sends).
    pub dst: Ipv4Addr,
}

impl DhcpServer {
    fn addr(cfg: &Config, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(cfg.dhcp_start).wrapping_add(i as u32))
    }

    fn index(cfg: &Config, a: Ipv4Addr) -> Option<usize> {
        let i = u32::from(a).wrapping_sub(u32::from(cfg.dhcp_start)) as usize;
        (i < POOL).then_some(i)
    }

    /// The address leased to `mac`, if any.
    pub fn lease_of(&self, cfg: &Config, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.slot_of(mac).map(|i| Self::addr(cfg, i))
    }

    fn slot_of(&self, mac: [u8; 6]) -> Option<usize> {
        self.leases
            .iter()
            .position(|l| l.is_some_and(|l| l.mac == mac))
    }

    /// Bound leases that have not expired.
    pub fn bound(&self, now: Instant) -> usize {
        self.leases
            .iter()
            .filter(|l| l.is_some_and(|l| l.until > now))
            .count()
    }

    /// A frame from `mac` reached the stack: its lease, if it has one, is in use.
    pub fn seen(&mut self, mac: [u8; 6], now: Instant) {
        if let Some(l) = self.leases.iter_mut().flatten().find(|l| l.mac == mac) {
            l.last_seen = now;
            l.confirmed = true;
        }
    }

    /// The slot to offer a client that has none: a free one if any, else the one worth
    /// least (see [`DhcpServer`]). Slots with a live offer to another client come last
    /// among equals.
    fn pick_slot(&self, now: Instant) -> usize {
        let worth = |i: usize| {
            let offered = self.offers[i].is_some_and(|o| o.until > now);
            match self.leases[i] {
                None => (0, offered, now),
                Some(l) if l.until <= now => (0, offered, l.until),
                Some(l) if !l.confirmed => (1, offered, l.last_seen),
                Some(l) => (2, offered, l.last_seen),
            }
        };
        (0..POOL).min_by_key(|&i| worth(i)).unwrap_or(0)
    }

    fn take(&mut self, cfg: &Config, i: usize, mac: [u8; 6], now: Instant) -> Ipv4Addr {
        self.release(mac);
        self.leases[i] = Some(Lease {
            mac,
            until: now + Duration::from_secs(cfg.lease_secs as u64),
            last_seen: now,
            confirmed: false,
        });
        self.offers[i] = None;
        Self::addr(cfg, i)
    }

    /// Whether `mac` may take slot `i` now: it is free, expired, already `mac`'s, or was
    /// offered to `mac` (the lease there is the one the offer chose to recycle).
    fn may_take(&self, i: usize, mac: [u8; 6], now: Instant) -> bool {
        self.leases[i].is_none_or(|l| l.mac == mac || l.until <= now)
            || self.offers[i].is_some_and(|o| o.mac == mac && o.until > now)
    }

    fn release(&mut self, mac: [u8; 6]) {
        for l in self.leases.iter_mut() {
            if l.is_some_and(|l| l.mac == mac) {
                *l = None;
            }
        }
    }

    /// Answer one request.
    pub fn handle(&mut self, cfg: &Config, payload: &[u8], now: Instant) -> Option<Reply> {
        let req = Request::parse(payload)?;
        let mac = req.mac;
        let requested = req
            .requested
            .or(Some(req.ciaddr).filter(|a| !a.is_unspecified()));
        let (kind, yiaddr) = match MessageType::from(req.kind) {
            MessageType::Discover => {
                let slot = self.slot_of(mac).unwrap_or_else(|| self.pick_slot(now));
                for o in self.offers.iter_mut() {
                    if o.is_some_and(|o| o.mac == mac || o.until <= now) {
                        *o = None;
                    }
                }
                self.offers[slot] = Some(Offer {
                    mac,
                    until: now + Duration::from_secs(OFFER_SECS),
                });
                (MessageType::Offer, Self::addr(cfg, slot))
            }
            MessageType::Request => {
                let current = self.lease_of(cfg, mac);
                let wanted = requested.or(current);
                let ok = match (wanted, current) {
                    (Some(w), Some(c)) if w == c => Some(Self::index(cfg, c)),
                    (Some(w), _) => Self::index(cfg, w)
                        .filter(|&i| self.may_take(i, mac, now))
                        .map(Some),
                    (None, _) => None,
                };
                match ok.flatten() {
                    Some(i) => (MessageType::Ack, self.take(cfg, i, mac, now)),
                    None => (MessageType::Nak, Ipv4Addr::UNSPECIFIED),
                }
            }
            MessageType::Release | MessageType::Decline => {
                self.release(mac);
                return None;
            }
            MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            _ => return None,
        };
        let inform = MessageType::from(req.kind) == MessageType::Inform;
        let mut rep = Message::new_with_id(
            req.xid,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            cfg.host,
            req.giaddr,
            &mac,
        );
        rep.set_opcode(Opcode::BootReply);
        rep.set_flags(Flags::new(req.flags));
        if inform {
            rep.set_ciaddr(req.ciaddr);
        }
        if let Some(b) = &cfg.bootfile {
            rep.set_fname_str(b);
        }
        let o = rep.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(cfg.host));
        if kind != MessageType::Nak {
            if !inform {
                o.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
            }
            o.insert(DhcpOption::SubnetMask(cfg.netmask()));
            if !cfg.restrict {
                o.insert(DhcpOption::Router(vec![cfg.host]));
                o.insert(DhcpOption::DomainNameServer(vec![cfg.dns]));
            }
            o.insert(DhcpOption::InterfaceMtu(cfg.mtu));
            if let Some(h) = &cfg.hostname {
                o.insert(DhcpOption::Hostname(h.chars().take(32).collect()));
            }
            if let Some(d) = &cfg.domainname {
                o.insert(DhcpOption::DomainName(d.clone()));
            }
            let names: Vec<Name> = cfg
                .dnssearch
                .iter()
                .filter_map(|d| Name::from_str(d).ok())
                .collect();
            if !names.is_empty() {
                o.insert(DhcpOption::DomainSearch(names));
            }
            if let Some(t) = &cfg.tftp_server_name {
                o.insert(DhcpOption::TFTPServerName(t.as_bytes().to_vec()));
            }
            if let Some(b) = &cfg.bootfile {
                o.insert(DhcpOption::BootfileName(b.as_bytes().to_vec()));
            }
        }
        let payload = rep.to_vec().ok()?;
        Some(Reply {
            payload,
            mac,
            dst: Ipv4Addr::BROADCAST,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::OptionCode;
    use dhcproto::Decodable;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn request(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(a) = requested {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        }
        m.to_vec().unwrap()
    }

    fn parse(r: &Reply) -> Message {
        Message::from_bytes(&r.payload).unwrap()
    }

    #[test]
    fn discover_offer_request_ack_with_options() {
        let cfg = Config {
            hostname: Some("guest".into()),
            domainname: Some("example.test".into()),
            dnssearch: vec!["a.test".into(), "b.a.test".into()],
            bootfile: Some("pxelinux.0".into()),
            tftp_server_name: Some("10.0.2.2".into()),
            ..Config::default()
        };
        let mut s = DhcpServer::default();
        let now = Instant::now();
        let offer = s
            .handle(&cfg, &request(MessageType::Discover, MAC, None), now)
            .unwrap();
        let m = parse(&offer);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(m.xid(), 0x1234);
        let ack = s
            .handle(
                &cfg,
                &request(MessageType::Request, MAC, Some(m.yiaddr())),
                now,
            )
            .unwrap();
        let m = parse(&ack);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 2, 15));
        let o = m.opts();
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(cfg.host))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![cfg.host]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![cfg.dns]))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(86400))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("guest".into()))
        );
        assert!(
            matches!(o.get(OptionCode::DomainSearch), Some(DhcpOption::DomainSearch(n)) if n.len() == 2)
        );
        assert_eq!(
            o.get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"pxelinux.0".to_vec()))
        );
        // A second client gets the next address; a request for someone else's is refused.
        let other = [2, 0, 0, 0, 0, 1];
        let m2 = parse(
            &s.handle(&cfg, &request(MessageType::Discover, other, None), now)
                .unwrap(),
        );
        assert_eq!(m2.yiaddr(), Ipv4Addr::new(10, 0, 2, 16));
        let nak = parse(
            &s.handle(
                &cfg,
                &request(
                    MessageType::Request,
                    other,
                    Some(Ipv4Addr::new(10, 0, 2, 15)),
                ),
                now,
            )
            .unwrap(),
        );
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        // Outside the pool: NAK. Release frees the address.
        let nak = parse(
            &s.handle(
                &cfg,
                &request(MessageType::Request, MAC, Some(Ipv4Addr::new(10, 0, 2, 99))),
                now,
            )
            .unwrap(),
        );
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(s
            .handle(&cfg, &request(MessageType::Release, MAC, None), now)
            .is_none());
        assert_eq!(s.lease_of(&cfg, MAC), None);
    }

    #[test]
    fn restrict_leaves_out_router_and_dns() {
        let cfg = Config {
            restrict: true,
            ..Config::default()
        };
        let mut s = DhcpServer::default();
        let m = parse(
            &s.handle(
                &cfg,
                &request(MessageType::Discover, MAC, None),
                Instant::now(),
            )
            .unwrap(),
        );
        assert!(m.opts().get(OptionCode::Router).is_none());
        assert!(m.opts().get(OptionCode::DomainNameServer).is_none());
    }

    fn lease(s: &mut DhcpServer, cfg: &Config, mac: [u8; 6], now: Instant) -> Message {
        let offer = parse(
            &s.handle(cfg, &request(MessageType::Discover, mac, None), now)
                .unwrap(),
        );
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        parse(
            &s.handle(
                cfg,
                &request(MessageType::Request, mac, Some(offer.yiaddr())),
                now,
            )
            .unwrap(),
        )
    }

    #[test]
    fn offers_bind_nothing_and_lapse() {
        let cfg = Config::default();
        let mut s = DhcpServer::default();
        let now = Instant::now();
        // A thousand DISCOVERs from as many MACs bind no address.
        for i in 0..1000u32 {
            let mac = [2, 1, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let m = parse(
                &s.handle(&cfg, &request(MessageType::Discover, mac, None), now)
                    .unwrap(),
            );
            assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        }
        assert_eq!(s.bound(now), 0);
        // Once the offers lapse, the next client is offered the first address.
        let later = now + Duration::from_secs(OFFER_SECS + 1);
        let ack = lease(&mut s, &cfg, MAC, later);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), cfg.dhcp_start);
        // A MAC keeps its address: asked again, it is offered the same one.
        let again = lease(&mut s, &cfg, MAC, later);
        assert_eq!(again.yiaddr(), cfg.dhcp_start);
        assert_eq!(s.bound(later), 1);
    }

    #[test]
    fn no_flood_of_random_macs_starves_the_pool() {
        let cfg = Config::default();
        let mut s = DhcpServer::default();
        let t0 = Instant::now();
        // Three guests hold leases and use them.
        let guests: Vec<[u8; 6]> = (0..3).map(|i| [0x52, 0x54, 0, 0, 0, i]).collect();
        let mut theirs = Vec::new();
        for &g in &guests {
            let ack = lease(&mut s, &cfg, g, t0);
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            s.seen(g, t0);
            theirs.push(ack.yiaddr());
        }
        // 10 000 DISCOVER + REQUEST pairs from random MACs, a millisecond apart; the guests
        // keep sending traffic now and then.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut t = t0;
        for n in 0..10_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_be_bytes();
            let mac = [b[0] & 0xfe | 2, b[1], b[2], b[3], b[4], b[5]];
            t += Duration::from_millis(1);
            let ack = lease(&mut s, &cfg, mac, t);
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            if n % 1000 == 0 {
                for &g in &guests {
                    s.seen(g, t);
                }
            }
        }
        assert_eq!(s.bound(t), POOL);
        // The guests keep their addresses ...
        for (g, a) in guests.iter().zip(&theirs) {
            assert_eq!(s.lease_of(&cfg, *g), Some(*a));
            let renew = parse(
                &s.handle(&cfg, &request(MessageType::Request, *g, Some(*a)), t)
                    .unwrap(),
            );
            assert_eq!(renew.opts().msg_type(), Some(MessageType::Ack));
            assert_eq!(renew.yiaddr(), *a);
        }
        // ... and a new client still gets a lease, none of theirs.
        let newcomer = [0x52, 0x54, 0, 0, 1, 1];
        let ack = lease(&mut s, &cfg, newcomer, t);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert!(DhcpServer::index(&cfg, ack.yiaddr()).is_some());
        assert!(!theirs.contains(&ack.yiaddr()));
    }

    #[test]
    fn a_full_pool_of_used_leases_recycles_the_silent_longest() {
        let cfg = Config::default();
        let mut s = DhcpServer::default();
        let t0 = Instant::now();
        for i in 0..POOL as u8 {
            let mac = [2, 0, 0, 0, 1, i];
            lease(&mut s, &cfg, mac, t0);
            s.seen(mac, t0 + Duration::from_secs(u64::from(i) + 1));
        }
        // [2,0,0,0,1,0] was heard from longest ago; an offer alone takes nothing from it.
        let t = t0 + Duration::from_secs(100);
        let newcomer = [2, 0, 0, 0, 2, 0];
        let offer = parse(
            &s.handle(&cfg, &request(MessageType::Discover, newcomer, None), t)
                .unwrap(),
        );
        assert_eq!(offer.yiaddr(), cfg.dhcp_start);
        assert_eq!(s.lease_of(&cfg, [2, 0, 0, 0, 1, 0]), Some(cfg.dhcp_start));
        // Another client may not take that address without the offer.
        let nak = parse(
            &s.handle(
                &cfg,
                &request(
                    MessageType::Request,
                    [2, 0, 0, 0, 3, 0],
                    Some(cfg.dhcp_start),
                ),
                t,
            )
            .unwrap(),
        );
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        let ack = parse(
            &s.handle(
                &cfg,
                &request(MessageType::Request, newcomer, Some(cfg.dhcp_start)),
                t,
            )
            .unwrap(),
        );
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(s.lease_of(&cfg, [2, 0, 0, 0, 1, 0]), None);
        assert_eq!(s.bound(t), POOL);
    }

    #[test]
    fn garbage() {
        let cfg = Config::default();
        let mut s = DhcpServer::default();
        let now = Instant::now();
        assert!(s.handle(&cfg, &[0u8; 10], now).is_none());
        let mut bad = request(MessageType::Discover, [2, 0, 0, 0, 3, 0], None);
        bad[2] = 200; // hlen beyond chaddr
        assert!(s.handle(&cfg, &bad, now).is_none());
        let mut truncated = request(MessageType::Discover, [2, 0, 0, 0, 3, 0], None);
        truncated.truncate(242); // option 53 says one byte follows; none does
        assert!(Request::parse(&truncated).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = DhcpServer::default().handle(&Config::default(), &data, Instant::now());
        }
    }
}
