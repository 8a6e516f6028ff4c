//! netdevd's command line, shaped like qemu-storage-daemon's:
//! `netdevd [--qmp ADDR]... [--netdev OPTS]... [--pidfile PATH] [--daemonize]`.
//! QEMU's single-dash spellings (`-qmp`, `-netdev`, ...) and `--opt=VALUE` work too.
//! Everything is checked here, before anything is started; a bad option is one line naming
//! it and a non-zero exit.

use std::path::PathBuf;

/// A QMP listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpAddr {
    Unix(PathBuf),
    Tcp(String, u16),
}

impl std::fmt::Display for QmpAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            QmpAddr::Tcp(h, p) if h.contains(':') => write!(f, "tcp:[{h}]:{p}"),
            QmpAddr::Tcp(h, p) => write!(f, "tcp:{h}:{p}"),
        }
    }
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    pub qmp: Vec<QmpAddr>,
    /// Option strings as given (keyval or JSON); parsed against the schema by the caller.
    pub netdevs: Vec<String>,
    /// `--nic` option strings (NICs served over vhost-user), parsed by the caller.
    pub nics: Vec<String>,
    pub pidfile: Option<PathBuf>,
    pub daemonize: bool,
    /// The resolv.conf naming the user netdev's upstream resolvers.
    pub resolv_conf: Option<PathBuf>,
    /// Neither `--qmp` nor `--netdev` was given: the built-in default applies.
    pub defaults: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
    /// `--netdev help`: list the netdev types.
    NetdevHelp,
}

pub const USAGE: &str = "\
usage: netdevd [--qmp ADDR]... [--netdev OPTS]... [--pidfile PATH] [--daemonize]

  --qmp ADDR       serve QMP on ADDR: unix:PATH[,server=on,wait=off] or
                   tcp:HOST:PORT[,server=on,wait=off] (repeatable)
  --netdev OPTS    create a netdev: QEMU's -netdev syntax (hubport,id=h0,hubid=0)
                   or JSON ({\"type\":\"hubport\",\"id\":\"h0\",\"hubid\":0}) (repeatable);
                   --netdev help lists the types
  --nic OPTS       serve a virtio-net NIC over vhost-user:
                   id=NAME,netdev=ID,socket=PATH[,macaddr=MAC][,model=virtio][,server=off]
                   (netdevd listens on PATH, or with server=off connects to a VMM there)
  --pidfile PATH   write the daemon's pid to PATH
  --resolv-conf PATH  where user netdevs find their upstream DNS resolvers
                   (default /etc/resolv.conf)
  --daemonize      run in the background once everything is set up
  --help, --version

QEMU's spellings -qmp, -netdev, -pidfile and -daemonize work too. With neither --qmp
nor --netdev the daemon starts on its built-in default and prints how to use it.
Logging: NETDEVD_LOG=debug (tracing's env-filter syntax).";

/// Parse `args` (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut opts = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let name = match name.strip_prefix("--").or_else(|| name.strip_prefix('-')) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(format!("unexpected argument '{arg}'")),
        };
        let mut value = |opt: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("--{opt} needs a value")),
            }
        };
        match name.as_str() {
            "help" | "h" => return Ok(Command::Help),
            "version" | "V" => return Ok(Command::Version),
            "qmp" => {
                let v = value("qmp")?;
                opts.qmp
                    .push(parse_qmp_addr(&v).map_err(|e| format!("--qmp '{v}': {e}"))?);
            }
            "nic" => {
                let v = value("nic")?;
                opts.nics.push(v);
            }
            "netdev" => {
                let v = value("netdev")?;
                if v == "help" || v == "type=help" {
                    return Ok(Command::NetdevHelp);
                }
                opts.netdevs.push(v);
            }
            "pidfile" => opts.pidfile = Some(PathBuf::from(value("pidfile")?)),
            "resolv-conf" => opts.resolv_conf = Some(PathBuf::from(value("resolv-conf")?)),
            "daemonize" => {
                if inline.is_some() {
                    return Err("--daemonize takes no value".into());
                }
                opts.daemonize = true;
            }
            _ => return Err(format!("unknown option '{arg}' (see --help)")),
        }
    }
    opts.defaults = opts.qmp.is_empty() && opts.netdevs.is_empty() && opts.nics.is_empty();
    Ok(Command::Run(opts))
}

