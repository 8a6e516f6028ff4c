//! Descriptor chains from a guest: a device set up on shared memory whose rings and
//! descriptors the input writes (chains of any length, direction, address; raw bytes over
//! the descriptor tables and avail rings), then transmit and receive run over them. Guest
//! memory is never trusted: nothing may panic, and every frame taken is within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_vhost::device::feature::MRG_RXBUF;
use netdevd_vhost::device::{FEATURES, RX, TX};
use netdevd_vhost::driver::{Driver, RING_SPAN};
use netdevd_vhost::NetDevice;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let Ok(mut d) = Driver::new(1 << 20, 64) else { return };
    let features = if sel & 1 == 0 { FEATURES } else { FEATURES & !MRG_RXBUF };
    let mut dev = NetDevice::new();
    let Ok(setup) = d.setup(features) else { return };
    for (h, r) in setup {
        dev.handle(&h, r);
    }
    let mut next = [0u16; 2];
    // Ops: 0 offer a chain, 1 poke raw bytes into a ring, 2 transmit, 3 receive.
    while let Some((&op, r)) = rest.split_first() {
        rest = r;
        let q = (op >> 2) as usize & 1;
        match op & 3 {
            0 => {
                let Some((&n, r)) = rest.split_first() else { break };
                rest = r;
                let n = (n % 6) as usize + 1;
                let mut parts: Vec<(Vec<u8>, bool)> = Vec::new();
                for _ in 0..n {
                    let Some((&len, r)) = rest.split_first() else { break };
                    rest = r;
                    let len = len as usize * 16;
                    parts.push((vec![0x5a; len], len & 16 != 0));
                }
                let refs: Vec<(&[u8], bool)> = parts.iter().map(|(b, w)| (&b[..], *w)).collect();
                let first = next[q];
                next[q] = next[q].wrapping_add(refs.len() as u16) % 64;
                d.offer(q, first, &refs);
            }
            1 => {
                if rest.len() < 3 {
                    break;
                }
                let at = u16::from_le_bytes([rest[0], rest[1]]) as u64;
                let len = (rest[2] as usize).min(rest.len() - 3);
                d.poke(q as u64 * RING_SPAN + at % (3 * 4096), &rest[3..3 + len]);
                rest = &rest[3 + len..];
            }
            2 => {
                let mut buf = Vec::new();
                for _ in 0..128 {
                    if dev.tx_pop(&mut buf).is_none() {
                        break;
                    }
                    assert!(buf.len() <= netdevd_vhost::device::MAX_FRAME);
                }
                let _ = d.take_used(TX);
            }
            _ => {
                let len = rest.first().map_or(60, |&l| l as usize * 40 + 14);
                let _ = dev.rx_push(&vec![0xa5; len], None);
                let _ = d.take_used(RX);
            }
        }
        let _ = dev.notify();
    }
});
