//! The read-only TFTP server (RFC 1350, options RFC 2347/2348/2349: `blksize`, `tsize`,
//! `timeout`), answering on the gateway address, port 69, as libslirp's `tftp.c` does (replies
//! come from port 69).
//!
//! Only RRQ: WRQ is refused ("Access violation"). Names are resolved beneath the root: a
//! name with a `..` component is refused, and the resolved path (symlinks followed) must stay
//! inside the root, so no symlink leads out. At most [`MAX_SESSIONS`] transfers at once; a
//! block not acknowledged is sent again after the timeout, at most [`RETRIES`] times.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddrV4;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

pub const MAX_SESSIONS: usize = 32;
pub const RETRIES: u32 = 5;
const DEFAULT_BLKSIZE: usize = 512;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

struct Session {
    file: File,
    size: u64,
    blksize: usize,
    /// The block last sent (0: the OACK).
    block: u16,
    /// Bytes of the block last sent (for retransmission).
    last: Vec<u8>,
    /// The block last sent was shorter than `blksize`: its ACK ends the transfer.
    last_block: bool,
    timeout: Duration,
    deadline: Instant,
    retries: u32,
}

/// The server's transfers.
pub struct TftpServer {
    root: PathBuf,
    sessions: HashMap<SocketAddrV4, Session>,
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = vec![0, 5];
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

fn data(block: u16, bytes: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 3];
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(bytes);
    p
}

impl TftpServer {
    pub fn new(root: PathBuf) -> Self {
        TftpServer {
            root,
            sessions: HashMap::new(),
        }
    }

    /// Resolve a requested name beneath the root, or refuse it.
    fn resolve(&self, name: &str) -> Option<PathBuf> {
        let rel = Path::new(name.trim_start_matches('/'));
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let root = self.root.canonicalize().ok()?;
        let full = root.join(rel).canonicalize().ok()?;
        (full.starts_with(&root) && full.is_file()).then_some(full)
    }

