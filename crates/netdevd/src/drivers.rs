//! Netdev creation, in QEMU 7.2's order (`qmp_netdev_add` → `net_client_init1`):
//! id well-formed → type creatable → id not a duplicate → the driver's own checks and
//! resources. Nothing is half-made: a failure leaves the registry as it was.
//!
//! Working drivers: `hubport`, `socket` (every mode), `stream` and `dgram` (QEMU 7.2).
//! `none` means "no network" on the command line (as QEMU's `-nic none`) and is refused by
//! `netdev_add` as QEMU refuses it. Every other driver is checked with the option rules QEMU
//! applies before it touches a resource, then answered "not available yet" until its issue
//! lands.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use netdevd_backends::addr::{convert_host_port, inet_aton, parse_host_port};
use netdevd_backends::dgram::DgramConfig;
use netdevd_backends::stream::{StreamAddr, StreamConfig};
use netdevd_backends::tap::TapConfig;
use netdevd_core::net::NetError;
use netdevd_qapi::{
    NetdevDgramOptions, NetdevL2TPv3Options, NetdevSocketOptions, NetdevStreamOptions,
    NetdevTapOptions, NetdevVariant, NetdevVhostUserOptions, NetdevVhostVDPAOptions, SocketAddress,
    SocketAddressVariant,
};
use netdevd_qmp::{ErrorClass, QmpError};

use crate::state::{BackendKind, FdSource, State};

/// QMP's view of a core error.
pub fn net_error(e: NetError) -> QmpError {
    let class = match e {
        NetError::NotFound(_) => ErrorClass::DeviceNotFound,
        _ => ErrorClass::GenericError,
    };
    QmpError {
        class,
        desc: e.to_string(),
    }
}

fn err(desc: impl Into<String>) -> QmpError {
    QmpError::generic(desc)
}

/// Create a netdev. `fds` resolves `fd=` names (the calling monitor's, or none on the
/// command line).
pub fn netdev_add(
    state: &mut State,
    nd: netdevd_qapi::Netdev,
    fds: &mut dyn FdSource,
) -> Result<(), QmpError> {
    if !netdevd_core::id_wellformed(&nd.id) {
        return Err(err("Parameter 'id' expects an identifier"));
    }
    let kind = nd.variant.kind();
    if matches!(nd.variant, NetdevVariant::Nic(_) | NetdevVariant::None) {
        return Err(err(format!(
            "network backend '{}' is not compiled into this binary",
            kind.as_str()
        )));
    }
    if state.net.find_netdev(&nd.id).is_some() {
        return Err(err(format!("Duplicate ID '{}'", nd.id)));
    }
    match &nd.variant {
        NetdevVariant::Hubport(h) => {
            state
                .net
                .add_hubport(&nd.id, h.hubid, h.netdev.as_deref())
                .map_err(net_error)?;
            return Ok(());
        }
        NetdevVariant::Socket(o) => {
            check_socket(o, fds)?;
            let cfg = socket_config(o, fds)?;
            return state.add_backend(&nd.id, "socket", cfg);
        }
        NetdevVariant::Stream(o) => {
            let cfg = stream_config(o, fds)?;
            return state.add_backend(&nd.id, "stream", BackendKind::Stream(cfg));
        }
        NetdevVariant::Dgram(o) => {
            let cfg = dgram_config(o, fds)?;
            return state.add_backend(&nd.id, "dgram", BackendKind::Dgram(cfg));
        }
        NetdevVariant::Tap(o) => {
            check_tap(o, fds)?;
            let cfg = tap_config(o, fds)?;
            return state.add_backend(&nd.id, "tap", BackendKind::Tap(cfg));
        }
        NetdevVariant::User(o) => {
            let cfg = crate::user::config(o, &state.resolv_conf)?;
            return state.add_backend(&nd.id, "user", BackendKind::User(Box::new(cfg)));
        }
        NetdevVariant::Bridge(o) => {
            let br = o.br.as_deref().unwrap_or(DEFAULT_BRIDGE);
            let helper = o.helper.as_deref().unwrap_or(DEFAULT_HELPER);
            let fd = run_bridge_helper(helper, br)?;
            let cfg = tap_from_fds(vec![fd], format!("helper={helper},br={br}"))?;
            return state.add_backend(&nd.id, "bridge", BackendKind::Tap(cfg));
        }
        NetdevVariant::L2tpv3(o) => check_l2tpv3(o)?,
        NetdevVariant::VhostUser(o) => check_vhost_user(o)?,
        NetdevVariant::VhostVdpa(o) => check_vhost_vdpa(o)?,
        _ => {}
    }
    Err(err(format!(
        "netdev type '{}' is not available in netdevd yet",
        kind.as_str()
    )))
}

