//! `netdevd`: QEMU's network layer as a standalone daemon. See the README.
#![forbid(unsafe_code)]

mod cli;
mod daemon;
mod drivers;
mod state;

use std::process::ExitCode;

use cli::{Command, Options, QmpAddr};
use daemon::Daemon;
use netdevd_qapi::NetdevVariant;
use state::State;

fn main() -> ExitCode {
    // Before anything is opened: which fds came from our parent (for `fd=N` options).
    netdevd_sys::record_inherited_fds();
    netdevd_sys::ignore_sigpipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NETDEVD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

/// The built-in default: a QMP socket and hub 0.
fn apply_defaults(opts: &mut Options) {
    opts.qmp.push(QmpAddr::Unix(cli::default_qmp_path()));
    opts.netdevs.push("hubport,id=hub0port0,hubid=0".into());
}

fn run(mut opts: Options) -> anyhow::Result<()> {
    if opts.defaults {
        apply_defaults(&mut opts);
    }
    // Everything is checked before anything is started.
    let mut netdevs = Vec::new();
    for s in &opts.netdevs {
        let nd =
            state::parse_netdev_option(s).map_err(|e| anyhow::anyhow!("--netdev '{s}': {e}"))?;
        netdevs.push((s.clone(), nd));
    }
    let reactor = std::rc::Rc::new(netdevd_backends::Reactor::new()?);
    let mut state = State::new(reactor);
    for (s, nd) in netdevs {
        // `none` on the command line means "no network", as QEMU's -nic none.
        if matches!(nd.variant, NetdevVariant::None) {
            continue;
        }
        drivers::netdev_add(&mut state, nd, &mut None::<&mut state::Monitor>)
            .map_err(|e| anyhow::anyhow!("--netdev '{s}': {}", e.desc))?;
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
    for (name, model, peer, up) in daemon.state.net.list() {
        println!(
            "netdevd: netdev {name} ({model}{}{})",
            peer.map(|p| format!(", peer {p}")).unwrap_or_default(),
            if up { "" } else { ", link down" }
        );
    }
    if opts.defaults {
        if let Some(QmpAddr::Unix(p)) = bound.first() {
            println!(
                "netdevd: default configuration: hub 0 is ready.\n\
                 \x20 talk to it:  qmp-shell {p}   (or: socat - UNIX-CONNECT:{p})\n\
                 \x20 then:        {{\"execute\":\"qmp_capabilities\"}}\n\
                 \x20              {{\"execute\":\"netdev_add\",\"arguments\":{{\"type\":\"hubport\",\"id\":\"vm1\",\"hubid\":0}}}}\n\
                 \x20 QEMU VMs attach through socket/stream netdevs once those drivers land (see README).",
                p = p.display()
            );
        }
    }
}