    fn read_block(s: &mut Session, block: u16) -> Option<Vec<u8>> {
        let off = (block as u64 - 1) * s.blksize as u64;
        s.file.seek(SeekFrom::Start(off)).ok()?;
        let mut buf = vec![0u8; s.blksize];
        let mut n = 0;
        while n < buf.len() {
            match s.file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(_) => return None,
            }
        }
        buf.truncate(n);
        Some(buf)
    }

    fn send_block(s: &mut Session, block: u16, now: Instant) -> Option<Vec<u8>> {
        let bytes = Self::read_block(s, block)?;
        s.block = block;
        s.last_block = bytes.len() < s.blksize;
        s.last = data(block, &bytes);
        s.deadline = now + s.timeout;
        s.retries = 0;
        Some(s.last.clone())
    }

    /// A datagram from `client` to port 69; returns the reply, if any.
    pub fn handle(&mut self, client: SocketAddrV4, p: &[u8], now: Instant) -> Option<Vec<u8>> {
        let op = u16::from_be_bytes([*p.first()?, *p.get(1)?]);
        match op {
            1 => self.rrq(client, &p[2..], now),
            2 => Some(error(2, "Access violation")),
            4 => {
                let block = u16::from_be_bytes([*p.get(2)?, *p.get(3)?]);
                let s = self.sessions.get_mut(&client)?;
                if block != s.block {
                    return None;
                }
                if s.last_block && block != 0 {
                    self.sessions.remove(&client);
                    return None;
                }
                let next = block.wrapping_add(1);
                match Self::send_block(s, next, now) {
                    Some(d) => Some(d),
                    None => {
                        self.sessions.remove(&client);
                        Some(error(0, "Read error"))
                    }
                }
            }
            5 => {
                self.sessions.remove(&client);
                None
            }
            _ => Some(error(4, "Illegal TFTP operation")),
        }
    }

    fn rrq(&mut self, client: SocketAddrV4, body: &[u8], now: Instant) -> Option<Vec<u8>> {
        let mut fields = body
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned());
        let name = fields.next()?;
        let mode = fields.next()?.to_ascii_lowercase();
        if mode != "octet" && mode != "netascii" {
            return Some(error(4, "Unsupported transfer mode"));
        }
        let Some(path) = self.resolve(&name) else {
            return Some(error(1, "File not found"));
        };
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&client) {
            return Some(error(0, "Too many transfers"));
        }
        let Ok(file) = File::open(&path) else {
            return Some(error(1, "File not found"));
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut s = Session {
            file,
            size,
            blksize: DEFAULT_BLKSIZE,
            block: 0,
            last: Vec::new(),
            last_block: false,
            timeout: DEFAULT_TIMEOUT,
            deadline: now + DEFAULT_TIMEOUT,
            retries: 0,
        };
        // Options (RFC 2347): name, value pairs after the mode.
        let mut oack = vec![0u8, 6];
        let rest: Vec<String> = fields.filter(|f| !f.is_empty()).collect();
        for pair in rest.chunks(2) {
            let [key, val] = pair else { break };
            match key.to_ascii_lowercase().as_str() {
                "blksize" => {
                    if let Ok(b) = val.parse::<usize>() {
                        s.blksize = b.clamp(8, 1428);
                        oack.extend_from_slice(format!("blksize\0{}\0", s.blksize).as_bytes());
                    }
                }
                "tsize" => oack.extend_from_slice(format!("tsize\0{}\0", s.size).as_bytes()),
                "timeout" => {
                    if let Ok(t) = val.parse::<u64>() {
                        if (1..=255).contains(&t) {
                            s.timeout = Duration::from_secs(t);
                            oack.extend_from_slice(format!("timeout\0{t}\0").as_bytes());
                        }
                    }
                }
                _ => {}
            }
        }
        let reply = if oack.len() > 2 {
            s.last = oack.clone();
            s.deadline = now + s.timeout;
            oack
        } else {
            Self::send_block(&mut s, 1, now)?
        };
        self.sessions.insert(client, s);
        Some(reply)
    }

    /// Blocks to send again; transfers that gave up are dropped.
    pub fn timers(&mut self, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let mut out = Vec::new();
        self.sessions.retain(|c, s| {
            if s.deadline > now {
                return true;
            }
            if s.retries >= RETRIES {
                return false;
            }
            s.retries += 1;
            s.deadline = now + s.timeout;
            out.push((*c, s.last.clone()));
            true
        });
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions.values().map(|s| s.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = vec![0, 1];
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(b"octet\0");
        for (k, v) in opts {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        p
    }

    fn ack(block: u16) -> Vec<u8> {
        let mut p = vec![0, 4];
        p.extend_from_slice(&block.to_be_bytes());
        p
    }

    fn root() -> PathBuf {
        let d = std::env::temp_dir().join(format!("netdevd-tftp-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("boot.img"), vec![7u8; 1300]).unwrap();
        std::fs::write(d.join("sub/x"), b"x").unwrap();
        let outside =
            std::env::temp_dir().join(format!("netdevd-tftp-secret-{}", std::process::id()));
        std::fs::write(&outside, b"secret").unwrap();
        let _ = std::os::unix::fs::symlink(&outside, d.join("link"));
        d
    }

    #[test]
    fn transfer_with_and_without_options() {
        let mut t = TftpServer::new(root());
        let c: SocketAddrV4 = "10.0.2.15:3000".parse().unwrap();
        let now = Instant::now();
        let d1 = t.handle(c, &rrq("boot.img", &[]), now).unwrap();
        assert_eq!(&d1[..4], &[0, 3, 0, 1]);
        assert_eq!(d1.len(), 4 + 512);
        let d2 = t.handle(c, &ack(1), now).unwrap();
        assert_eq!(&d2[..4], &[0, 3, 0, 2]);
        let d3 = t.handle(c, &ack(2), now).unwrap();
        assert_eq!(d3.len(), 4 + 1300 - 1024);
        assert!(t.handle(c, &ack(3), now).is_none());
        assert!(t.sessions.is_empty());
        // Options: OACK first, then blocks of the negotiated size.
        let o = t
            .handle(
                c,
                &rrq("boot.img", &[("blksize", "1024"), ("tsize", "0")]),
                now,
            )
            .unwrap();
        assert_eq!(o, b"\0\x06blksize\x001024\0tsize\x001300\0".to_vec());
        let d1 = t.handle(c, &ack(0), now).unwrap();
        assert_eq!(d1.len(), 4 + 1024);
        // No acknowledgement: sent again after the timeout.
        let again = t.timers(now + Duration::from_secs(3));
        assert_eq!(again, vec![(c, d1)]);
    }

    #[test]
    fn no_escape_from_the_root() {
        let mut t = TftpServer::new(root());
        let c: SocketAddrV4 = "10.0.2.15:3001".parse().unwrap();
        let now = Instant::now();
        for name in ["../etc/passwd", "sub/../../x", "link", "nope", "sub"] {
            let r = t.handle(c, &rrq(name, &[]), now).unwrap();
            assert_eq!(&r[..4], &[0, 5, 0, 1], "{name}");
        }
        assert_eq!(
            &t.handle(c, &rrq("/sub/x", &[]), now).unwrap()[..4],
            &[0, 3, 0, 1]
        );
        let mut wrq = rrq("x", &[]);
        wrq[1] = 2;
        assert_eq!(&t.handle(c, &wrq, now).unwrap()[..4], &[0, 5, 0, 2]);
        assert_eq!(t.handle(c, &[0], now), None);
    }
}