/// `net/socket.c` `net_init_socket`'s option rules.
fn check_socket(o: &NetdevSocketOptions, fds: &mut dyn FdSource) -> Result<(), QmpError> {
    let modes = [
        o.fd.is_some(),
        o.listen.is_some(),
        o.connect.is_some(),
        o.mcast.is_some(),
        o.udp.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err(err(
            "exactly one of listen=, connect=, mcast= or udp= is required",
        ));
    }
    if o.localaddr.is_some() && o.mcast.is_none() && o.udp.is_none() {
        return Err(err("localaddr= is only valid with mcast= or udp="));
    }
    if let Some(fd) = &o.fd {
        fds.check_fd(fd)?;
    }
    if o.udp.is_some() && o.localaddr.is_none() {
        return Err(err("localaddr= is mandatory with udp="));
    }
    Ok(())
}

fn addr_err(e: impl std::fmt::Display) -> QmpError {
    err(e.to_string())
}

/// A passed socket fd: a stream or a datagram socket (`net_socket_fd_init`).
fn fd_kind(fd: OwnedFd, param: &str, listening_ok: bool) -> Result<BackendKind, QmpError> {
    use rustix::net::{sockopt, SocketType};
    let ty = sockopt::socket_type(&fd).map_err(|e| err(format!("can't use fd={param}: {e}")))?;
    if ty == SocketType::STREAM {
        let listening = sockopt::socket_acceptconn(&fd).unwrap_or(false);
        if listening && listening_ok {
            return Ok(BackendKind::Stream(StreamConfig::Listening(fd)));
        }
        return Ok(BackendKind::Stream(StreamConfig::Connected(fd)));
    }
    if ty == SocketType::DGRAM {
        return Ok(BackendKind::Dgram(DgramConfig::Fd { fd, dest: None }));
    }
    Err(err(format!(
        "socket type={} for fd={param} must be either SOCK_DGRAM or SOCK_STREAM",
        ty.as_raw()
    )))
}

/// The `socket` netdev's mode, with QEMU's address rules (`net/socket.c`).
fn socket_config(o: &NetdevSocketOptions, fds: &mut dyn FdSource) -> Result<BackendKind, QmpError> {
    if let Some(fd) = &o.fd {
        let owned = fds.take_fd(fd)?;
        return fd_kind(owned, fd, false);
    }
    if let Some(l) = &o.listen {
        let a = parse_host_port(l).map_err(addr_err)?;
        return Ok(BackendKind::Stream(StreamConfig::Listen(StreamAddr::Inet(
            a.into(),
        ))));
    }
    if let Some(c) = &o.connect {
        let a = parse_host_port(c).map_err(addr_err)?;
        return Ok(BackendKind::Stream(StreamConfig::Connect(
            StreamAddr::Inet(a.into()),
        )));
    }
    if let Some(m) = &o.mcast {
        let group = parse_host_port(m).map_err(addr_err)?;
        let localaddr = match &o.localaddr {
            Some(l) => Some(
                inet_aton(l)
                    .ok_or_else(|| err(format!("localaddr '{l}' is not a valid IPv4 address")))?,
            ),
            None => None,
        };
        return Ok(BackendKind::Dgram(DgramConfig::Mcast { group, localaddr }));
    }
    if let Some(u) = &o.udp {
        let remote = parse_host_port(u).map_err(addr_err)?;
        let local =
            parse_host_port(o.localaddr.as_deref().unwrap_or_default()).map_err(addr_err)?;
        return Ok(BackendKind::Dgram(DgramConfig::Udp { local, remote }));
    }
    Err(err(
        "exactly one of listen=, connect=, mcast= or udp= is required",
    ))
}

