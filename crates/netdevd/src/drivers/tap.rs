//! The `tap` netdev (a tap created by name, or passed as fds, scripts run on creation and
//! deletion) and `bridge` (a tap from QEMU's bridge helper).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use netdevd_backends::tap::{TapBackend, TapConfig};
use netdevd_qapi::{NetdevBridgeOptions, NetdevTapOptions};
use netdevd_qmp::QmpError;

use super::err;
use crate::fds::FdSource;
use crate::registry::Registry;

/// Create a `tap` netdev `id`.
pub(super) fn add(
    reg: &mut Registry,
    id: &str,
    o: &NetdevTapOptions,
    fds: &mut dyn FdSource,
) -> Result<(), QmpError> {
    check_tap(o, fds)?;
    let cfg = tap_config(o, fds)?;
    reg.add_backend(id, "tap", |r| TapBackend::new(r, cfg))
}

/// Create a `bridge` netdev `id`: the helper opens the tap and attaches it to the bridge.
pub(super) fn add_bridge(
    reg: &mut Registry,
    id: &str,
    o: &NetdevBridgeOptions,
) -> Result<(), QmpError> {
    let br = o.br.as_deref().unwrap_or(DEFAULT_BRIDGE);
    let helper = o.helper.as_deref().unwrap_or(DEFAULT_HELPER);
    let fd = run_bridge_helper(helper, br)?;
    let cfg = tap_from_fds(vec![fd], format!("helper={helper},br={br}"))?;
    reg.add_backend(id, "bridge", |r| TapBackend::new(r, cfg))
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
