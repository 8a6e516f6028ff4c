//! The stream framing of QEMU's `socket` (TCP) and `stream` netdevs (`net/socket.c`,
//! `net/stream.c`, `net_fill_rstate`): each frame is preceded by its length as a 4-byte
//! big-endian integer; no virtio-net header. A length of 0 or above
//! [`MAX_FRAME`](netdevd_core::frame::MAX_FRAME) (QEMU's NET_BUFSIZE) is a broken stream: the
//! connection is dropped (QEMU drops it for the large case; an empty Ethernet frame cannot
//! exist, so 0 is treated the same).

use netdevd_core::frame::MAX_FRAME;

/// Bytes read from the socket per read call.
pub const READ_CHUNK: usize = 64 * 1024;

/// A stream that cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad frame length {0} in stream (must be 1..={MAX_FRAME})")]
pub struct BadLength(pub u32);

/// Reassembles frames from a byte stream. Holds at most one partial frame plus one read
/// chunk.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes `start..end` are held; the rest is room, zeroed once when the buffer grew
    /// (not before every read: that would cost more than a small read).
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held that do not form a whole frame yet (or frames not taken yet).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Room for `n` more bytes after `end`, moving the held bytes to the front first when
    /// that frees more than half.
    fn make_room(&mut self, n: usize) {
        if self.start > 0 && (self.start == self.end || self.start > self.end / 2) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + n {
            self.buf.resize(self.end + n, 0);
        }
    }

    /// Read once into the buffer with `read` (given free space), returning what it returned.
    pub fn fill<E>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        self.make_room(READ_CHUNK);
        let r = read(&mut self.buf[self.end..self.end + READ_CHUNK]);
        if let Ok(n) = &r {
            self.end += (*n).min(READ_CHUNK);
        }
        r
    }

    /// Feed bytes already read elsewhere.
    pub fn push(&mut self, data: &[u8]) {
        self.make_room(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// The next whole frame, copied into `out` (reusing its allocation); false if the
    /// buffer holds no whole frame.
    pub fn next_frame_into(&mut self, out: &mut Vec<u8>) -> Result<bool, BadLength> {
        let avail = &self.buf[self.start..self.end];
        let Some(hdr) = avail.get(..4) else {
            return Ok(false);
        };
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(BadLength(len));
        }
        let Some(frame) = avail.get(4..4 + len as usize) else {
            return Ok(false);
        };
        out.clear();
        out.extend_from_slice(frame);
        self.start += 4 + len as usize;
        Ok(true)
    }

    /// The next whole frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, BadLength> {
        let avail = &self.buf[self.start..self.end];
        let Some(hdr) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(BadLength(len));
        }
        let Some(frame) = avail.get(4..4 + len as usize) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.start += 4 + len as usize;
        Ok(Some(frame))
    }
}

/// The 4-byte header for a frame of `len` bytes.
pub fn header(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&header(f.len()));
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn frames_split_anywhere() {
        let a = vec![1u8; 60];
        let b = vec![2u8; 1514];
        let c = vec![3u8; MAX_FRAME];
        let bytes = encode(&[&a, &b, &c]);
        for cut in [0, 1, 3, 4, 5, 63, 64, 65, 1000, bytes.len() - 1] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            r.push(&bytes[..cut]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
            r.push(&bytes[cut..]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![a.clone(), b.clone(), c.clone()], "cut at {cut}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn bad_lengths_break_the_stream() {
        let mut r = FrameReader::new();
        r.push(&[0, 0, 0, 0]);
        assert_eq!(r.next_frame(), Err(BadLength(0)));
        let mut r = FrameReader::new();
        r.push(&header(MAX_FRAME + 1));
        assert_eq!(r.next_frame(), Err(BadLength(MAX_FRAME as u32 + 1)));
        let mut r = FrameReader::new();
        r.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn fill_reads_into_the_buffer() {
        let mut r = FrameReader::new();
        let bytes = encode(&[&[9u8; 100]]);
        let n = r.fill(|buf| -> Result<usize, ()> {
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        });
        assert_eq!(n, Ok(104));
        assert_eq!(r.next_frame().unwrap().unwrap(), vec![9u8; 100]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut r = FrameReader::new();
            r.push(&data);
            while let Ok(Some(_)) = r.next_frame() {}
        }
    }
}