/// An inet `SocketAddress` of the 7.2 netdevs: numeric hosts (IPv4 or IPv6) are taken as
/// they are; names are looked up. The port must be a number.
fn inet_addr(host: &str, port: &str) -> Result<SocketAddr, QmpError> {
    let p: u16 = port
        .parse()
        .map_err(|_| err(format!("port number '{port}' is invalid")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], p)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, p));
    }
    (host, p)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| err(format!("address resolution failed for {host}:{port}")))
}

fn stream_addr(a: &SocketAddress) -> Result<StreamAddr, QmpError> {
    match &a.variant {
        SocketAddressVariant::Inet(i) => Ok(StreamAddr::Inet(inet_addr(&i.host, &i.port)?)),
        SocketAddressVariant::Unix(u) => Ok(StreamAddr::Unix {
            path: PathBuf::from(&u.path),
            abstract_name: u.r#abstract == Some(true),
        }),
        SocketAddressVariant::Vsock(_) => Err(err("vsock addresses are not supported by netdevd")),
        SocketAddressVariant::Fd(_) => Err(err("an fd address cannot be used here")),
    }
}

/// QEMU 7.2's `stream` netdev.
fn stream_config(
    o: &NetdevStreamOptions,
    fds: &mut dyn FdSource,
) -> Result<StreamConfig, QmpError> {
    let server = o.server == Some(true);
    if let SocketAddressVariant::Fd(f) = &o.addr.variant {
        let fd = fds.take_fd(&f.str)?;
        return match fd_kind(fd, &f.str, server)? {
            BackendKind::Stream(c) => Ok(c),
            _ => Err(err(format!("fd={} is not a stream socket", f.str))),
        };
    }
    let addr = stream_addr(&o.addr)?;
    Ok(if server {
        StreamConfig::Listen(addr)
    } else {
        StreamConfig::Connect(addr)
    })
}

/// QEMU 7.2's `dgram` netdev, with its rules and texts (`net/dgram.c`).
fn dgram_config(o: &NetdevDgramOptions, fds: &mut dyn FdSource) -> Result<DgramConfig, QmpError> {
    let (local, remote) = (o.local.as_ref(), o.remote.as_ref());
    if let Some(SocketAddressVariant::Inet(r)) = remote.map(|r| &r.variant) {
        let group = convert_host_port(&r.host, &r.port).map_err(addr_err)?;
        if group.ip().is_multicast() {
            let localaddr = match local.map(|l| &l.variant) {
                None => None,
                Some(SocketAddressVariant::Inet(l)) => {
                    Some(inet_aton(&l.host).ok_or_else(|| {
                        err(format!(
                            "localaddr '{}' is not a valid IPv4 address",
                            l.host
                        ))
                    })?)
                }
                Some(_) => return Err(err("only support inet or fd type for local")),
            };
            return Ok(DgramConfig::Mcast { group, localaddr });
        }
    }
    let Some(local) = local else {
        return Err(err("dgram requires local= parameter"));
    };
    match remote {
        Some(r) => {
            if matches!(local.variant, SocketAddressVariant::Fd(_)) {
                return Err(err("don't set remote with local.fd"));
            }
            if std::mem::discriminant(&r.variant) != std::mem::discriminant(&local.variant) {
                return Err(err("remote and local types must be the same"));
            }
        }
        None => {
            if !matches!(local.variant, SocketAddressVariant::Fd(_)) {
                return Err(err("type=inet or type=unix requires remote parameter"));
            }
        }
    }
    match (&local.variant, remote.map(|r| &r.variant)) {
        (SocketAddressVariant::Inet(l), Some(SocketAddressVariant::Inet(r))) => {
            Ok(DgramConfig::Udp {
                local: convert_host_port(&l.host, &l.port).map_err(addr_err)?,
                remote: convert_host_port(&r.host, &r.port).map_err(addr_err)?,
            })
        }
        (SocketAddressVariant::Unix(l), Some(SocketAddressVariant::Unix(r))) => {
            Ok(DgramConfig::Unix {
                local: PathBuf::from(&l.path),
                remote: PathBuf::from(&r.path),
            })
        }
        (SocketAddressVariant::Fd(f), None) => {
            let fd = fds.take_fd(&f.str)?;
            Ok(DgramConfig::Fd { fd, dest: None })
        }
        _ => Err(err("only support inet or fd type for local")),
    }
}

