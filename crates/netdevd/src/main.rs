//! `netdevd`: QEMU's network layer as a standalone daemon. See the README.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod daemon;
mod drivers;
mod fds;
mod log;
mod registry;
mod state;
mod tokens;

use std::process::ExitCode;

use cli::{Command, Options, QmpAddr};
use daemon::Daemon;
use netdevd_qapi::NetdevVariant;
use state::State;

fn main() -> ExitCode {
    // Before anything is opened: which fds came from our parent (for `fd=N` options).
    netdevd_sys::record_inherited_fds();
    netdevd_sys::ignore_sigpipe();
    netdevd_sys::raise_nofile_limit();
    // `NETDEVD_LOG`: a level (`debug`) or per-target levels (`netdevd_usernet=debug,warn`).
    log::init();
    let cmd = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netdevd: {e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("netdevd {} (QMP as QEMU 7.2)", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::NetdevHelp => {
            println!("Available netdev backend types:");
            for t in ["hubport", "none (command line only: no network)"] {
                println!("{t}");
            }
            println!("Parsed and checked, not available yet:");
            for t in [
                "user",
                "tap",
                "l2tpv3",
                "socket",
                "vde",
                "bridge",
                "netmap",
                "vhost-user",
                "vhost-vdpa",
            ] {
                println!("{t}");
            }
            ExitCode::SUCCESS
        }
        Command::Run(opts) => match run(opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netdevd: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The TCP port the default socket listener tries first.
const DEFAULT_SOCKET_PORT: u16 = 5540;

/// The built-in default: a QMP socket and a virtual switch (hub 0) with a user-mode network
/// (DHCP, DNS, NAT to the host's network as QEMU's `-netdev user`), a socket listener and a
/// stream listener for VMs.
fn apply_defaults(opts: &mut Options) -> anyhow::Result<()> {
    let qmp = cli::default_qmp_path();
    let dir = qmp
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    opts.qmp.push(QmpAddr::Unix(qmp));
    // A fixed port is easier to remember; when it is taken, any free one will do.
    let port = match std::net::TcpListener::bind(("127.0.0.1", DEFAULT_SOCKET_PORT)) {
        Ok(_) => DEFAULT_SOCKET_PORT,
        Err(_) => 0,
    };
    opts.netdevs.extend([
        "user,id=user0".to_string(),
        "hubport,id=hub0-user0,hubid=0,netdev=user0".into(),
        format!("socket,id=vm0,listen=127.0.0.1:{port}"),
        "hubport,id=hub0-vm0,hubid=0,netdev=vm0".into(),
        format!(
            "stream,id=vm1,server=on,addr.type=unix,addr.path={}",
            dir.join("vm1.sock").display()
        ),
        "hubport,id=hub0-vm1,hubid=0,netdev=vm1".into(),
    ]);
    Ok(())
}

fn run(mut opts: Options) -> anyhow::Result<()> {
    if opts.defaults {
        apply_defaults(&mut opts)?;
    }
    // Everything is checked before anything is started.
    let mut netdevs = Vec::new();
    for s in &opts.netdevs {
        let nd =
            drivers::parse_netdev_option(s).map_err(|e| anyhow::anyhow!("--netdev '{s}': {e}"))?;
        netdevs.push((s.clone(), nd));
    }
    let reactor = std::rc::Rc::new(netdevd_backends::Reactor::new()?);
    let mut state = State::new(reactor);
    if let Some(r) = &opts.resolv_conf {
        state.resolv_conf = r.clone();
    }
    for (s, nd) in netdevs {
        // `none` on the command line means "no network", as QEMU's -nic none.
        if matches!(nd.variant, NetdevVariant::None) {
            continue;
        }
        drivers::netdev_add(
            &mut state.reg,
            nd,
            &mut None::<&mut fds::Monitor>,
            &state.resolv_conf,
        )
        .map_err(|e| anyhow::anyhow!("--netdev '{s}': {}", e.desc))?;
    }
    for (i, s) in opts.nics.iter().enumerate() {
        let o = drivers::nic::parse(s).map_err(|e| anyhow::anyhow!("--nic '{s}': {e}"))?;
        drivers::nic::add(&mut state.reg, &o, i)
            .map_err(|e| anyhow::anyhow!("--nic '{s}': {}", e.desc))?;
    }
    let mut daemon = Daemon::new(state)?;
    let mut bound = Vec::new();
    for addr in &opts.qmp {
        bound.push(
            daemon
                .listen(addr)
                .map_err(|e| anyhow::anyhow!("--qmp '{addr}': {e}"))?,
        );
    }
    daemon.handle_signals()?;
    announce_startup(&opts, &bound, &daemon);
    if opts.daemonize {
        netdevd_sys::daemonize()?;
    }
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("--pidfile '{}': {e}", p.display()))?;
    }
    let result = daemon.run();
    daemon.cleanup();
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::remove_file(p);
    }
    result?;
    Ok(())
}

fn announce_startup(opts: &Options, bound: &[QmpAddr], daemon: &Daemon) {
    for a in bound {
        println!("netdevd: QMP on {a}");
    }
    for (name, model, peer, up) in daemon.state.reg.net.list() {
        println!(
            "netdevd: netdev {name} ({model}{}{})",
            peer.map(|p| format!(", peer {p}")).unwrap_or_default(),
            if up { "" } else { ", link down" }
        );
    }
    if opts.defaults {
        let qmp = bound.first().map(ToString::to_string).unwrap_or_default();
        let sock = daemon.state.reg.listen_addr("vm0").unwrap_or_default();
        let stream = daemon.state.reg.listen_addr("vm1").unwrap_or_default();
        let sock_hostport = sock.trim_start_matches("tcp:");
        let stream_path = stream.trim_start_matches("unix:");
        println!(
            "netdevd: default configuration: a virtual switch (hub 0) with a user-mode network\n\
             (QEMU's -netdev user: DHCP from 10.0.2.15, gateway 10.0.2.2 = this host, DNS 10.0.2.3)\n\
             and two VM ports.\n\
             Attach a VM to each port with QEMU's own netdevs (one VM per port at a time):\n\
             \x20 qemu-system-x86_64 ... -netdev socket,id=net0,connect={sock_hostport} -device virtio-net-pci,netdev=net0\n\
             \x20 qemu-system-x86_64 ... -netdev stream,id=net0,server=off,addr.type=unix,addr.path={stream_path} -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:57\n\
             Manage it over QMP ({qmp}): qmp-shell, or socat - UNIX-CONNECT:<path>, then\n\
             \x20 {{\"execute\":\"qmp_capabilities\"}}\n\
             \x20 {{\"execute\":\"netdev_add\",\"arguments\":{{\"type\":\"stream\",\"id\":\"vm2\",\"server\":true,\"addr\":{{\"type\":\"unix\",\"path\":\"/tmp/vm2.sock\"}}}}}}\n\
             \x20 {{\"execute\":\"netdev_add\",\"arguments\":{{\"type\":\"hubport\",\"id\":\"hub0-vm2\",\"hubid\":0,\"netdev\":\"vm2\"}}}}"
        );
    }
}
