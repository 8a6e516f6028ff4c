//! Stateless DHCPv6 (RFC 8415 §6.1): an Information-Request is answered with the DNS
//! servers (option 23, RFC 3646) and the domain search list (option 24) — what SLAAC
//! leaves out — and always with a Server Identifier (a DUID-LL of the gateway MAC), which
//! clients such as ISC dhclient require (libslirp's replies carry none, and dhclient drops
//! them). No addresses are leased: Solicit, Request and the rest are not answered, so
//! clients stay with SLAAC. Under `restrict` the reply carries no DNS options, as the
//! DHCPv4 reply carries no router or DNS.
//!
//! Sans-IO, like [`crate::dhcp`]: [`reply`] takes a request's UDP payload and returns the
//! reply's. Requests are read by a checked parser; anything malformed gets no answer.

use crate::config::Config;

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;

const INFORMATION_REQUEST: u8 = 11;
const REPLY: u8 = 7;

const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_ORO: u16 = 6;
const OPT_DNS_SERVERS: u16 = 23;
const OPT_DOMAIN_LIST: u16 = 24;

/// What the server reads from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: u8,
    pub xid: [u8; 3],
    pub client_id: Option<&'a [u8]>,
    /// A Server Identifier was given (then it must be ours).
    pub server_id: Option<&'a [u8]>,
    /// Options asked for (ORO); empty when the client sent none.
    pub wanted: Vec<u16>,
}

impl<'a> Request<'a> {
    /// Parse a client message: type, transaction id and options, every option inside the
    /// message. `None` if anything does not fit.
    pub fn parse(p: &'a [u8]) -> Option<Request<'a>> {
        let (&kind, rest) = p.split_first()?;
        let xid: [u8; 3] = rest.get(..3)?.try_into().ok()?;
        let mut opts = &rest[3..];
        let mut req = Request {
            kind,
            xid,
            client_id: None,
            server_id: None,
            wanted: Vec::new(),
        };
        while !opts.is_empty() {
            let h = opts.get(..4)?;
            let code = u16::from_be_bytes([h[0], h[1]]);
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            let val = opts.get(4..4 + len)?;
            match code {
                OPT_CLIENTID => req.client_id = Some(val),
                OPT_SERVERID => req.server_id = Some(val),
                OPT_ORO => {
                    if !len.is_multiple_of(2) {
                        return None;
                    }
                    req.wanted = val
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                }
                _ => {}
            }
            opts = &opts[4 + len..];
        }
        Some(req)
    }
}

/// The server's DUID: DUID-LL (type 3), hardware type Ethernet (1), the gateway MAC.
pub fn server_duid(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

fn option(out: &mut Vec<u8>, code: u16, val: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(val.len() as u16).to_be_bytes());
    out.extend_from_slice(val);
}

/// The reply to one client message, if it gets one.
pub fn reply(cfg: &Config, server_mac: [u8; 6], payload: &[u8]) -> Option<Vec<u8>> {
    let req = Request::parse(payload)?;
    let duid = server_duid(server_mac);
    // RFC 8415 §16.12: an Information-Request naming another server is not for us.
    if req.kind != INFORMATION_REQUEST || req.server_id.is_some_and(|s| s != duid) {
        return None;
    }
    let mut out = vec![REPLY];
    out.extend_from_slice(&req.xid);
    option(&mut out, OPT_SERVERID, &duid);
    if let Some(c) = req.client_id {
        option(&mut out, OPT_CLIENTID, c);
    }
    let wants = |o: u16| req.wanted.is_empty() || req.wanted.contains(&o);
    if !cfg.restrict {
        if wants(OPT_DNS_SERVERS) {
            option(&mut out, OPT_DNS_SERVERS, &cfg.ipv6_dns.octets());
        }
        let names = netdevd_wire::ipv6::dns_names(&cfg.dnssearch);
        if wants(OPT_DOMAIN_LIST) && !names.is_empty() {
            option(&mut out, OPT_DOMAIN_LIST, &names);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

    fn info_request(extra: &[u8]) -> Vec<u8> {
        let mut m = vec![INFORMATION_REQUEST, 0xab, 0xcd, 0xef];
        option(&mut m, OPT_CLIENTID, &[0, 3, 0, 1, 2, 2, 2, 2, 2, 2]);
        option(&mut m, 8, &[0, 0]); // elapsed time
        m.extend_from_slice(extra);
        m
    }

    fn options(p: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut o = &p[4..];
        while !o.is_empty() {
            let code = u16::from_be_bytes([o[0], o[1]]);
            let len = u16::from_be_bytes([o[2], o[3]]) as usize;
            out.push((code, o[4..4 + len].to_vec()));
            o = &o[4 + len..];
        }
        out
    }

    #[test]
    fn information_request_gets_dns_search_and_a_server_id() {
        let cfg = Config {
            dnssearch: vec!["example.test".into()],
            ..Config::default()
        };
        let mut oro = Vec::new();
        option(&mut oro, OPT_ORO, &[0, 23, 0, 24]);
        let r = reply(&cfg, MAC, &info_request(&oro)).unwrap();
        assert_eq!(&r[..4], &[REPLY, 0xab, 0xcd, 0xef]);
        let o = options(&r);
        assert_eq!(o[0], (OPT_SERVERID, server_duid(MAC)));
        assert_eq!(o[1], (OPT_CLIENTID, vec![0, 3, 0, 1, 2, 2, 2, 2, 2, 2]));
        assert_eq!(o[2], (OPT_DNS_SERVERS, cfg.ipv6_dns.octets().to_vec()));
        assert_eq!(o[3], (OPT_DOMAIN_LIST, b"\x07example\x04test\x00".to_vec()));
        // Only what the ORO asks for.
        let mut only_dns = Vec::new();
        option(&mut only_dns, OPT_ORO, &[0, 23]);
        let o = options(&reply(&cfg, MAC, &info_request(&only_dns)).unwrap());
        assert_eq!(o.len(), 3);
        // Restricted: no DNS options, still an answer with the server id.
        let r = reply(
            &Config {
                restrict: true,
                ..cfg.clone()
            },
            MAC,
            &info_request(&[]),
        )
        .unwrap();
        assert_eq!(options(&r).len(), 2);
    }

    #[test]
    fn other_messages_and_garbage_get_nothing() {
        let cfg = Config::default();
        let mut solicit = info_request(&[]);
        solicit[0] = 1;
        assert!(reply(&cfg, MAC, &solicit).is_none());
        let mut other_server = Vec::new();
        option(
            &mut other_server,
            OPT_SERVERID,
            &[0, 3, 0, 1, 9, 9, 9, 9, 9, 9],
        );
        assert!(reply(&cfg, MAC, &info_request(&other_server)).is_none());
        let mut ours = Vec::new();
        option(&mut ours, OPT_SERVERID, &server_duid(MAC));
        assert!(reply(&cfg, MAC, &info_request(&ours)).is_some());
        let mut cut = info_request(&[]);
        cut.truncate(cut.len() - 1);
        assert!(reply(&cfg, MAC, &cut).is_none());
        let mut odd_oro = Vec::new();
        option(&mut odd_oro, OPT_ORO, &[0, 23, 0]);
        assert!(reply(&cfg, MAC, &info_request(&odd_oro)).is_none());
        assert!(reply(&cfg, MAC, &[11, 0]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = reply(&Config::default(), MAC, &data);
        }
    }
}