/// The bridge QEMU's helper attaches to when none is named.
pub const DEFAULT_BRIDGE: &str = "br0";
/// Debian's QEMU bridge helper, QEMU's default `helper=`.
pub const DEFAULT_HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";
const DEFAULT_SCRIPT: &str = "/etc/qemu-ifup";
const DEFAULT_DOWNSCRIPT: &str = "/etc/qemu-ifdown";

fn strerror(e: &std::io::Error) -> String {
    netdevd_backends::strerror(e)
}

/// A script option: the default when absent, none for `no` or empty.
fn script_path(v: Option<&str>, default: &str) -> Option<PathBuf> {
    match v {
        None => Some(PathBuf::from(default)),
        Some("no") | Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
    }
}

/// Taps handed over as fds (`fd=`, `fds=`, the bridge helper): their vnet_hdr flag is read
/// from the kernel and must agree across queues.
fn tap_from_fds(fds: Vec<OwnedFd>, info: String) -> Result<TapConfig, QmpError> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut vnet = None;
    let mut ifname = String::new();
    for fd in &fds {
        let (name, flags) = netdevd_sys::tap::tap_get_iff(fd.as_fd()).map_err(|_| {
            err(format!(
                "Unable to query TUNGETIFF on FD {}",
                fd.as_raw_fd()
            ))
        })?;
        let v = flags & netdevd_sys::tap::IFF_VNET_HDR != 0;
        if vnet.is_some_and(|p| p != v) {
            return Err(err("vnet_hdr not consistent across given tap fds"));
        }
        vnet = Some(v);
        ifname = name;
    }
    Ok(TapConfig {
        fds,
        vnet_hdr: vnet.unwrap_or(false),
        ifname,
        downscript: None,
        info,
    })
}

