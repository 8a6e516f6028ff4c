//! TAP devices and the interface ioctls around them (`/dev/net/tun`, `TUNSETIFF` and
//! friends, SIOC* for the bridge helper), and moving into a network namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `struct ifreq` as the tun and SIOC* ioctls use it: a name and a 24-byte union.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let b = name.as_bytes();
        if b.len() >= libc::IFNAMSIZ || b.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name too long",
            ));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }

    fn name(&self) -> String {
        let n = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..n]).into_owned()
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `ioctl(fd, req, arg)` with a pointer argument.
fn ioctl_ptr<T>(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is a pointer to a `T` of the
    // size the kernel expects for it (`IfReq` for the ifreq requests, `c_int`/`c_uint` for
    // the integer ones); `arg` is a valid, exclusively borrowed `T` for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, req, value)` with an integer argument passed by value.
fn ioctl_val(fd: BorrowedFd<'_>, req: libc::Ioctl, val: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests used with this helper take their argument by value (no pointer
    // is dereferenced by the kernel).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, val) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Tun flags.
pub const IFF_TAP: i16 = libc::IFF_TAP as i16;
pub const IFF_NO_PI: i16 = libc::IFF_NO_PI as i16;
pub const IFF_VNET_HDR: i16 = libc::IFF_VNET_HDR as i16;
pub const IFF_MULTI_QUEUE: i16 = libc::IFF_MULTI_QUEUE as i16;
pub const IFF_ONE_QUEUE: i16 = 0x2000;
/// Offload bits for [`tap_set_offload`].
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

fn open_tun() -> io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    Ok(OwnedFd::from(f))
}

/// The tun driver's supported flags (`TUNGETFEATURES`).
pub fn tap_features() -> io::Result<i16> {
    let fd = open_tun()?;
    let mut f: libc::c_uint = 0;
    ioctl_ptr(std::os::fd::AsFd::as_fd(&fd), libc::TUNGETFEATURES, &mut f)?;
    Ok(f as i16)
}

/// Open a TAP queue named `name` (empty: the kernel picks `tapN`) with `flags` added to
/// `IFF_TAP | IFF_NO_PI`. Returns the fd and the interface name.
pub fn tap_open(name: &str, flags: i16) -> io::Result<(OwnedFd, String)> {
    let fd = open_tun()?;
    let mut req = IfReq::new(name)?;
    req.set_short(IFF_TAP | IFF_NO_PI | flags);
    ioctl_ptr(std::os::fd::AsFd::as_fd(&fd), libc::TUNSETIFF, &mut req)?;
    Ok((fd, req.name()))
}

/// The name and flags of the tap behind `fd` (`TUNGETIFF`).
pub fn tap_get_iff(fd: BorrowedFd<'_>) -> io::Result<(String, i16)> {
    let mut req = IfReq::new("")?;
    ioctl_ptr(fd, libc::TUNGETIFF, &mut req)?;
    Ok((req.name(), req.short()))
}

/// Which offloaded frames this reader accepts from the kernel (`TUNSETOFFLOAD`).
pub fn tap_set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    ioctl_val(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong)
}

/// The size of the virtio-net header on this fd (`TUNSETVNETHDRSZ`).
pub fn tap_set_vnet_hdr_size(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    let mut v: libc::c_int = size;
    ioctl_ptr(fd, libc::TUNSETVNETHDRSZ, &mut v)
}

/// `TUNSETSNDBUF`.
pub fn tap_set_sndbuf(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    let mut v: libc::c_int = size;
    ioctl_ptr(fd, libc::TUNSETSNDBUF, &mut v)
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned at once.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// An interface's MTU.
pub fn if_mtu(name: &str) -> io::Result<i32> {
    let s = inet_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCGIFMTU as libc::Ioctl,
        &mut req,
    )?;
    Ok(req.int())
}

/// Set an interface's MTU.
pub fn if_set_mtu(name: &str, mtu: i32) -> io::Result<()> {
    let s = inet_socket()?;
    let mut req = IfReq::new(name)?;
    req.set_int(mtu);
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCSIFMTU as libc::Ioctl,
        &mut req,
    )
}

/// An interface's index.
pub fn if_index(name: &str) -> io::Result<i32> {
    let s = inet_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCGIFINDEX as libc::Ioctl,
        &mut req,
    )?;
    Ok(req.int())
}

/// Bring an interface up.
pub fn if_up(name: &str) -> io::Result<()> {
    let s = inet_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCGIFFLAGS as libc::Ioctl,
        &mut req,
    )?;
    let flags = req.short() | libc::IFF_UP as i16;
    req.set_short(flags);
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCSIFFLAGS as libc::Ioctl,
        &mut req,
    )
}

/// Set the first byte of an interface's MAC to 0xfe (so a bridge never takes it as its own).
pub fn if_mac_first_byte_fe(name: &str) -> io::Result<()> {
    let s = inet_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCGIFHWADDR as libc::Ioctl,
        &mut req,
    )?;
    // data = struct sockaddr { sa_family (2 bytes), sa_data[14] }: the MAC starts at 2.
    req.data[2] = 0xfe;
    ioctl_ptr(
        std::os::fd::AsFd::as_fd(&s),
        libc::SIOCSIFHWADDR as libc::Ioctl,
        &mut req,
    )
}

/// `SIOCBRADDIF` from linux/sockios.h (not in the libc crate).
const SIOCBRADDIF: libc::Ioctl = 0x89a2;

/// Add interface `port` to bridge `bridge` (`SIOCBRADDIF`).
pub fn bridge_add_if(bridge: &str, port: &str) -> io::Result<()> {
    let idx = if_index(port)?;
    let s = inet_socket()?;
    let mut req = IfReq::new(bridge)?;
    req.set_int(idx);
    ioctl_ptr(std::os::fd::AsFd::as_fd(&s), SIOCBRADDIF, &mut req)
}

/// Move this thread into the network namespace `ns` (a path such as `/run/netns/NAME` or
/// `/proc/PID/ns/net`). Returns an fd of the namespace it was in, to come back with
/// [`enter_netns_fd`].
pub fn enter_netns(ns: &std::path::Path) -> io::Result<OwnedFd> {
    let here = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?);
    let there = std::fs::File::open(ns)?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&there),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(here)
}

/// Move this thread into the network namespace `fd` refers to.
pub fn enter_netns_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::thread::move_into_link_name_space(
        fd,
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?)
}
