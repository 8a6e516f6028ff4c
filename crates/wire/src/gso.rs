//! Finishing offloaded frames in software, for receivers that cannot take them (a tap
//! without vnet headers, a socket peer): what Linux's `skb_checksum_help` and
//! `skb_segment` do for a virtio-net frame.
//!
//! Implemented: `NEEDS_CSUM` (fill the checksum at `csum_start + csum_offset`, whose field
//! holds the pseudo-header sum), and `TCPV4`/`TCPV6` segmentation over Ethernet (optionally
//! one 802.1Q tag): each segment gets the headers, `gso_size` bytes of payload, the IPv4
//! total length, an incremented IPv4 id and a fresh header checksum (or the IPv6 payload
//! length), the advanced TCP sequence number, FIN/PSH only on the last segment and CWR
//! only on the first, and a full TCP checksum.
//! Not implemented (refused with an error, and never asked for: netdevd does not enable
//! them on a tap): UFO (`GSO_UDP`), USO (`GSO_UDP_L4`), IPv6 extension headers and IPv4
//! options before a segmented TCP header.

use crate::checksum::{finish, pseudo_v4, pseudo_v6, sum};
use crate::VirtioNetHdr;

/// The smallest MSS accepted for segmentation (Linux's `TCP_MIN_SND_MSS`).
pub const MIN_MSS: u16 = 48;

/// Why a frame could not be finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("frame too short for its headers")]
    Truncated,
    #[error("checksum offsets outside the frame")]
    BadChecksumOffsets,
    #[error("segmentation of type {0} is not supported")]
    Unsupported(u8),
    #[error("not a TCP/IP frame")]
    NotTcp,
    #[error("gso_size {0} is below the smallest TCP MSS Linux allows ({MIN_MSS})")]
    MssTooSmall(u16),
}

/// Finish `frame` as described by `hdr`, calling `emit` with each resulting plain frame.
pub fn finish_frame(
    frame: &[u8],
    hdr: &VirtioNetHdr,
    emit: &mut dyn FnMut(&[u8]),
) -> Result<(), GsoError> {
    match hdr.gso_type & !VirtioNetHdr::GSO_ECN {
        VirtioNetHdr::GSO_NONE => {
            if hdr.flags & VirtioNetHdr::NEEDS_CSUM == 0 {
                emit(frame);
                return Ok(());
            }
            let mut f = frame.to_vec();
            fill_checksum(&mut f, hdr.csum_start as usize, hdr.csum_offset as usize)?;
            emit(&f);
            Ok(())
        }
        VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_TCPV6 => segment_tcp(frame, hdr, emit),
        other => Err(GsoError::Unsupported(other)),
    }
}

