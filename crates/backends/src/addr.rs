//! Host and port strings as QEMU's socket netdevs read them (`net/util.c`
//! `parse_host_port`/`convert_host_port`):
//! - `host:port` splits at the first `:` (no IPv6 literals); missing `:` is an error;
//! - an empty host is INADDR_ANY; a host starting with a digit must be an IPv4 address in
//!   `inet_aton` form (`10.1`, `0x7f.1` are valid); any other host is looked up by name;
//! - the port is C `strtol(.., 0)`: decimal, `0x` hex or leading-0 octal, trailing garbage
//!   ignored, no digits an error, and **not range-checked**: the value is truncated to
//!   16 bits (70000 becomes 4464), as QEMU does.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};

/// QEMU's address errors (its texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("host address '{0}' doesn't contain ':' separating host from port")]
    NoColon(String),
    #[error("host address '{0}' is not a valid IPv4 address")]
    NotIpv4(String),
    #[error("can't resolve host address '{0}'")]
    Unresolved(String),
    #[error("port number '{0}' is invalid")]
    BadPort(String),
}

/// glibc's `inet_aton`: 1 to 4 parts, each in C base-0 notation; the last part fills the
/// remaining bytes.
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut vals = Vec::with_capacity(4);
    for p in &parts {
        vals.push(strtoul_whole(p)?);
    }
    let last = *vals.last()?;
    let head = &vals[..vals.len() - 1];
    if head.iter().any(|v| *v > 0xff) {
        return None;
    }
    let max_last: u64 = match vals.len() {
        1 => 0xffff_ffff,
        2 => 0xff_ffff,
        3 => 0xffff,
        _ => 0xff,
    };
    if last > max_last {
        return None;
    }
    let mut n: u64 = 0;
    for (i, v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i);
    }
    Some(Ipv4Addr::from((n | last) as u32))
}

/// A whole string as C `strtoul(s, &end, 0)` with nothing left over.
fn strtoul_whole(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// C `strtol(s, &end, 0)` keeping only what parses; `None` when no digit was taken.
pub fn strtol_prefix(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (body, radix) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (&t[2..], 16)
    } else if t.starts_with('0') {
        (t, 8)
    } else {
        (t, 10)
    };
    let digits: String = body.chars().take_while(|c| c.is_digit(radix)).collect();
    if digits.is_empty() {
        return None;
    }
    let v = i64::from_str_radix(&digits, radix).unwrap_or(i64::MAX);
    Some(if neg { v.wrapping_neg() } else { v })
}

/// QEMU's host part: empty = any, digit-first = inet_aton, else a name lookup.
pub fn parse_host(host: &str) -> Result<Ipv4Addr, AddrError> {
    if host.is_empty() {
        return Ok(Ipv4Addr::UNSPECIFIED);
    }
    if host.starts_with(|c: char| c.is_ascii_digit()) {
        return inet_aton(host).ok_or_else(|| AddrError::NotIpv4(host.to_string()));
    }
    (host, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| {
            it.find_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4.ip()),
                SocketAddr::V6(_) => None,
            })
        })
        .ok_or_else(|| AddrError::Unresolved(host.to_string()))
}

/// QEMU's port part: strtol base 0, truncated to 16 bits.
pub fn parse_port(port: &str) -> Result<u16, AddrError> {
    strtol_prefix(port)
        .map(|v| v as u16)
        .ok_or_else(|| AddrError::BadPort(port.to_string()))
}

/// `parse_host_port`: `host:port`.
pub fn parse_host_port(s: &str) -> Result<SocketAddrV4, AddrError> {
    let (host, port) = s
        .split_once(':')
        .ok_or_else(|| AddrError::NoColon(s.to_string()))?;
    Ok(SocketAddrV4::new(parse_host(host)?, parse_port(port)?))
}

/// `convert_host_port`: host and port given apart (the 7.2 `dgram` netdev).
pub fn convert_host_port(host: &str, port: &str) -> Result<SocketAddrV4, AddrError> {
    Ok(SocketAddrV4::new(parse_host(host)?, parse_port(port)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_forms() {
        assert_eq!(inet_aton("127.0.0.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(inet_aton("10.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("0x7f.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(inet_aton("1.2.3"), Some(Ipv4Addr::new(1, 2, 0, 3)));
        assert_eq!(inet_aton("2130706433"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(inet_aton("010.0.0.1"), Some(Ipv4Addr::new(8, 0, 0, 1)));
        assert_eq!(inet_aton("256.0.0.1"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton("1..2"), None);
        assert_eq!(inet_aton("1.2.3.x"), None);
    }

    #[test]
    fn host_port_like_qemu() {
        assert_eq!(
            parse_host_port("127.0.0.1:1234").unwrap(),
            "127.0.0.1:1234".parse().unwrap()
        );
        assert_eq!(
            parse_host_port(":1234").unwrap(),
            "0.0.0.0:1234".parse().unwrap()
        );
        assert_eq!(parse_host_port("127.0.0.1:0x10").unwrap().port(), 16);
        assert_eq!(parse_host_port("127.0.0.1:70000").unwrap().port(), 4464);
        assert_eq!(parse_host_port("127.0.0.1:12ab").unwrap().port(), 12);
        assert_eq!(
            parse_host_port("127.0.0.1").unwrap_err().to_string(),
            "host address '127.0.0.1' doesn't contain ':' separating host from port"
        );
        assert_eq!(
            parse_host_port("127.0.0.1:x").unwrap_err().to_string(),
            "port number 'x' is invalid"
        );
        assert_eq!(
            parse_host_port("1.2.3.4.5:1").unwrap_err().to_string(),
            "host address '1.2.3.4.5' is not a valid IPv4 address"
        );
        // Split at the first colon: an IPv6 literal is not a host here.
        assert!(parse_host_port("::1:5").is_err());
    }
}