/// `unix:PATH[,server=on][,wait=off]` or `tcp:HOST:PORT[,...]` (HOST may be `[v6]`).
pub fn parse_qmp_addr(s: &str) -> Result<QmpAddr, String> {
    let mut parts = s.split(',');
    let main = parts.next().unwrap_or_default();
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, "on"));
        let on = match v {
            "on" | "yes" | "true" => true,
            "off" | "no" | "false" => false,
            _ => return Err(format!("'{k}' expects on or off")),
        };
        match k {
            "server" if !on => return Err("only server mode is served (server=on)".into()),
            "server" => {}
            // netdevd never blocks waiting for a first client, whatever wait= says.
            "wait" => {}
            _ => return Err(format!("unknown parameter '{k}'")),
        }
    }
    if let Some(path) = main.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("empty socket path".into());
        }
        return Ok(QmpAddr::Unix(PathBuf::from(path)));
    }
    if let Some(hp) = main.strip_prefix("tcp:") {
        let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or("expected tcp:[ADDR]:PORT")?;
            (h, p)
        } else {
            hp.rsplit_once(':').ok_or("expected tcp:HOST:PORT")?
        };
        let port: u16 = port.parse().map_err(|_| format!("bad port '{port}'"))?;
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        return Ok(QmpAddr::Tcp(host.to_string(), port));
    }
    Err("expected unix:PATH or tcp:HOST:PORT".into())
}

/// Where the default QMP socket lives: `$XDG_RUNTIME_DIR/netdevd/qmp.sock`, else
/// `/tmp/netdevd-UID/qmp.sock`.
pub fn default_qmp_path() -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("netdevd"),
        _ => PathBuf::from(format!(
            "/tmp/netdevd-{}",
            rustix::process::getuid().as_raw()
        )),
    };
    dir.join("qmp.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn qemu_and_long_spellings() {
        let Command::Run(o) = p(&[
            "-qmp",
            "unix:/tmp/n.sock,server=on,wait=off",
            "--netdev=hubport,id=h0,hubid=0",
            "-daemonize",
            "--pidfile",
            "/tmp/p",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.qmp, [QmpAddr::Unix("/tmp/n.sock".into())]);
        assert_eq!(o.netdevs, ["hubport,id=h0,hubid=0"]);
        assert!(o.daemonize && !o.defaults);
        assert_eq!(o.pidfile.as_deref(), Some(std::path::Path::new("/tmp/p")));
        let Command::Run(o) = p(&[]).unwrap() else {
            panic!()
        };
        assert!(o.defaults);
        assert_eq!(p(&["--netdev", "help"]).unwrap(), Command::NetdevHelp);
    }

    #[test]
    fn bad_options_name_themselves() {
        assert!(p(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(p(&["--qmp"]).unwrap_err().contains("--qmp"));
        assert!(p(&["--qmp", "unix:/x,server=off"])
            .unwrap_err()
            .contains("server=on"));
        assert!(p(&["--qmp", "tcp:127.0.0.1:99999"])
            .unwrap_err()
            .contains("--qmp"));
        assert!(p(&["stray"]).unwrap_err().contains("stray"));
    }

    #[test]
    fn tcp_addresses() {
        assert_eq!(
            parse_qmp_addr("tcp:127.0.0.1:4444").unwrap(),
            QmpAddr::Tcp("127.0.0.1".into(), 4444)
        );
        assert_eq!(
            parse_qmp_addr("tcp:[::1]:4444,server=on,wait=off").unwrap(),
            QmpAddr::Tcp("::1".into(), 4444)
        );
        assert_eq!(
            parse_qmp_addr("tcp::4444").unwrap(),
            QmpAddr::Tcp("0.0.0.0".into(), 4444)
        );
    }
}
