//! `netdevd-nstap`: give a network namespace a tap whose other end is netdevd, as
//! slirp4netns and pasta do for containers, while netdevd itself stays in the host
//! namespace (where its host sockets must live).
//!
//! The tap is opened inside the namespace (so the interface lives there), then the helper
//! returns to its own namespace and hands the fd over, either
//! - to a running netdevd over QMP (`getfd` + `netdev_add tap,fd=NAME`, plus a `hubport`
//!   with `--hub`), or
//! - to a command it starts, as inherited fds 3, 4, ... (`-- netdevd --netdev tap,id=t,fd=3`).
//!
//! usage:
//!   netdevd-nstap --netns NAME|PATH [--ifname tap0] [--vnet-hdr on|off] [--queues N]
//!                 (--qmp SOCKET --id ID [--hub HUBID] | [--first-fd N] -- COMMAND [ARGS...])
//!
//! Two namespaces for one daemon: nest it,
//! `netdevd-nstap --netns a -- netdevd-nstap --netns b --first-fd 4 -- netdevd
//!  --netdev tap,id=a,fd=3 --netdev tap,id=b,fd=4 ...`.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: netdevd-nstap --netns NAME|PATH [--ifname tap0] [--vnet-hdr on|off] [--queues N]\n\
                     \x20                    (--qmp SOCKET --id ID [--hub HUBID] | [--first-fd N] -- COMMAND [ARGS...])";

struct Opts {
    netns: PathBuf,
    ifname: String,
    vnet_hdr: bool,
    queues: u32,
    qmp: Option<PathBuf>,
    id: Option<String>,
    hub: Option<i32>,
    first_fd: i32,
    command: Vec<String>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        netns: PathBuf::new(),
        ifname: "tap0".into(),
        vnet_hdr: true,
        queues: 1,
        qmp: None,
        id: None,
        hub: None,
        first_fd: 3,
        command: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |n: &str| args.next().ok_or_else(|| format!("{n} needs a value"));
        match a.as_str() {
            "--netns" => {
                let v = val("--netns")?;
                o.netns = if v.contains('/') {
                    PathBuf::from(v)
                } else {
                    PathBuf::from("/run/netns").join(v)
                };
            }
            "--ifname" => o.ifname = val("--ifname")?,
            "--vnet-hdr" => {
                o.vnet_hdr = matches!(val("--vnet-hdr")?.as_str(), "on" | "yes" | "true")
            }
            "--queues" => {
                o.queues = val("--queues")?
                    .parse()
                    .map_err(|_| "--queues takes a number".to_string())?
            }
            "--qmp" => o.qmp = Some(PathBuf::from(val("--qmp")?)),
            "--id" => o.id = Some(val("--id")?),
            "--hub" => {
                o.hub = Some(
                    val("--hub")?
                        .parse()
                        .map_err(|_| "--hub takes a number".to_string())?,
                )
            }
            "--first-fd" => {
                o.first_fd = val("--first-fd")?
                    .parse()
                    .map_err(|_| "--first-fd takes a number".to_string())?
            }
            "--" => {
                o.command = args.by_ref().collect();
                break;
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if o.netns.as_os_str().is_empty() {
        return Err(format!("--netns is required\n{USAGE}"));
    }
    if o.command.is_empty() == o.qmp.is_none() {
        return Err(format!(
            "give either --qmp SOCKET --id ID or -- COMMAND\n{USAGE}"
        ));
    }
    if o.qmp.is_some() && o.id.is_none() {
        return Err("--qmp needs --id".into());
    }
    if o.queues == 0 {
        return Err("--queues must be at least 1".into());
    }
    Ok(o)
}

/// Open the tap queues inside the namespace, then come back.
fn open_in_netns(o: &Opts) -> Result<Vec<OwnedFd>, String> {
    use netdevd_sys::tap::*;
    let home = netdevd_sys::tap::enter_netns(&o.netns)
        .map_err(|e| format!("cannot enter {}: {e}", o.netns.display()))?;
    let mut flags = if o.vnet_hdr { IFF_VNET_HDR } else { 0 };
    if o.queues > 1 {
        flags |= IFF_MULTI_QUEUE;
    }
    let mut fds = Vec::new();
    let mut result = Ok(());
    for _ in 0..o.queues {
        match tap_open(&o.ifname, flags) {
            Ok((fd, _)) => fds.push(fd),
            Err(e) => {
                result = Err(format!(
                    "cannot create tap {} in {}: {e}",
                    o.ifname,
                    o.netns.display()
                ));
                break;
            }
        }
    }
    netdevd_sys::tap::enter_netns_fd(home.as_fd())
        .map_err(|e| format!("cannot return to the first namespace: {e}"))?;
    result.map(|()| fds)
}

fn qmp_line(r: &mut BufReader<UnixStream>) -> Result<serde_json::Value, String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("QMP connection closed".into());
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        if v.get("event").is_none() {
            return Ok(v);
        }
    }
}

