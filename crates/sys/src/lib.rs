//! The only home of raw syscalls in netdevd. Everything else is `#![forbid(unsafe_code)]`
//! and goes through `rustix` or this crate. Each `unsafe` block says why it is sound.
//!
//! - fd passing over unix sockets (SCM_RIGHTS), both ways;
//! - fds inherited at start-up (`fd=3` in options, as libvirt hands QEMU fds): recorded
//!   before the daemon opens anything, claimed at most once;
//! - a signalfd for SIGINT/SIGTERM/SIGHUP;
//! - `--daemonize` (fork, setsid, stdio to /dev/null);
//! - TAP devices, interface ioctls and network namespaces ([`tap`]).

pub mod tap;

use std::collections::BTreeSet;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::io::IoSliceMut;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// How many fds one message may carry; more are closed by the kernel's truncation.
pub const MAX_FDS_PER_MESSAGE: usize = 16;

/// Receive bytes and any fds that came with them (made close-on-exec).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg(
        sock,
        &mut iov,
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((msg.bytes, fds))
}

/// Like [`recv_with_fds`], but waits for data (for sockets left blocking).
pub fn recv_with_fds_blocking(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((msg.bytes, fds))
}

/// Send bytes with fds attached.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    let iov = [rustix::io::IoSlice::new(data)];
    Ok(sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?)
}

/// Make an fd non-blocking (or blocking).
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, on)?;
    Ok(())
}

static INHERITED: Mutex<Option<BTreeSet<RawFd>>> = Mutex::new(None);

/// Record the fds open above stderr before the daemon opens any of its own: only these
/// may later be claimed by number. Call first thing in `main`.
pub fn record_inherited_fds() {
    let mut set = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) {
                if n > 2 {
                    set.insert(n);
                }
            }
        }
    }
    // The directory handle itself was open while it was read; it is gone now.
    set.retain(|&n| fd_is_open(n));
    if let Ok(mut g) = INHERITED.lock() {
        *g = Some(set);
    }
}

fn fd_is_open(n: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table entry; an invalid number gives EBADF.
    unsafe { libc::fcntl(n, libc::F_GETFD) != -1 }
}

/// Whether fd number `n` was inherited at start-up and not claimed yet.
pub fn inherited_fd_available(n: RawFd) -> bool {
    INHERITED
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.contains(&n)))
        .unwrap_or(false)
        && fd_is_open(n)
}

/// Take ownership of inherited fd `n`. Each number can be claimed once.
pub fn claim_inherited_fd(n: RawFd) -> io::Result<OwnedFd> {
    let mut g = INHERITED
        .lock()
        .map_err(|_| io::Error::other("fd table poisoned"))?;
    let set = g.get_or_insert_with(BTreeSet::new);
    if !set.contains(&n) || !fd_is_open(n) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    set.remove(&n);
    // SAFETY: `n` was open when the process started, before this program opened anything,
    // so no other owner exists in this process; it is removed from the set above, so it is
    // never wrapped twice.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A signalfd delivering SIGINT, SIGTERM and SIGHUP (which are blocked for normal delivery).
pub fn termination_signalfd() -> io::Result<OwnedFd> {
    // SAFETY: plain libc calls on a locally owned, initialised sigset.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Read one pending signal number from a signalfd, if any.
pub fn read_signal(fd: BorrowedFd<'_>) -> Option<u32> {
    let mut buf = [0u8; 128];
    match rustix::io::read(fd, &mut buf) {
        Ok(128) => Some(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])),
        _ => None,
    }
}