/// The tap netdev: open or take the queues, run the up-script, set sndbuf.
fn tap_config(o: &NetdevTapOptions, fds: &mut dyn FdSource) -> Result<TapConfig, QmpError> {
    use netdevd_sys::tap::*;
    use std::os::fd::AsFd;
    // netdevd has no vhost-net datapath; QEMU 7.2 aborts here when /dev/vhost-net is absent.
    let want_vhost = o
        .vhost
        .unwrap_or(o.vhostfd.is_some() || o.vhostfds.is_some() || o.vhostforce == Some(true));
    if want_vhost {
        return Err(err("vhost-net requested but could not be initialized"));
    }
    if o.vhostfd.is_some() || o.vhostfds.is_some() {
        return Err(err("vhostfd(s)= is not valid without vhost"));
    }
    let mut cfg = if let Some(name) = &o.fd {
        let fd = fds.take_fd(name)?;
        tap_from_fds(vec![fd], format!("fd={name}"))?
    } else if let Some(list) = &o.fds {
        let mut taken = Vec::new();
        for name in list.split(':') {
            taken.push(fds.take_fd(name)?);
        }
        tap_from_fds(taken, format!("fds={list}"))?
    } else if let Some(helper) = &o.helper {
        let br = o.br.as_deref().unwrap_or(DEFAULT_BRIDGE);
        let fd = run_bridge_helper(helper, br)?;
        tap_from_fds(vec![fd], format!("helper={helper}"))?
    } else {
        let features = tap_features()
            .map_err(|e| err(format!("could not open /dev/net/tun: {}", strerror(&e))))?;
        let vnet = match o.vnet_hdr {
            None => features & IFF_VNET_HDR != 0,
            Some(true) if features & IFF_VNET_HDR == 0 => {
                return Err(err(
                    "vnet_hdr=1 requested, but no kernel support for IFF_VNET_HDR available",
                ))
            }
            Some(v) => v,
        };
        let queues = o.queues.unwrap_or(1);
        if queues > 1 && features & IFF_MULTI_QUEUE == 0 {
            return Err(err(
                "multiqueue required, but no kernel support for IFF_MULTI_QUEUE available",
            ));
        }
        if queues > 1024 {
            return Err(err("queues= must be at most 1024"));
        }
        let mut flags = if vnet { IFF_VNET_HDR } else { 0 };
        if queues > 1 {
            flags |= IFF_MULTI_QUEUE;
        }
        let mut name: String = o
            .ifname
            .clone()
            .unwrap_or_default()
            .chars()
            .take(15)
            .collect();
        let mut opened = Vec::new();
        for _ in 0..queues {
            let (fd, n) = tap_open(&name, flags).map_err(|e| {
                err(format!(
                    "could not configure /dev/net/tun ({name}): {}",
                    strerror(&e)
                ))
            })?;
            name = n;
            opened.push(fd);
        }
        let script = script_path(o.script.as_deref(), DEFAULT_SCRIPT);
        let downscript = script_path(o.downscript.as_deref(), DEFAULT_DOWNSCRIPT);
        if let Some(s) = &script {
            netdevd_backends::run_script(s, &name).map_err(|e| err(e.to_string()))?;
        }
        let show = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no".into())
        };
        let info = format!(
            "ifname={name},script={},downscript={}",
            show(&script),
            show(&downscript)
        );
        TapConfig {
            fds: opened,
            vnet_hdr: vnet,
            ifname: name,
            downscript,
            info,
        }
    };
    let sndbuf = match o.sndbuf {
        None | Some(0) => i32::MAX,
        Some(v) => v.min(i32::MAX as u64) as i32,
    };
    for fd in &cfg.fds {
        if tap_set_sndbuf(fd.as_fd(), sndbuf).is_err() && o.sndbuf.is_some() {
            return Err(err("TUNSETSNDBUF ioctl failed"));
        }
    }
    if cfg.info.is_empty() {
        cfg.info = format!("ifname={}", cfg.ifname);
    }
    Ok(cfg)
}

