//! The sending side of `bench/vhost-user`: frames into netdevd as fast as it takes them,
//! over vhost-user (this program is the driver, `netdevd_vhost::driver`) or over a `stream`
//! socket, for SECS seconds; prints frames, bytes and seconds.
//!
//!     vhost_pump vhost SOCK SECS SIZE [tso]   SIZE-byte frames on a NIC's transmit queue;
//!                                             with `tso`, TCP/IPv4 frames carrying a
//!                                             virtio-net GSO header (gso_size 1448)
//!     vhost_pump stream SOCK SECS SIZE        the same frames, length-prefixed, on a
//!                                             stream netdev's socket (no offload metadata)
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use netdevd_vhost::device::{FEATURES, TX};
use netdevd_vhost::msg::{self, Request};

/// A TCP/IPv4 frame of `size` bytes to 10.9.0.2 (a tap in a namespace that drops it).
fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size.max(54)];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x99]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x98]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (f.len() - 14).min(65535) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 9, 0, 1]);
    f[30..34].copy_from_slice(&[10, 9, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x10;
    f
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 {
        eprintln!("usage: vhost_pump vhost|stream SOCK SECS SIZE [tso]");
        std::process::exit(2);
    }
    let secs: u64 = a[2].parse().expect("seconds");
    let size: usize = a[3].parse().expect("frame size");
    let tso = a.get(4).is_some_and(|s| s == "tso");
    let f = frame(size);
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut frames, mut bytes) = (0u64, 0u64);
    let t0 = Instant::now();
    if a[0] == "stream" {
        let mut s = UnixStream::connect(&a[1]).expect("connect");
        let mut m = (f.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&f);
        let batch: Vec<u8> = m.iter().copied().cycle().take(m.len() * 16).collect();
        while Instant::now() < end {
            s.write_all(&batch).expect("write");
            frames += 16;
            bytes += 16 * f.len() as u64;
        }
    } else {
        let s = UnixStream::connect(&a[1]).expect("connect");
        let qsize = 256u16;
        let mut d = netdevd_vhost::driver::Driver::new(256 << 20, qsize).expect("memory");
        let kicks: Vec<_> = (0..2)
            .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap())
            .collect();
        let kick = kicks[TX].try_clone().unwrap();
        for (_, r) in d.setup(FEATURES).unwrap() {
            let r = match r {
                Request::SetVringKick { index, .. } => Request::SetVringKick {
                    index,
                    fd: Some(kicks[index as usize].try_clone().unwrap()),
                },
                r => r,
            };
            let (b, fds) = msg::encode(&r);
            netdevd_sys::send_with_fds(s.as_fd(), &b, &fds).expect("send");
        }
        let (b, _) = msg::encode(&Request::GetFeatures);
        (&s).write_all(&b).unwrap();
        let mut reply = [0u8; 20];
        (&s).read_exact(&mut reply).unwrap();
        let mut hdr = [0u8; 12];
        if tso {
            hdr[0] = 1; // NEEDS_CSUM
            hdr[1] = 1; // GSO_TCPV4
            hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
            hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
            hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
            hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        // One header and one frame in memory, offered again and again (two descriptors
        // per chain, at fixed table entries).
        let ha = d.place(&hdr);
        let fa = d.place(&f);
        let slots = qsize / 2;
        let mut out = 0u16;
        let mut next = 0u16;
        while Instant::now() < end {
            while out < slots {
                d.offer_at(
                    TX,
                    (next % slots) * 2,
                    &[(ha, 12, false), (fa, f.len() as u32, false)],
                );
                next = next.wrapping_add(1);
                out += 1;
            }
            rustix::io::write(kick.as_fd(), &1u64.to_ne_bytes()).unwrap();
            loop {
                let used = d.take_used(TX).len() as u16;
                if used > 0 {
                    out -= used;
                    frames += used as u64;
                    bytes += used as u64 * f.len() as u64;
                    break;
                }
                // Wait as a guest would (it is told by an interrupt), leaving the CPU to
                // netdevd rather than spinning on it.
                std::thread::sleep(Duration::from_micros(20));
                if Instant::now() >= end {
                    break;
                }
            }
        }
    }
    println!("{frames} {bytes} {:.3}", t0.elapsed().as_secs_f64());
}