/// Complete a partial checksum: the sum from `start` to the end (the field at
/// `start + offset` holds the pseudo-header sum) is stored, complemented, in that field.
pub fn fill_checksum(f: &mut [u8], start: usize, offset: usize) -> Result<(), GsoError> {
    let field = start
        .checked_add(offset)
        .ok_or(GsoError::BadChecksumOffsets)?;
    if field + 2 > f.len() || start > f.len() {
        return Err(GsoError::BadChecksumOffsets);
    }
    let c = finish(sum(&f[start..], 0));
    f[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn segment_tcp(
    frame: &[u8],
    hdr: &VirtioNetHdr,
    emit: &mut dyn FnMut(&[u8]),
) -> Result<(), GsoError> {
    // A tiny MSS would make one frame into tens of thousands: refuse it, as Linux does.
    if hdr.gso_size < MIN_MSS {
        return Err(GsoError::MssTooSmall(hdr.gso_size));
    }
    let mss = hdr.gso_size as usize;
    // Layer 2: Ethernet, maybe one VLAN tag.
    let et = |o: usize| {
        frame
            .get(o..o + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(GsoError::Truncated)
    };
    let (l3, ethertype) = match et(12)? {
        0x8100 => (18, et(16)?),
        t => (14, t),
    };
    let (v4, l4) = match ethertype {
        0x0800 => {
            let vihl = *frame.get(l3).ok_or(GsoError::Truncated)?;
            if vihl >> 4 != 4 || frame.get(l3 + 9) != Some(&6) {
                return Err(GsoError::NotTcp);
            }
            (true, l3 + (vihl as usize & 0xf) * 4)
        }
        0x86dd => {
            if frame.get(l3 + 6) != Some(&6) {
                return Err(GsoError::NotTcp);
            }
            (false, l3 + 40)
        }
        _ => return Err(GsoError::NotTcp),
    };
    let doff = *frame.get(l4 + 12).ok_or(GsoError::Truncated)?;
    let tcp_hlen = (doff >> 4) as usize * 4;
    if tcp_hlen < 20 || frame.len() < l4 + tcp_hlen {
        return Err(GsoError::Truncated);
    }
    let headers = &frame[..l4 + tcp_hlen];
    let payload = &frame[l4 + tcp_hlen..];
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = if v4 {
        u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]])
    } else {
        0
    };
    let flags0 = frame[l4 + 13];
    let n = payload.len().div_ceil(mss).max(1);
    let mut seg = Vec::with_capacity(headers.len() + mss);
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        seg.clear();
        seg.extend_from_slice(headers);
        seg.extend_from_slice(chunk);
        let l4_len = tcp_hlen + chunk.len();
        if v4 {
            let total = (l4 - l3 + l4_len) as u16;
            seg[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            seg[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = finish(sum(&seg[l3..l4], 0));
            seg[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(0x01 | 0x08); // FIN, PSH
        }
        if i > 0 {
            flags &= !0x80; // CWR
        }
        seg[l4 + 13] = flags;
        seg[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let pseudo = if v4 {
            pseudo_v4(&seg[l3 + 12..l3 + 16], &seg[l3 + 16..l3 + 20], 6, l4_len)
        } else {
            pseudo_v6(&seg[l3 + 8..l3 + 24], &seg[l3 + 24..l3 + 40], 6, l4_len)
        };
        let c = finish(sum(&seg[l4..], pseudo));
        seg[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        emit(&seg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::fold;

    /// An Ethernet + IPv4 + TCP frame with `payload`, TCP checksum left as the pseudo-header
    /// sum (as a GSO frame from the kernel has it).
    fn tcp4(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00];
        let total = (20 + 20 + payload.len()) as u16;
        f.extend_from_slice(&[
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[
            0x30, 0x39, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(payload);
        f
    }

    fn tcp_ok(seg: &[u8]) -> bool {
        let l3 = 14;
        let ihl = (seg[l3] & 0xf) as usize * 4;
        let l4 = l3 + ihl;
        let total = u16::from_be_bytes([seg[l3 + 2], seg[l3 + 3]]) as usize;
        let ip_ok = fold(sum(&seg[l3..l4], 0)) == 0xffff;
        let pseudo = pseudo_v4(
            &seg[l3 + 12..l3 + 16],
            &seg[l3 + 16..l3 + 20],
            6,
            total - ihl,
        );
        ip_ok && fold(sum(&seg[l4..], pseudo)) == 0xffff && total + 14 == seg.len()
    }

    #[test]
    fn tcpv4_segments_like_the_kernel() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let f = tcp4(&payload, 0x18 | 0x01 | 0x80); // PSH ACK FIN CWR
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: VirtioNetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut segs = Vec::new();
        finish_frame(&f, &hdr, &mut |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(tcp_ok(s), "segment {i} checksums");
            assert!(s.len() <= 14 + 40 + 1448);
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0x1000 + (i * 1448) as u32);
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            let flags = s[47];
            assert_eq!(flags & 0x01 != 0, i == 2, "FIN only last");
            assert_eq!(flags & 0x08 != 0, i == 2, "PSH only last");
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR only first");
            rebuilt.extend_from_slice(&s[54..]);
        }
        assert_eq!(rebuilt, payload);
    }

    #[test]
    fn partial_checksum_is_filled() {
        let mut f = tcp4(b"hello", 0x18);
        // Put the pseudo-header sum in the field, as CHECKSUM_PARTIAL leaves it.
        let p = fold(pseudo_v4(&f[26..30], &f[30..34], 6, 25));
        f[50..52].copy_from_slice(&p.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: 1,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        let mut out = Vec::new();
        finish_frame(&f, &hdr, &mut |s| out.push(s.to_vec())).unwrap();
        // The IP header checksum of this hand-made frame is zero: fix it to check TCP alone.
        let mut g = out[0].clone();
        let c = finish(sum(&g[14..34], 0));
        g[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(tcp_ok(&g));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: 1,
            gso_size: 100,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 0,
        };
        assert!(finish_frame(&[0; 10], &hdr, &mut |_| {}).is_err());
        let bad = VirtioNetHdr {
            flags: 1,
            csum_start: 60,
            csum_offset: 100,
            ..Default::default()
        };
        assert_eq!(
            finish_frame(&[0; 64], &bad, &mut |_| {}),
            Err(GsoError::BadChecksumOffsets)
        );
        let ufo = VirtioNetHdr {
            gso_type: 3,
            ..Default::default()
        };
        assert_eq!(
            finish_frame(&[0; 64], &ufo, &mut |_| {}),
            Err(GsoError::Unsupported(3))
        );
        let zero = VirtioNetHdr {
            gso_type: 1,
            gso_size: 0,
            ..Default::default()
        };
        assert_eq!(
            finish_frame(&tcp4(b"x", 0), &zero, &mut |_| {}),
            Err(GsoError::MssTooSmall(0))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_any_header(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), h in proptest::collection::vec(proptest::prelude::any::<u8>(), 10)) {
            let mut hdr = VirtioNetHdr::parse(&h).unwrap();
            hdr.gso_size = hdr.gso_size.max(MIN_MSS);
            let _ = finish_frame(&data, &hdr, &mut |_| {});
        }
    }
}