/// Raise the soft limit on open files to the hard limit: each guest flow of the user
/// network is a host socket, and 1024 is too few for a guest with many connections.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.maximum
        .is_some_and(|max| l.current.is_some_and(|cur| cur < max))
        || l.maximum.is_none()
    {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// Set a socket's `SO_PEEK_OFF`: the next `MSG_PEEK` read starts `off` bytes past the
/// oldest unread byte. Unix sockets have it; TCP since Linux 6.9 (older kernels answer an
/// error, and callers peek from the start instead).
pub fn set_peek_off(fd: BorrowedFd<'_>, off: usize) -> io::Result<()> {
    let v: libc::c_int = off
        .try_into()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `v` is a live c_int and its size is passed; the fd is borrowed, so open.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drop up to `n` bytes from the front of a TCP socket's receive queue without copying
/// them anywhere (`recv` with `MSG_TRUNC`, which TCP takes as "discard"); returns how many
/// went. Non-blocking.
pub fn tcp_discard(fd: BorrowedFd<'_>, n: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC, TCP does not write to the buffer, so a null pointer is never
    // dereferenced; the fd is borrowed, so open.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            n,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if r >= 0 {
        Ok(r as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `readv` of one datagram or frame into `head` and then up to `max` bytes appended to `buf`
/// (into its spare capacity, never zeroed first); returns the bytes read in all and leaves
/// `buf` longer by what went past `head`. Non-blocking if the fd is.
pub fn readv_append(
    fd: BorrowedFd<'_>,
    head: &mut [u8],
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    buf.reserve(max);
    let len = buf.len();
    let iov = [
        libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: head.len(),
        },
        libc::iovec {
            // SAFETY: `len` is within the allocation (reserve above made room for `max`
            // more), so the pointer stays in bounds.
            iov_base: unsafe { buf.as_mut_ptr().add(len) }.cast(),
            iov_len: max,
        },
    ];
    let parts = if head.is_empty() { &iov[1..] } else { &iov[..] };
    // SAFETY: both iovecs point at memory this function holds exclusively (`head` by &mut,
    // the spare capacity of `buf` by &mut), at most as long as each; the kernel only writes.
    let r = unsafe { libc::readv(fd.as_raw_fd(), parts.as_ptr(), parts.len() as libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = r as usize;
    let tail = n.saturating_sub(head.len()).min(max);
    // SAFETY: the kernel wrote `tail` bytes into the spare capacity right after `len`
    // (readv fills the iovecs in order, so what went past `head` is there), so they are
    // initialised, and `len + tail` is within the capacity reserved above.
    unsafe { buf.set_len(len + tail) };
    Ok(n)
}

/// Ignore SIGPIPE: a client that goes away must not kill the daemon.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Fork into the background: the parent exits 0 once the child has set up; the child starts
/// a new session and points stdio at /dev/null. Call with a single thread only.
pub fn daemonize() -> io::Result<()> {
    // SAFETY: the process has one thread here (the daemon never starts others before this),
    // so the child may continue running arbitrary Rust code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        std::process::exit(0);
    }
    rustix::process::setsid()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}

/// Make `cmd` start with `fd` open as fd number `target` (not close-on-exec), the way
/// libvirt hands QEMU its tap and socket fds. `fd` is closed in this process once the child
/// is spawned (when `cmd` is dropped).
pub fn pass_fd(cmd: &mut std::process::Command, fd: OwnedFd, target: RawFd) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let src = fd.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe functions (dup2, fcntl). `fd` is moved into the closure, so `src`
    // stays open in the parent until the command (and the closure) is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            if src == target {
                let flags = libc::fcntl(target, libc::F_GETFD);
                if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(src, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsFd;

    #[test]
    fn fds_cross_a_socketpair() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (p, _q) = rustix::pipe::pipe().unwrap();
        send_with_fds(a.as_fd(), b"x", &[p.as_fd(), p.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(n, 1);
        assert_eq!(fds.len(), 2);
        send_with_fds(a.as_fd(), b"y", &[]).unwrap();
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len()), (1, 0));
    }

    #[test]
    fn unknown_numbers_cannot_be_claimed() {
        record_inherited_fds();
        assert!(claim_inherited_fd(987).is_err());
        assert!(!inherited_fd_available(987));
    }
}
