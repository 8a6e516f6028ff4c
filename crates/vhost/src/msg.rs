//! vhost-user messages (the vhost-user protocol, QEMU `docs/interop/vhost-user.rst`), as
//! the back-end reads them from the front-end and answers them: a 12-byte header (request,
//! flags, payload size, little-endian), a payload of at most [`MAX_PAYLOAD`] bytes, and file
//! descriptors passed alongside (SCM_RIGHTS). Parsing is sans-IO and checked: a payload too
//! short for its request, a region count over [`MAX_REGIONS`], a missing fd, a wrong version
//! are errors, never a panic. Fds a message does not use are closed (dropped).

use std::os::fd::OwnedFd;

/// The header: request, flags, size.
pub const HEADER_LEN: usize = 12;
/// The largest payload accepted (the biggest message, a memory table of 8 regions, is 264
/// bytes; config space messages are at most 256 + 12).
pub const MAX_PAYLOAD: usize = 4096;
/// Regions in one `SET_MEM_TABLE` (the protocol's `VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_REGIONS: usize = 8;
/// Fds accepted with one message.
pub const MAX_FDS: usize = MAX_REGIONS;

/// Header flags: the protocol version (1), a reply, a reply wanted (`REPLY_ACK`).
pub const FLAG_VERSION: u32 = 0x1;
pub const FLAG_VERSION_MASK: u32 = 0x3;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// In `SET_VRING_KICK`/`CALL`/`ERR`: no fd comes with the message.
pub const VRING_NOFD: u64 = 0x100;
pub const VRING_INDEX_MASK: u64 = 0xff;

/// Request codes (front-end to back-end).
pub mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const NET_SET_MTU: u32 = 20;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
}

/// One guest memory region as the front-end describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub guest_phys_addr: u64,
    pub size: u64,
    /// Where the front-end has it mapped (vring addresses are in this space).
    pub user_addr: u64,
    /// Where in the fd the region starts.
    pub mmap_offset: u64,
}

/// `SET_VRING_ADDR`: the ring's parts, as front-end user addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringAddr {
    pub index: u32,
    pub flags: u32,
    pub desc: u64,
    pub used: u64,
    pub avail: u64,
    pub log: u64,
}

/// A message from the front-end.
#[derive(Debug)]
pub enum Request {
    GetFeatures,
    SetFeatures(u64),
    SetOwner,
    ResetOwner,
    /// The regions and, in the same order, their fds.
    SetMemTable(Vec<(Region, OwnedFd)>),
    SetLogBase,
    SetLogFd,
    SetVringNum {
        index: u32,
        num: u32,
    },
    SetVringAddr(VringAddr),
    SetVringBase {
        index: u32,
        num: u32,
    },
    GetVringBase {
        index: u32,
    },
    /// `fd: None` when the message says no fd comes (polling mode).
    SetVringKick {
        index: u32,
        fd: Option<OwnedFd>,
    },
    SetVringCall {
        index: u32,
        fd: Option<OwnedFd>,
    },
    SetVringErr {
        index: u32,
        fd: Option<OwnedFd>,
    },
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetQueueNum,
    SetVringEnable {
        index: u32,
        enable: bool,
    },
    SendRarp([u8; 6]),
    NetSetMtu(u64),
    SetBackendReqFd(OwnedFd),
    GetConfig {
        offset: u32,
        size: u32,
    },
    SetConfig {
        offset: u32,
        data: Vec<u8>,
    },
    GetMaxMemSlots,
    AddMemReg(Region, OwnedFd),
    RemMemReg(Region),
    /// A request this back-end does not know (answered as an error when a reply is asked).
    Unknown(u32),
}

/// A message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header, MsgError> {
        let b = b.get(..HEADER_LEN).ok_or(MsgError::Short)?;
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header {
            request: u(0),
            flags: u(4),
            size: u(8),
        };
        if h.flags & FLAG_VERSION_MASK != FLAG_VERSION {
            return Err(MsgError::Version(h.flags & FLAG_VERSION_MASK));
        }
        if h.size as usize > MAX_PAYLOAD {
            return Err(MsgError::TooBig(h.size));
        }
        Ok(h)
    }

    /// Whether the front-end asked for an acknowledgement (`REPLY_ACK`).
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message shorter than its header or its request's payload")]
    Short,
    #[error("protocol version {0} (only 1 is spoken)")]
    Version(u32),
    #[error("payload of {0} bytes (at most {MAX_PAYLOAD})")]
    TooBig(u32),
    #[error("{0} memory regions (at most {MAX_REGIONS})")]
    Regions(u32),
    #[error("the message needs a file descriptor and came without one")]
    MissingFd,
    #[error("config access of {0} bytes")]
    ConfigSize(u32),
}