/// QEMU's bridge helper protocol (`net/tap.c` `net_bridge_run_helper`): the helper gets
/// `--use-vnet --fd=N --br=BR` (through `/bin/sh -c` when `helper` has a space or tab, and
/// without `--br=` when it names one itself), creates a tap on the bridge and sends its fd
/// back over the socket pair with one byte of data.
pub fn run_bridge_helper(helper: &str, br: &str) -> Result<OwnedFd, QmpError> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsFd;
    const CHILD_FD: i32 = 3;
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| err(format!("failed to create socketpair: {e}")))?;
    let mut cmd = if helper.contains([' ', '\t']) {
        let mut line = format!("{helper} --use-vnet --fd={CHILD_FD}");
        if !helper.contains("--br=") {
            line.push_str(&format!(" --br={br}"));
        }
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c").arg(line);
        c
    } else {
        let mut c = std::process::Command::new(helper);
        c.args([
            "--use-vnet",
            &format!("--fd={CHILD_FD}"),
            &format!("--br={br}"),
        ]);
        c
    };
    cmd.stdin(std::process::Stdio::null());
    netdevd_sys::pass_fd(&mut cmd, theirs, CHILD_FD);
    let mut child = cmd.spawn().map_err(|_| err("bridge helper failed"))?;
    drop(cmd);
    // A helper that hangs must not hang the daemon forever.
    let _ = rustix::net::sockopt::set_socket_timeout(
        &mine,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(30)),
    );
    let mut buf = [0u8; 16];
    let got = loop {
        match netdevd_sys::recv_with_fds_blocking(mine.as_fd(), &mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    let status = child.wait().map_err(|_| err("bridge helper failed"))?;
    let fd = match got {
        Ok((_, fds)) => fds.into_iter().next(),
        Err(_) => None,
    };
    if !status.success() {
        return Err(err("bridge helper failed"));
    }
    fd.ok_or_else(|| err("failed to recv file descriptor"))
}

/// `net/tap.c` `net_init_tap`'s option rules, with QEMU's aborts answered as errors.
fn check_tap(o: &NetdevTapOptions, fds: &mut dyn FdSource) -> Result<(), QmpError> {
    if let Some(fd) = &o.fd {
        if o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.helper.is_some()
            || o.queues.is_some()
            || o.fds.is_some()
            || o.vhostfds.is_some()
        {
            return Err(err(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd=",
            ));
        }
        fds.check_fd(fd)?;
    } else if let Some(list) = &o.fds {
        if o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.helper.is_some()
            || o.queues.is_some()
            || o.vhostfd.is_some()
        {
            return Err(err(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds=",
            ));
        }
        if list.is_empty() {
            // QEMU 7.2 aborts on an empty list.
            return Err(err("fds= needs at least one file descriptor"));
        }
        for fd in list.split(':') {
            fds.check_fd(fd)?;
        }
    } else if o.helper.is_some() {
        if o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.queues.is_some()
            || o.vhostfds.is_some()
        {
            return Err(err(
                "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are invalid with helper=",
            ));
        }
    } else {
        if o.vhostfds.is_some() {
            return Err(err("vhostfds= is invalid if fds= wasn't specified"));
        }
        if o.queues == Some(0) {
            // QEMU 7.2 aborts on queues=0.
            return Err(err("queues= must be at least 1"));
        }
    }
    Ok(())
}

/// `net/l2tpv3.c` `net_init_l2tpv3`'s option rules, in QEMU's order.
fn check_l2tpv3(o: &NetdevL2TPv3Options) -> Result<(), QmpError> {
    if o.offset.is_some_and(|off| off > 256) {
        return Err(err("offset must be less than 256 bytes"));
    }
    if o.rxcookie.is_some() != o.txcookie.is_some() {
        return Err(err("require both 'rxcookie' and 'txcookie' or neither"));
    }
    if o.udp == Some(true) && (o.srcport.is_none() || o.dstport.is_none()) {
        return Err(err("need both src and dst port for udp"));
    }
    Ok(())
}

/// `net/vhost-user.c`: netdevd has no chardevs yet, so every name is unknown.
fn check_vhost_user(o: &NetdevVhostUserOptions) -> Result<(), QmpError> {
    if let Some(q) = o.queues {
        if !(1..=1024).contains(&q) {
            return Err(err(
                "vhost-user number of queues must be in range [1, 1024]",
            ));
        }
    }
    Err(err(format!("chardev \"{}\" not found", o.chardev)))
}

/// `net/vhost-vdpa.c` (7.2 texts).
fn check_vhost_vdpa(o: &NetdevVhostVDPAOptions) -> Result<(), QmpError> {
    if o.vhostdev.is_none() {
        return Err(err(
            "vhost-vdpa: neither vhostdev= nor vhostfd= was specified",
        ));
    }
    Ok(())
}
