//! vhost-user messages from a front-end: the input as a stream of messages (header, then
//! its payload), each parsed (with a few fds when the input asks) and handed to a device.
//! Nothing may panic; refused messages leave the device usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_vhost::msg::{self, Header, HEADER_LEN};
use netdevd_vhost::NetDevice;

fuzz_target!(|data: &[u8]| {
    let mut dev = NetDevice::new();
    let mut rest = data;
    while rest.len() >= HEADER_LEN {
        let Ok(h) = Header::parse(rest) else { return };
        let end = (HEADER_LEN + h.size as usize).min(rest.len());
        let payload = &rest[HEADER_LEN..end];
        // Some messages come with fds: pipes stand in for eventfds and memfds.
        let nfds = (h.flags >> 8) as usize % 3;
        let fds = (0..nfds)
            .filter_map(|_| rustix::pipe::pipe().ok().map(|(r, _)| r))
            .collect();
        if let Ok(req) = msg::parse(&h, payload, fds) {
            let _ = dev.handle(&h, req);
        }
        rest = &rest[end..];
    }
    let mut buf = Vec::new();
    let _ = dev.tx_pop(&mut buf);
    let _ = dev.rx_push(&[0u8; 60], None);
    let _ = dev.notify();
});