fn u32_at(p: &[u8], at: usize) -> Result<u32, MsgError> {
    let b = p.get(at..at + 4).ok_or(MsgError::Short)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(p: &[u8], at: usize) -> Result<u64, MsgError> {
    let b = p.get(at..at + 8).ok_or(MsgError::Short)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn region_at(p: &[u8], at: usize) -> Result<Region, MsgError> {
    Ok(Region {
        guest_phys_addr: u64_at(p, at)?,
        size: u64_at(p, at + 8)?,
        user_addr: u64_at(p, at + 16)?,
        mmap_offset: u64_at(p, at + 24)?,
    })
}

/// The (index, fd) of a `SET_VRING_KICK`/`CALL`/`ERR`.
fn vring_fd(
    p: &[u8],
    fds: &mut std::vec::IntoIter<OwnedFd>,
) -> Result<(u32, Option<OwnedFd>), MsgError> {
    let v = u64_at(p, 0)?;
    let index = (v & VRING_INDEX_MASK) as u32;
    if v & VRING_NOFD != 0 {
        return Ok((index, None));
    }
    Ok((index, Some(fds.next().ok_or(MsgError::MissingFd)?)))
}

/// Parse a message: its header `h` (already checked) and payload `p` (`h.size` bytes), with
/// the fds that came with it.
pub fn parse(h: &Header, p: &[u8], fds: Vec<OwnedFd>) -> Result<Request, MsgError> {
    use code::*;
    let p = p.get(..h.size as usize).ok_or(MsgError::Short)?;
    let mut fds = fds.into_iter();
    let state = |p: &[u8]| -> Result<(u32, u32), MsgError> { Ok((u32_at(p, 0)?, u32_at(p, 4)?)) };
    Ok(match h.request {
        GET_FEATURES => Request::GetFeatures,
        SET_FEATURES => Request::SetFeatures(u64_at(p, 0)?),
        SET_OWNER => Request::SetOwner,
        RESET_OWNER => Request::ResetOwner,
        SET_MEM_TABLE => {
            let n = u32_at(p, 0)?;
            if n as usize > MAX_REGIONS {
                return Err(MsgError::Regions(n));
            }
            let mut regions = Vec::with_capacity(n as usize);
            for i in 0..n as usize {
                let r = region_at(p, 8 + i * 32)?;
                let fd = fds.next().ok_or(MsgError::MissingFd)?;
                regions.push((r, fd));
            }
            Request::SetMemTable(regions)
        }
        SET_LOG_BASE => Request::SetLogBase,
        SET_LOG_FD => Request::SetLogFd,
        SET_VRING_NUM => {
            let (index, num) = state(p)?;
            Request::SetVringNum { index, num }
        }
        SET_VRING_ADDR => Request::SetVringAddr(VringAddr {
            index: u32_at(p, 0)?,
            flags: u32_at(p, 4)?,
            desc: u64_at(p, 8)?,
            used: u64_at(p, 16)?,
            avail: u64_at(p, 24)?,
            log: u64_at(p, 32)?,
        }),
        SET_VRING_BASE => {
            let (index, num) = state(p)?;
            Request::SetVringBase { index, num }
        }
        GET_VRING_BASE => Request::GetVringBase {
            index: u32_at(p, 0)?,
        },
        SET_VRING_KICK => {
            let (index, fd) = vring_fd(p, &mut fds)?;
            Request::SetVringKick { index, fd }
        }
        SET_VRING_CALL => {
            let (index, fd) = vring_fd(p, &mut fds)?;
            Request::SetVringCall { index, fd }
        }
        SET_VRING_ERR => {
            let (index, fd) = vring_fd(p, &mut fds)?;
            Request::SetVringErr { index, fd }
        }
        GET_PROTOCOL_FEATURES => Request::GetProtocolFeatures,
        SET_PROTOCOL_FEATURES => Request::SetProtocolFeatures(u64_at(p, 0)?),
        GET_QUEUE_NUM => Request::GetQueueNum,
        SET_VRING_ENABLE => {
            let (index, num) = state(p)?;
            Request::SetVringEnable {
                index,
                enable: num != 0,
            }
        }
        SEND_RARP => {
            let b = p.get(..6).ok_or(MsgError::Short)?;
            let mut mac = [0u8; 6];
            mac.copy_from_slice(b);
            Request::SendRarp(mac)
        }
        NET_SET_MTU => Request::NetSetMtu(u64_at(p, 0)?),
        SET_BACKEND_REQ_FD => Request::SetBackendReqFd(fds.next().ok_or(MsgError::MissingFd)?),
        GET_CONFIG => {
            let (offset, size) = (u32_at(p, 0)?, u32_at(p, 4)?);
            if size > 256 {
                return Err(MsgError::ConfigSize(size));
            }
            Request::GetConfig { offset, size }
        }
        SET_CONFIG => {
            let (offset, size) = (u32_at(p, 0)?, u32_at(p, 4)?);
            let data = p
                .get(12..12 + size as usize)
                .ok_or(MsgError::ConfigSize(size))?
                .to_vec();
            Request::SetConfig { offset, data }
        }
        GET_MAX_MEM_SLOTS => Request::GetMaxMemSlots,
        ADD_MEM_REG => {
            let r = region_at(p, 8)?;
            Request::AddMemReg(r, fds.next().ok_or(MsgError::MissingFd)?)
        }
        REM_MEM_REG => Request::RemMemReg(region_at(p, 8)?),
        other => Request::Unknown(other),
    })
}

/// A request as a front-end sends it: the bytes (header and payload) and the fds to pass
/// with them (netdevd's side is the back-end; this is for its tests, fuzzing and
/// benchmarks, and for a front-end of its own).
pub fn encode(req: &Request) -> (Vec<u8>, Vec<std::os::fd::BorrowedFd<'_>>) {
    use code::*;
    use std::os::fd::AsFd;
    let mut p = Vec::new();
    let mut fds = Vec::new();
    let u64s =
        |p: &mut Vec<u8>, v: &[u64]| v.iter().for_each(|x| p.extend_from_slice(&x.to_le_bytes()));
    let u32s =
        |p: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| p.extend_from_slice(&x.to_le_bytes()));
    let region = |p: &mut Vec<u8>, r: &Region| {
        for x in [r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset] {
            p.extend_from_slice(&x.to_le_bytes());
        }
    };
    let vring_fd = |p: &mut Vec<u8>, index: u32, fd: &Option<OwnedFd>| {
        let flag = if fd.is_none() { VRING_NOFD } else { 0 };
        p.extend_from_slice(&(u64::from(index) | flag).to_le_bytes());
    };
    let code = match req {
        Request::GetFeatures => GET_FEATURES,
        Request::SetFeatures(f) => {
            u64s(&mut p, &[*f]);
            SET_FEATURES
        }
        Request::SetOwner => SET_OWNER,
        Request::ResetOwner => RESET_OWNER,
        Request::SetMemTable(t) => {
            u32s(&mut p, &[t.len() as u32, 0]);
            for (r, fd) in t {
                region(&mut p, r);
                fds.push(fd.as_fd());
            }
            SET_MEM_TABLE
        }
        Request::SetLogBase => SET_LOG_BASE,
        Request::SetLogFd => SET_LOG_FD,
        Request::SetVringNum { index, num } => {
            u32s(&mut p, &[*index, *num]);
            SET_VRING_NUM
        }
        Request::SetVringAddr(a) => {
            u32s(&mut p, &[a.index, a.flags]);
            u64s(&mut p, &[a.desc, a.used, a.avail, a.log]);
            SET_VRING_ADDR
        }
        Request::SetVringBase { index, num } => {
            u32s(&mut p, &[*index, *num]);
            SET_VRING_BASE
        }
        Request::GetVringBase { index } => {
            u32s(&mut p, &[*index, 0]);
            GET_VRING_BASE
        }
        Request::SetVringKick { index, fd }
        | Request::SetVringCall { index, fd }
        | Request::SetVringErr { index, fd } => {
            vring_fd(&mut p, *index, fd);
            fds.extend(fd.as_ref().map(|f| f.as_fd()));
            match req {
                Request::SetVringKick { .. } => SET_VRING_KICK,
                Request::SetVringCall { .. } => SET_VRING_CALL,
                _ => SET_VRING_ERR,
            }
        }
        Request::GetProtocolFeatures => GET_PROTOCOL_FEATURES,
        Request::SetProtocolFeatures(f) => {
            u64s(&mut p, &[*f]);
            SET_PROTOCOL_FEATURES
        }
        Request::GetQueueNum => GET_QUEUE_NUM,
        Request::SetVringEnable { index, enable } => {
            u32s(&mut p, &[*index, *enable as u32]);
            SET_VRING_ENABLE
        }
        Request::SendRarp(mac) => {
            p.extend_from_slice(mac);
            p.extend_from_slice(&[0, 0]);
            SEND_RARP
        }
        Request::NetSetMtu(m) => {
            u64s(&mut p, &[*m]);
            NET_SET_MTU
        }
        Request::SetBackendReqFd(fd) => {
            fds.push(fd.as_fd());
            SET_BACKEND_REQ_FD
        }
        Request::GetConfig { offset, size } => {
            u32s(&mut p, &[*offset, *size, 0]);
            p.resize(12 + *size as usize, 0);
            GET_CONFIG
        }
        Request::SetConfig { offset, data } => {
            u32s(&mut p, &[*offset, data.len() as u32, 0]);
            p.extend_from_slice(data);
            SET_CONFIG
        }
        Request::GetMaxMemSlots => GET_MAX_MEM_SLOTS,
        Request::AddMemReg(r, fd) => {
            u64s(&mut p, &[0]);
            region(&mut p, r);
            fds.push(fd.as_fd());
            ADD_MEM_REG
        }
        Request::RemMemReg(r) => {
            u64s(&mut p, &[0]);
            region(&mut p, r);
            REM_MEM_REG
        }
        Request::Unknown(c) => *c,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + p.len());
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&FLAG_VERSION.to_le_bytes());
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&p);
    (out, fds)
}