fn qmp_cmd(
    s: &mut UnixStream,
    r: &mut BufReader<UnixStream>,
    cmd: serde_json::Value,
    fd: Option<&OwnedFd>,
) -> Result<(), String> {
    let text = cmd.to_string();
    match fd {
        Some(fd) => {
            netdevd_sys::send_with_fds(s.as_fd(), text.as_bytes(), &[fd.as_fd()])
                .map_err(|e| e.to_string())?;
        }
        None => s.write_all(text.as_bytes()).map_err(|e| e.to_string())?,
    }
    let reply = qmp_line(r)?;
    match reply.get("error") {
        Some(e) => Err(format!("{}: {}", cmd["execute"], e["desc"])),
        None => Ok(()),
    }
}

fn hand_to_qmp(o: &Opts, fds: Vec<OwnedFd>) -> Result<(), String> {
    let path = o.qmp.as_ref().ok_or("no --qmp")?;
    let id = o.id.as_deref().ok_or("no --id")?;
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    qmp_line(&mut r)?;
    qmp_cmd(
        &mut s,
        &mut r,
        serde_json::json!({"execute": "qmp_capabilities"}),
        None,
    )?;
    let mut names = Vec::new();
    for (i, fd) in fds.iter().enumerate() {
        let name = format!("{id}-q{i}");
        qmp_cmd(
            &mut s,
            &mut r,
            serde_json::json!({"execute": "getfd", "arguments": {"fdname": name}}),
            Some(fd),
        )?;
        names.push(name);
    }
    let mut args = serde_json::json!({"type": "tap", "id": id});
    if names.len() == 1 {
        args["fd"] = names[0].clone().into();
    } else {
        args["fds"] = names.join(":").into();
    }
    qmp_cmd(
        &mut s,
        &mut r,
        serde_json::json!({"execute": "netdev_add", "arguments": args}),
        None,
    )?;
    if let Some(h) = o.hub {
        let port = serde_json::json!({"type": "hubport", "id": format!("{id}-port"), "hubid": h, "netdev": id});
        qmp_cmd(
            &mut s,
            &mut r,
            serde_json::json!({"execute": "netdev_add", "arguments": port}),
            None,
        )?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netdevd-nstap: {e}");
            return ExitCode::from(2);
        }
    };
    let fds = match open_in_netns(&o) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("netdevd-nstap: {e}");
            return ExitCode::FAILURE;
        }
    };
    if o.qmp.is_some() {
        return match hand_to_qmp(&o, fds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netdevd-nstap: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut cmd = Command::new(&o.command[0]);
    cmd.args(&o.command[1..]);
    for (i, fd) in fds.into_iter().enumerate() {
        netdevd_sys::pass_fd(&mut cmd, fd, o.first_fd + i as i32);
    }
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    eprintln!("netdevd-nstap: cannot run {}: {e}", o.command[0]);
    ExitCode::FAILURE
}
