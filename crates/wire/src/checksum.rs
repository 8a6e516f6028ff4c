//! The Internet checksum (RFC 1071): a ones'-complement sum of 16-bit big-endian words.

/// Add `data` to a running sum (an odd final byte is padded with zero).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    // 32-bit words at a time: 2^16 = 1 modulo 0xffff, so a sum of big-endian 32-bit words
    // folds to the same 16-bit sum (a u64 holds 2^32 of them).
    let mut words = data.chunks_exact(4);
    for c in &mut words {
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let mut chunks = words.remainder().chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

/// Fold a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store: the complement of the folded sum.
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The TCP/UDP pseudo-header sum over IPv4 addresses.
pub fn pseudo_v4(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    sum(dst, sum(src, 0)) + proto as u64 + len as u64
}

/// The pseudo-header sum over IPv6 addresses.
pub fn pseudo_v6(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    sum(dst, sum(src, 0)) + proto as u64 + len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(finish(sum(&d, 0)), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        // A captured IPv4 header (20 bytes) with its checksum (b861) in place.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(sum(&h, 0)), 0);
    }

    proptest::proptest! {
        /// The 32-bit-word sum folds to what a plain 16-bit-word sum folds to.
        #[test]
        fn wide_sum_matches_16_bit_words(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), start in 0u64..0x1_0000_0000) {
            let mut acc = start;
            let mut c = data.chunks_exact(2);
            for w in &mut c {
                acc += u16::from_be_bytes([w[0], w[1]]) as u64;
            }
            if let [last] = c.remainder() {
                acc += (*last as u64) << 8;
            }
            proptest::prop_assert_eq!(fold(sum(&data, start)), fold(acc));
        }
    }
}