/// A reply to `request` carrying `payload`.
pub fn reply(request: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A reply carrying one u64 (features, queue counts, `REPLY_ACK`'s status: 0 is success).
pub fn reply_u64(request: u32, v: u64) -> Vec<u8> {
    reply(request, &v.to_le_bytes())
}

/// A reply carrying a vring state (index, num).
pub fn reply_state(request: u32, index: u32, num: u32) -> Vec<u8> {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&index.to_le_bytes());
    p[4..].copy_from_slice(&num.to_le_bytes());
    reply(request, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, payload: &[u8]) -> (Header, Vec<u8>) {
        let mut b = Vec::new();
        b.extend_from_slice(&request.to_le_bytes());
        b.extend_from_slice(&FLAG_VERSION.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        (Header::parse(&b).unwrap(), payload.to_vec())
    }

    fn fd() -> OwnedFd {
        rustix::pipe::pipe().unwrap().0
    }

    #[test]
    fn requests_parse_and_bad_ones_are_errors() {
        let (h, p) = msg(code::SET_FEATURES, &(1u64 << 32).to_le_bytes());
        assert!(matches!(parse(&h, &p, vec![]), Ok(Request::SetFeatures(f)) if f == 1 << 32));
        let (h, p) = msg(code::SET_VRING_NUM, &[1, 0, 0, 0, 0, 1, 0, 0]);
        assert!(matches!(
            parse(&h, &p, vec![]),
            Ok(Request::SetVringNum { index: 1, num: 256 })
        ));
        // A memory table of one region with its fd; one without is an error.
        let mut t = vec![1, 0, 0, 0, 0, 0, 0, 0];
        for v in [0x1000u64, 0x2000, 0x7f00_0000_0000, 0] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        let (h, p) = msg(code::SET_MEM_TABLE, &t);
        match parse(&h, &p, vec![fd()]) {
            Ok(Request::SetMemTable(r)) => {
                assert_eq!(r.len(), 1);
                assert_eq!(r[0].0.size, 0x2000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&h, &p, vec![]).unwrap_err(), MsgError::MissingFd);
        // Nine regions, a short payload, a kick without its fd, a wrong version.
        let (h, p) = msg(code::SET_MEM_TABLE, &[9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&h, &p, vec![]).unwrap_err(), MsgError::Regions(9));
        let (h, p) = msg(code::SET_VRING_ADDR, &[0; 20]);
        assert_eq!(parse(&h, &p, vec![]).unwrap_err(), MsgError::Short);
        let (h, p) = msg(code::SET_VRING_KICK, &1u64.to_le_bytes());
        assert_eq!(parse(&h, &p, vec![]).unwrap_err(), MsgError::MissingFd);
        let (h, p) = msg(code::SET_VRING_KICK, &(1u64 | VRING_NOFD).to_le_bytes());
        assert!(matches!(
            parse(&h, &p, vec![]),
            Ok(Request::SetVringKick { index: 1, fd: None })
        ));
        let mut b = code::GET_FEATURES.to_le_bytes().to_vec();
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err(), MsgError::Version(2));
        let mut b = code::GET_FEATURES.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&5000u32.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err(), MsgError::TooBig(5000));
        // What encode writes, parse reads back.
        let (b, fds) = encode(&Request::SetVringAddr(VringAddr {
            index: 1,
            flags: 0,
            desc: 1,
            used: 2,
            avail: 3,
            log: 4,
        }));
        assert!(fds.is_empty());
        let h = Header::parse(&b).unwrap();
        match parse(&h, &b[HEADER_LEN..], vec![]) {
            Ok(Request::SetVringAddr(a)) => assert_eq!((a.index, a.used, a.avail), (1, 2, 3)),
            other => panic!("{other:?}"),
        }
        let r = reply_u64(code::GET_FEATURES, 7);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[4..8], &(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    }
}
