//! The reactor's token layout, in one place. The top byte says what a token is; the rest
//! says which one. Backend tokens carry more: the registry slot (16 bits from bit 40), the
//! slot's generation (8 bits from bit 32; a stale event for a reused slot is ignored) and the
//! backend's own sub-token (the low 32 bits, e.g. one per socket of the user netdev).

/// A QMP listener; the rest is its index.
pub const LISTENER: u64 = 1 << 56;
/// A QMP connection; the rest is its slot.
pub const CONN: u64 = 2 << 56;
/// The signal fd.
pub const SIGNAL: u64 = 3 << 56;
/// A backend's fd (see [`backend`]).
pub const BACKEND: u64 = 4 << 56;

const INDEX_MASK: u64 = (1 << 56) - 1;

/// The kind of `token` ([`LISTENER`], [`CONN`], [`SIGNAL`], [`BACKEND`]) and its index.
pub fn split(token: u64) -> (u64, usize) {
    (token & !INDEX_MASK, (token & INDEX_MASK) as usize)
}

/// The base token of backend slot `slot` in generation `gen`: the backend adds its own
/// sub-token (below 2^32) to it.
pub fn backend(slot: usize, gen: u8) -> u64 {
    BACKEND | ((slot as u64 & 0xffff) << 40) | ((gen as u64) << 32)
}

/// A backend token's slot, generation and sub-token.
pub fn backend_parts(token: u64) -> (usize, u8, u32) {
    (
        ((token >> 40) & 0xffff) as usize,
        ((token >> 32) & 0xff) as u8,
        (token & 0xffff_ffff) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_tokens_round_trip() {
        let t = backend(513, 7) | 0xdead_beef;
        assert_eq!(split(t).0, BACKEND);
        assert_eq!(backend_parts(t), (513, 7, 0xdead_beef));
        assert_eq!(split(CONN | 42), (CONN, 42));
    }
}
