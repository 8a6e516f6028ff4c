//! The L2TPv3 data header of a static pseudowire (RFC 3931 §4.1, the layout QEMU's `l2tpv3`
//! netdev puts before every Ethernet frame), built and checked from a [`Layout`]:
//!
//! 1. over UDP only: a 32-bit word `0x00030000` (T = 0, version 3);
//! 2. the session id, 32 bits;
//! 3. the cookie, when configured: 32 bits (the low half of the configured value) or 64;
//! 4. a 32-bit counter word, when configured (a sequence number from 1, or always 0 when
//!    pinned);
//! 5. `offset` bytes of padding (zeros);
//! 6. the frame.
//!
//! All fields big-endian. Differences from QEMU 7.2, on purpose: `pincounter` implies the
//! counter word (QEMU marks the counter present without making room for it and writes past
//! its buffer), the padding is zeros (QEMU leaves it uninitialised), and a 32-bit cookie is
//! compared as 32 bits on receive (QEMU compares the whole configured value, so an rxcookie of
//! 2^32 or more never matches). The flags word and the counter are not checked on receive,
//! as QEMU does not (peers that send other values still interoperate).

/// The first word over UDP: T = 0 (data), version 3.
pub const UDP_FLAGS: u32 = 0x0003_0000;
/// The largest `offset` QEMU accepts (its check is `> 256`).
pub const MAX_OFFSET: u32 = 256;
/// An IPv4 header's fixed part; raw sockets hand the IP header with the datagram.
const IPV4_MIN: usize = 20;

/// The cookie's size on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookie {
    None,
    Bits32,
    Bits64,
}

/// What a pseudowire's header holds: the same layout on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// UDP encapsulation (the flags word first).
    pub udp: bool,
    pub cookie: Cookie,
    /// A counter word is sent (and expected).
    pub counter: bool,
    /// The counter is always zero.
    pub pin_counter: bool,
    /// Padding bytes after the counter.
    pub offset: u16,
}

/// Why a received datagram is not a frame for this pseudowire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("short header")]
    Short,
    #[error("wrong session")]
    Session,
    #[error("wrong cookie")]
    Cookie,
    #[error("no frame after the header")]
    Empty,
}

impl Drop {
    /// The name the drop is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Drop::Short => "short-header",
            Drop::Session => "wrong-session",
            Drop::Cookie => "wrong-cookie",
            Drop::Empty => "empty",
        }
    }
}

impl Layout {
    /// The header's length in bytes.
    pub fn header_len(&self) -> usize {
        let cookie = match self.cookie {
            Cookie::None => 0,
            Cookie::Bits32 => 4,
            Cookie::Bits64 => 8,
        };
        let counter = if self.counter || self.pin_counter {
            4
        } else {
            0
        };
        (if self.udp { 4 } else { 0 }) + 4 + cookie + counter + self.offset as usize
    }

    /// Write the header for one frame into `out` (exactly [`Layout::header_len`] bytes).
    /// `seq` is the frame's sequence number (ignored when pinned).
    pub fn write(&self, out: &mut [u8], session: u32, cookie: u64, seq: u32) {
        let mut w = Writer { out, at: 0 };
        if self.udp {
            w.put(&UDP_FLAGS.to_be_bytes());
        }
        w.put(&session.to_be_bytes());
        match self.cookie {
            Cookie::None => {}
            Cookie::Bits32 => w.put(&(cookie as u32).to_be_bytes()),
            Cookie::Bits64 => w.put(&cookie.to_be_bytes()),
        }
        if self.counter || self.pin_counter {
            let c = if self.pin_counter { 0 } else { seq };
            w.put(&c.to_be_bytes());
        }
        for _ in 0..self.offset {
            w.put(&[0]);
        }
    }

