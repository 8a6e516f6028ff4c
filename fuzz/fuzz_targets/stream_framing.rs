//! Bytes a stream peer sends: the 4-byte length framing, fed in arbitrary pieces, yields the
//! same frames as fed whole, never a frame of 0 or more than 69 632 bytes; and QEMU's
//! host:port strings (which reach us from QMP and the command line) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_backends::framing::FrameReader;

fn frames(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut r = FrameReader::new();
    let mut out = Vec::new();
    for p in pieces {
        r.push(p);
        loop {
            match r.next_frame() {
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= 69_632);
                    out.push(f);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let cut = data
        .first()
        .map(|b| *b as usize % (data.len() + 1))
        .unwrap_or(0);
    assert_eq!(frames(&[data]), frames(&[&data[..cut], &data[cut..]]));
    if let Ok(s) = std::str::from_utf8(data) {
        // Only numeric hosts: a name would make the resolver send a query.
        if !s
            .split(':')
            .next()
            .unwrap_or("")
            .chars()
            .any(|c| c.is_ascii_alphabetic())
        {
            let _ = netdevd_backends::addr::parse_host_port(s);
        }
        let _ = netdevd_backends::addr::inet_aton(s);
    }
});
