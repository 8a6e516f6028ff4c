//! What a tap (a guest, a container) hands us with a virtio-net header: any header, any
//! frame. Finishing it in software never panics, and every segment it emits is no larger
//! than the headers plus gso_size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_wire::{gso::finish_frame, VirtioNetHdr};

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let frame = &data[VirtioNetHdr::LEN..];
    let segmenting = hdr.is_gso();
    let mut total = 0usize;
    let _ = finish_frame(frame, &hdr, &mut |seg| {
        total += 1;
        if segmenting {
            assert!(
                seg.len() <= frame.len().max(1) + 60,
                "a segment grew beyond its frame"
            );
        } else {
            assert_eq!(seg.len(), frame.len());
        }
    });
    assert!(total <= frame.len() + 1);
});