    /// The header for one frame, as a vector.
    pub fn header(&self, session: u32, cookie: u64, seq: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.header_len()];
        self.write(&mut h, session, cookie, seq);
        h
    }

    /// The frame in `datagram` (what follows the header) if its session and cookie are
    /// this pseudowire's.
    pub fn frame<'a>(
        &self,
        datagram: &'a [u8],
        session: u32,
        cookie: u64,
    ) -> Result<&'a [u8], Drop> {
        let len = self.header_len();
        if datagram.len() < len {
            return Err(Drop::Short);
        }
        let mut r = Reader { b: datagram, at: 0 };
        if self.udp {
            r.skip(4);
        }
        if r.u32() != session {
            return Err(Drop::Session);
        }
        let ok = match self.cookie {
            Cookie::None => true,
            Cookie::Bits32 => r.u32() == cookie as u32,
            Cookie::Bits64 => (u64::from(r.u32()) << 32 | u64::from(r.u32())) == cookie,
        };
        if !ok {
            return Err(Drop::Cookie);
        }
        let frame = &datagram[len..];
        if frame.is_empty() {
            return Err(Drop::Empty);
        }
        Ok(frame)
    }
}

/// What a raw IPv4 socket hands over for protocol 115: the IPv4 header (options included,
/// by its IHL; QEMU skips a fixed 20 bytes) is cut off.
pub fn raw_ipv4_payload(packet: &[u8]) -> Result<&[u8], Drop> {
    let ihl = packet
        .first()
        .map(|b| (b & 0x0f) as usize * 4)
        .ok_or(Drop::Short)?;
    if ihl < IPV4_MIN || packet.len() < ihl {
        return Err(Drop::Short);
    }
    Ok(&packet[ihl..])
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) {
        self.at += n;
    }

    fn u32(&mut self) -> u32 {
        let v = u32::from_be_bytes([
            self.b[self.at],
            self.b[self.at + 1],
            self.b[self.at + 2],
            self.b[self.at + 3],
        ]);
        self.at += 4;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Layout = Layout {
        udp: false,
        cookie: Cookie::None,
        counter: false,
        pin_counter: false,
        offset: 0,
    };

    #[test]
    fn qemus_layout_byte_for_byte() {
        // udp=on,txsession=0x11223344,txcookie=0x0102030405060708,cookie64=on,counter=on
        let l = Layout {
            udp: true,
            cookie: Cookie::Bits64,
            counter: true,
            ..PLAIN
        };
        assert_eq!(l.header_len(), 20);
        assert_eq!(
            l.header(0x1122_3344, 0x0102_0304_0506_0708, 1),
            [0, 3, 0, 0, 0x11, 0x22, 0x33, 0x44, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1]
        );
        // IP encapsulation, 32-bit cookie (the low half), 2 bytes of zero padding.
        let l = Layout {
            cookie: Cookie::Bits32,
            offset: 2,
            ..PLAIN
        };
        assert_eq!(
            l.header(7, 0xaaaa_bbbb_cccc_dddd, 9),
            [0, 0, 0, 7, 0xcc, 0xcc, 0xdd, 0xdd, 0, 0]
        );
        // pincounter alone: a zero counter word (QEMU sends none and overruns its buffer).
        let l = Layout {
            pin_counter: true,
            ..PLAIN
        };
        assert_eq!(l.header(1, 0, 55), [0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn receive_checks_session_and_cookie() {
        let l = Layout {
            udp: true,
            cookie: Cookie::Bits32,
            counter: true,
            ..PLAIN
        };
        let mut d = l.header(5, 0x1234, 1);
        d.extend_from_slice(&[0xee; 60]);
        assert_eq!(l.frame(&d, 5, 0x1234), Ok(&[0xee; 60][..]));
        assert_eq!(l.frame(&d, 6, 0x1234), Err(Drop::Session));
        assert_eq!(l.frame(&d, 5, 0x1235), Err(Drop::Cookie));
        assert_eq!(l.frame(&d[..12], 5, 0x1234), Err(Drop::Short));
        assert_eq!(l.frame(&d[..16], 5, 0x1234), Err(Drop::Empty));
        // A 32-bit cookie compares 32 bits.
        assert_eq!(l.frame(&d, 5, 0x1_0000_1234), Ok(&[0xee; 60][..]));
    }

    #[test]
    fn raw_ipv4_header_is_cut_by_its_length() {
        let mut p = vec![0x46u8];
        p.resize(24, 0);
        p.extend_from_slice(&[0, 0, 0, 9]);
        assert_eq!(raw_ipv4_payload(&p), Ok(&[0, 0, 0, 9][..]));
        assert_eq!(raw_ipv4_payload(&[0x44; 30]), Err(Drop::Short));
        assert_eq!(raw_ipv4_payload(&[]), Err(Drop::Short));
        assert_eq!(raw_ipv4_payload(&p[..22]), Err(Drop::Short));
    }
}
