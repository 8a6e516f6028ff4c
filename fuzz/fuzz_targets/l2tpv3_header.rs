//! What a pseudowire peer (or anyone who can reach the socket) sends: any layout, any
//! datagram. Checking it never panics, a frame it returns is the datagram's tail, and a
//! header netdevd builds reads back to the frame behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_wire::l2tpv3::{raw_ipv4_payload, Cookie, Layout};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (cfg, rest) = data.split_at(16);
    let layout = Layout {
        udp: cfg[0] & 1 != 0,
        cookie: match cfg[0] >> 1 & 3 {
            0 => Cookie::None,
            1 => Cookie::Bits32,
            _ => Cookie::Bits64,
        },
        counter: cfg[0] & 8 != 0,
        pin_counter: cfg[0] & 16 != 0,
        offset: u16::from(cfg[1]) + u16::from(cfg[0] >> 7),
    };
    let session = u32::from_be_bytes(cfg[2..6].try_into().unwrap());
    let cookie = u64::from_be_bytes(cfg[6..14].try_into().unwrap());
    if let Ok(f) = layout.frame(rest, session, cookie) {
        assert_eq!(f.len(), rest.len() - layout.header_len());
        assert!(!f.is_empty());
    }
    if let Ok(p) = raw_ipv4_payload(rest) {
        assert!(p.len() + 20 <= rest.len());
    }
    let mut d = layout.header(session, cookie, u32::from(cfg[14]));
    d.extend_from_slice(rest);
    let back = layout.frame(&d, session, cookie);
    if rest.is_empty() {
        assert!(back.is_err());
    } else {
        assert_eq!(back, Ok(rest));
    }
});
