//! The `user` netdev: its options (`NetdevUserOptions`) mapped onto the user-mode stack's
//! plain config, with QEMU 7.2's checks and texts (`net/slirp.c` `net_init_slirp`,
//! `net_slirp_init`), then the user backend (`netdevd_backends::user`) made from it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use netdevd_backends::addr::inet_aton;
use netdevd_backends::user::UserBackend;
use netdevd_qapi::NetdevUserOptions;
use netdevd_qmp::QmpError;
use netdevd_usernet::config::{GuestFwd, GuestFwdTarget, HostFwd};
use netdevd_usernet::Config;

use crate::registry::Registry;

fn err(s: impl Into<String>) -> QmpError {
    QmpError::generic(s)
}

/// QEMU's classful guess when `net=` has no mask.
fn classful(a: Ipv4Addr) -> u8 {
    let o = a.octets();
    match o[0] {
        0..=127 => 8,
        172 if (16..32).contains(&o[1]) => 12,
        128..=191 => 16,
        192 if o[1] == 168 => 16,
        198 if o[1] & 0xfe == 18 => 15,
        224..=255 => 24,
        _ => 28,
    }
}

fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let p = m.leading_ones();
    (m.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
}

/// `net=ADDR[/MASK]`: MASK a prefix length 4..32 or a dotted mask.
fn parse_net(s: &str) -> Result<(Ipv4Addr, u8), QmpError> {
    let (addr, mask) = match s.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (s, None),
    };
    let addr: String = addr.chars().take(19).collect();
    let a = inet_aton(&addr).ok_or_else(|| err("Failed to parse netmask"))?;
    let prefix = match mask {
        None => classful(a),
        Some(m) if m.starts_with(|c: char| c.is_ascii_digit()) && !m.contains('.') => {
            let digits: String = m.chars().take_while(|c| c.is_ascii_digit()).collect();
            if digits.len() != m.len() {
                return Err(err("Failed to parse netmask (trailing chars)"));
            }
            let p: u32 = digits.parse().unwrap_or(0);
            if !(4..=32).contains(&p) {
                return Err(err("Invalid netmask provided (must be in range 4-32)"));
            }
            p as u8
        }
        Some(m) => {
            let mask = inet_aton(m).ok_or_else(|| err("Failed to parse netmask"))?;
            prefix_of(mask).ok_or_else(|| err("Failed to parse netmask"))?
        }
    };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    Ok((Ipv4Addr::from(u32::from(a) & mask), prefix))
}

/// A whole field as a C base-0 integer (`qemu_strtoi`).
fn int_field(s: &str) -> Option<i64> {
    netdevd_backends::addr::strtol_prefix(s).filter(|_| {
        let t = s.trim_start_matches(['-', '+']);
        let digits = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            h.chars().all(|c| c.is_ascii_hexdigit()) && !h.is_empty()
        } else {
            !t.is_empty() && t.chars().all(|c| c.is_ascii_digit())
        };
        digits
    })
}

/// One `hostfwd` rule, `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`, with QEMU's
/// reasons (`net/slirp.c` `slirp_hostfwd`). Beyond QEMU, either address may be an IPv6 one
/// in brackets: `tcp:[::1]:2222-:22` listens on the host's IPv6 loopback for the IPv4
/// guest, `tcp:[::1]:2222-[fec0::15]:22` forwards into an IPv6 guest, and `[]` as the guest
/// address means the guest's first IPv6 address learnt in the prefix. QEMU's own forms keep
/// QEMU's meaning (no brackets: IPv4 only).
fn parse_hostfwd(rule: &str, dhcp_start: Ipv4Addr) -> Result<HostFwd, QmpError> {
    let fail = |why: &str| err(format!("Invalid host forwarding rule '{rule}' ({why})"));
    let (proto, rest) = rule
        .split_once(':')
        .ok_or_else(|| fail("No : separators"))?;
    let udp = match proto {
        "" | "tcp" => false,
        "udp" => true,
        _ => return Err(fail("Bad protocol name")),
    };
    let (host_ip, rest) = match bracketed6(rest) {
        Some(Ok((a, rest))) => (
            IpAddr::V6(a),
            rest.strip_prefix(':')
                .ok_or_else(|| fail("Missing : separator"))?,
        ),
        Some(Err(())) => return Err(fail("Bad host address")),
        None => {
            let (haddr, rest) = rest
                .split_once(':')
                .ok_or_else(|| fail("Missing : separator"))?;
            let ip = if haddr.is_empty() {
                Ipv4Addr::UNSPECIFIED
            } else {
                inet_aton(haddr).ok_or_else(|| fail("Bad host address"))?
            };
            (IpAddr::V4(ip), rest)
        }
    };
    let (hport, rest) = rest
        .split_once('-')
        .ok_or_else(|| fail("Bad host port separator"))?;
    let host_port = int_field(hport)
        .filter(|p| (0..=65535).contains(p))
        .ok_or_else(|| fail("Bad host port"))?;
    let (guest_ip, gport) = match bracketed6(rest) {
        Some(Ok((a, rest))) => (
            IpAddr::V6(a),
            rest.strip_prefix(':')
                .ok_or_else(|| fail("Missing guest address"))?,
        ),
        Some(Err(())) => return Err(fail("Bad guest address")),
        None => {
            let (gaddr, gport) = rest
                .split_once(':')
                .ok_or_else(|| fail("Missing guest address"))?;
            let ip = if gaddr.is_empty() {
                dhcp_start
            } else {
                inet_aton(gaddr).ok_or_else(|| fail("Bad guest address"))?
            };
            (IpAddr::V4(ip), gport)
        }
    };
    let guest_port = int_field(gport)
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| fail("Bad guest port"))?;
    Ok(HostFwd {
        udp,
        host: SocketAddr::new(host_ip, host_port as u16),
        guest: SocketAddr::new(guest_ip, guest_port as u16),
        rule: rule.to_string(),
    })
}

/// netdevd's IPv6 form of a forwarding address: `[ADDR]` at the start of `s` (`[]` is `::`).
/// `None` when `s` does not start with a bracket, `Err` when the brackets hold no IPv6
/// address; otherwise the address and what follows the closing bracket.
fn bracketed6(s: &str) -> Option<Result<(Ipv6Addr, &str), ()>> {
    let inner = s.strip_prefix('[')?;
    let Some((a, rest)) = inner.split_once(']') else {
        return Some(Err(()));
    };
    if a.is_empty() {
        return Some(Ok((Ipv6Addr::UNSPECIFIED, rest)));
    }
    Some(a.parse().map(|a| (a, rest)).map_err(|_| ()))
}

/// Split a command line into words as a shell would (quotes and backslashes), without
/// running a shell — QEMU's `g_shell_parse_argv` for `guestfwd` `cmd:`.
fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// One `guestfwd` rule, `[tcp]:[server]:port-TARGET` with TARGET `cmd:COMMAND`,
/// `tcp:HOST:PORT` (QEMU's chardev form) or `HOST:PORT`; QEMU's texts.
fn parse_guestfwd(rule: &str, c: &Config, taken: &[GuestFwd]) -> Result<GuestFwd, QmpError> {
    let bad = || err(format!("Invalid guest forwarding rule '{rule}'"));
    let (proto, rest) = rule.split_once(':').ok_or_else(bad)?;
    if !(proto.is_empty() || proto == "tcp") {
        return Err(bad());
    }
    let (server, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (port, target) = rest.split_once('-').ok_or_else(bad)?;
    let mask = u32::from(c.netmask());
    let server = if server.is_empty() {
        Ipv4Addr::from(u32::from(c.net) | (0x0000_0204 & !mask))
    } else {
        inet_aton(server).ok_or_else(bad)?
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let server = std::net::SocketAddrV4::new(server, port);
    let conflict = || {
        err(format!(
            "Conflicting/invalid host:port in guest forwarding rule '{rule}'"
        ))
    };
    if !c.contains(*server.ip())
        || *server.ip() == c.host
        || *server.ip() == c.dns
        || taken.iter().any(|g| g.server == server)
    {
        return Err(conflict());
    }
    let target = if let Some(cmd) = target.strip_prefix("cmd:") {
        let argv = shell_words(cmd).filter(|a| !a.is_empty()).ok_or_else(bad)?;
        GuestFwdTarget::Command(argv)
    } else {
        let hp = target.strip_prefix("tcp:").unwrap_or(target);
        let a = netdevd_backends::addr::parse_host_port(hp).map_err(|_| {
            err(format!(
                "Could not open guest forwarding device 'guestfwd.tcp.{port}'"
            ))
        })?;
        GuestFwdTarget::Addr(std::net::SocketAddr::V4(a))
    };
    Ok(GuestFwd {
        server,
        target,
        rule: rule.to_string(),
    })
}

/// The stack's config for these options. `resolv_conf` names the upstream resolvers.
/// Create a `user` netdev `id`; the upstream resolvers come from `resolv_conf`.
pub(super) fn add(
    reg: &mut Registry,
    id: &str,
    o: &NetdevUserOptions,
    resolv_conf: &Path,
) -> Result<(), QmpError> {
    let cfg = config(o, resolv_conf)?;
    reg.add_backend(id, "user", |r| UserBackend::new(r, cfg))
}

pub fn config(o: &NetdevUserOptions, resolv_conf: &Path) -> Result<Config, QmpError> {
    let (ipv4, ipv6) = match (o.ipv4, o.ipv6) {
        (Some(a), Some(b)) => (a, b),
        (Some(a), None) => (a, !a),
        (None, Some(b)) => (!b, b),
        (None, None) => (true, true),
    };
    if !ipv4 && (o.net.is_some() || o.ip.is_some() || o.host.is_some() || o.dns.is_some()) {
        return Err(err("IPv4 disabled but netmask/host/dns provided"));
    }
    if !ipv6 && (o.ipv6_prefix.is_some() || o.ipv6_host.is_some() || o.ipv6_dns.is_some()) {
        return Err(err("IPv6 disabled but prefix/host6/dns6 provided"));
    }
    if !ipv4 && !ipv6 {
        return Err(err("IPv4 and IPv6 disabled"));
    }
    let mut c = Config {
        restrict: o.restrict == Some(true),
        ipv4,
        ipv6,
        ..Config::default()
    };
    let netspec = o
        .net
        .clone()
        .or_else(|| o.ip.as_ref().map(|ip| format!("{ip}/24")));
    if let Some(n) = &netspec {
        let (net, prefix) = parse_net(n)?;
        c.net = net;
        c.prefix = prefix;
    }
    let mask = u32::from(c.netmask());
    let in_net = |a: Ipv4Addr| u32::from(a) & mask == u32::from(c.net);
    let default_at = |x: u32| Ipv4Addr::from(u32::from(c.net) | (x & !mask));
    c.host = match &o.host {
        Some(h) => inet_aton(h).ok_or_else(|| err("Failed to parse host"))?,
        None => default_at(0x0000_0202),
    };
    if !in_net(c.host) {
        return Err(err("Host doesn't belong to network"));
    }
    c.dns = match &o.dns {
        Some(d) => inet_aton(d).ok_or_else(|| err("Failed to parse DNS"))?,
        None => default_at(0x0000_0203),
    };
    if c.restrict && !in_net(c.dns) {
        return Err(err("DNS doesn't belong to network"));
    }
    if c.dns == c.host {
        return Err(err("DNS must be different from host"));
    }
    c.dhcp_start = match &o.dhcpstart {
        Some(d) => inet_aton(d).ok_or_else(|| err("Failed to parse DHCP start address"))?,
        None => default_at(0x0000_020f),
    };
    if !in_net(c.dhcp_start) {
        return Err(err("DHCP doesn't belong to network"));
    }
    if c.dhcp_start == c.host || c.dhcp_start == c.dns {
        return Err(err("DHCP must be different from host and DNS"));
    }
    let smbserver = match &o.smbserver {
        Some(a) => Some(inet_aton(a).ok_or_else(|| err("Failed to parse SMB address"))?),
        None => None,
    };
    // IPv6, after the IPv4 checks as in QEMU: the prefix as given (not masked), length 0
    // meaning 64, host and DNS defaulting to the prefix with its last byte ORed with 2 and 3.
    if let Some(p) = &o.ipv6_prefix {
        c.ipv6_prefix = p.parse().map_err(|_| err("Failed to parse IPv6 prefix"))?;
    }
    match o.ipv6_prefixlen {
        None | Some(0) => c.ipv6_prefixlen = 64,
        Some(p @ 1..=126) => c.ipv6_prefixlen = p as u8,
        Some(_) => {
            return Err(err(
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ))
        }
    }
    let prefix_or = |x: u8| {
        let mut b = c.ipv6_prefix.octets();
        b[15] |= x;
        std::net::Ipv6Addr::from(b)
    };
    c.ipv6_host = match &o.ipv6_host {
        Some(h) => {
            let a = h.parse().map_err(|_| err("Failed to parse IPv6 host"))?;
            if !c.in_prefix6(a) {
                return Err(err("IPv6 Host doesn't belong to network"));
            }
            a
        }
        None => prefix_or(2),
    };
    c.ipv6_dns = match &o.ipv6_dns {
        Some(d) => {
            let a = d.parse().map_err(|_| err("Failed to parse IPv6 DNS"))?;
            if c.restrict && !c.in_prefix6(a) {
                return Err(err("IPv6 DNS doesn't belong to network"));
            }
            a
        }
        None => prefix_or(3),
    };
    if o.hostname.as_ref().is_some_and(|h| h.len() > 255) {
        return Err(err("'vhostname' parameter cannot exceed 255 bytes"));
    }
    if o.tftp_server_name.as_ref().is_some_and(|t| t.len() > 255) {
        return Err(err("'tftp-server-name' parameter cannot exceed 255 bytes"));
    }
    if let Some(d) = &o.domainname {
        if d.is_empty() {
            return Err(err("'domainname' parameter cannot be empty"));
        }
        if d.len() > 255 {
            return Err(err("'domainname' parameter cannot exceed 255 bytes"));
        }
    }
    // libslirp aborts on a BOOTP file name of 128 bytes or more: refused here.
    if o.bootfile.as_ref().is_some_and(|b| b.len() >= 128) {
        return Err(err("'bootfile' parameter cannot exceed 127 bytes"));
    }
    c.hostname = o.hostname.clone();
    c.domainname = o.domainname.clone();
    c.dnssearch = o
        .dnssearch
        .iter()
        .flatten()
        .map(|s| s.str.clone())
        .collect();
    c.bootfile = o.bootfile.clone();
    c.tftp_server_name = o.tftp_server_name.clone();
    // The directory is not checked now, as in QEMU: a missing one answers "File not found".
    c.tftp_root = o.tftp.as_ref().map(std::path::PathBuf::from);
    c.dns_upstream =
        Config::parse_resolv_conf(&std::fs::read_to_string(resolv_conf).unwrap_or_default());
    // QEMU installs the rules last to first; the first failure is the one reported.
    for r in o.hostfwd.iter().flatten().rev() {
        c.hostfwd.push(parse_hostfwd(&r.str, c.dhcp_start)?);
    }
    c.hostfwd.reverse();
    // The SMB server, after the host forwards and before the guest forwards (QEMU's order).
    let mut guestfwd: Vec<GuestFwd> = Vec::new();
    let smb = match &o.smb {
        Some(dir) => Some(smb_forwards(
            dir,
            smbserver.unwrap_or_else(|| default_at(0x0000_0204)),
            &c,
            &mut guestfwd,
        )?),
        None => None,
    };
    // Guest forwards, last to first as QEMU installs them.
    for r in o.guestfwd.iter().flatten().rev() {
        let g = parse_guestfwd(&r.str, &c, &guestfwd)?;
        guestfwd.push(g);
    }
    guestfwd.reverse();
    c.guestfwd = guestfwd;
    c.smb_dir = smb.map(|s| s.files());
    Ok(c)
}

/// The name of the user netdevd runs as (the owner of `/proc/self` is the effective uid),
/// from `/etc/passwd`.
fn effective_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// Where QEMU looks for the SMB server (Debian's `samba`).
pub const SMBD: &str = "/usr/sbin/smbd";

/// The private SMB server of a user netdev, before its directory exists.
struct SmbSetup {
    dir: std::path::PathBuf,
    export: String,
    user: String,
}

impl SmbSetup {
    /// The private directory and its configuration: `export` as share `qemu`, writable,
    /// for guests without a password, its files owned by `user`; every path smbd writes
    /// (state, locks, logs, sockets) inside the directory, nothing of the host's Samba
    /// touched.
    fn files(&self) -> (std::path::PathBuf, String) {
        let d = self.dir.display();
        let conf = format!(
            "# netdevd's private SMB server for one user netdev\n\
             [global]\n\
             \tprivate dir = {d}\n\tpid directory = {d}\n\tlock directory = {d}\n\
             \tstate directory = {d}\n\tcache directory = {d}\n\tncalrpc dir = {d}/ncalrpc\n\
             \tlog file = {d}/log.smbd\n\tsmb passwd file = {d}/smbpasswd\n\
             \tinterfaces = 127.0.0.1\n\tbind interfaces only = yes\n\
             \tsecurity = user\n\tmap to guest = Bad User\n\
             \tload printers = no\n\tprinting = bsd\n\tdisable spoolss = yes\n\
             \tusershare max shares = 0\n\
             [qemu]\n\
             \tpath = {}\n\tread only = no\n\tguest ok = yes\n\tforce user = {}\n",
            self.export, self.user
        );
        (self.dir.clone(), conf)
    }
}

/// QEMU's `smb=DIR,smbserver=ADDR`: connections of the guest to ADDR ports 139 and 445 each
/// start `smbd` on the connection (inetd style, as QEMU runs it), with a configuration of
/// its own in a private directory the driver makes when it starts.
fn smb_forwards(
    export: &str,
    server: Ipv4Addr,
    c: &Config,
    taken: &mut Vec<GuestFwd>,
) -> Result<SmbSetup, QmpError> {
    if std::fs::metadata(SMBD).is_err() {
        return Err(err(format!("Could not find '{SMBD}', please install it")));
    }
    if let Err(e) = std::fs::read_dir(export) {
        let text = e.to_string();
        let text = text.split(" (os error").next().unwrap_or(&text);
        return Err(err(format!(
            "Error accessing shared directory '{export}': {text}"
        )));
    }
    let user = effective_user().ok_or_else(|| err("Failed to retrieve user name"))?;
    let dir = std::env::temp_dir().join(format!(
        "netdevd-smb.{}.{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let conf = dir.join("smb.conf");
    let argv = vec![
        SMBD.to_string(),
        "-l".to_string(),
        dir.display().to_string(),
        "-s".to_string(),
        conf.display().to_string(),
    ];
    for port in [139, 445] {
        let fwd = std::net::SocketAddrV4::new(server, port);
        if !c.contains(server)
            || server == c.host
            || server == c.dns
            || taken.iter().any(|g| g.server == fwd)
        {
            return Err(err("Conflicting/invalid smbserver address"));
        }
        taken.push(GuestFwd {
            server: fwd,
            target: GuestFwdTarget::Command(argv.clone()),
            rule: format!("smb {}:{port}", server),
        });
    }
    Ok(SmbSetup {
        dir,
        export: export.to_string(),
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: serde_json::Value) -> NetdevUserOptions {
        serde_json::from_value(v).unwrap()
    }

    fn cfg(v: serde_json::Value) -> Result<Config, String> {
        config(&opts(v), Path::new("/nonexistent")).map_err(|e| e.desc)
    }

    #[test]
    fn defaults_and_moved_network() {
        let c = cfg(serde_json::json!({})).unwrap();
        assert_eq!(
            (c.host, c.dns, c.dhcp_start),
            (
                Ipv4Addr::new(10, 0, 2, 2),
                Ipv4Addr::new(10, 0, 2, 3),
                Ipv4Addr::new(10, 0, 2, 15)
            )
        );
        let c = cfg(serde_json::json!({"net": "192.168.76.0/24"})).unwrap();
        assert_eq!(
            (c.host, c.dns, c.dhcp_start),
            (
                Ipv4Addr::new(192, 168, 76, 2),
                Ipv4Addr::new(192, 168, 76, 3),
                Ipv4Addr::new(192, 168, 76, 15)
            )
        );
        let c = cfg(serde_json::json!({"net": "10.5.0.0/255.255.0.0"})).unwrap();
        assert_eq!(c.prefix, 16);
        assert_eq!(c.host, Ipv4Addr::new(10, 5, 2, 2));
        let c = cfg(serde_json::json!({"ip": "10.7.7.0"})).unwrap();
        assert_eq!(c.net, Ipv4Addr::new(10, 7, 7, 0));
    }

    #[test]
    fn qemu_texts() {
        for (v, want) in [
            (
                serde_json::json!({"net": "10.0.2.0/33"}),
                "Invalid netmask provided (must be in range 4-32)",
            ),
            (
                serde_json::json!({"net": "10.0.2.0/24x"}),
                "Failed to parse netmask (trailing chars)",
            ),
            (
                serde_json::json!({"net": "bogus"}),
                "Failed to parse netmask",
            ),
            (
                serde_json::json!({"host": "10.0.3.2"}),
                "Host doesn't belong to network",
            ),
            (serde_json::json!({"host": "x"}), "Failed to parse host"),
            (
                serde_json::json!({"dns": "10.0.2.2"}),
                "DNS must be different from host",
            ),
            (
                serde_json::json!({"dns": "10.9.9.9", "restrict": true}),
                "DNS doesn't belong to network",
            ),
            (
                serde_json::json!({"dhcpstart": "10.0.9.15"}),
                "DHCP doesn't belong to network",
            ),
            (
                serde_json::json!({"dhcpstart": "10.0.2.3"}),
                "DHCP must be different from host and DNS",
            ),
            (
                serde_json::json!({"ipv4": false, "ipv6": false}),
                "IPv4 and IPv6 disabled",
            ),
            (
                serde_json::json!({"ipv6": true, "net": "10.0.2.0/24"}),
                "IPv4 disabled but netmask/host/dns provided",
            ),
            (
                serde_json::json!({"ipv6-prefixlen": 127}),
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ),
            (
                serde_json::json!({"ipv6-prefix": "garbage"}),
                "Failed to parse IPv6 prefix",
            ),
            (
                serde_json::json!({"ipv6-prefix": "garbage", "dhcpstart": "10.0.2.2"}),
                "DHCP must be different from host and DNS",
            ),
            (
                serde_json::json!({"ipv6-host": "fec0::1::"}),
                "Failed to parse IPv6 host",
            ),
            (
                serde_json::json!({"ipv6-host": "fec0:0:0:1::2"}),
                "IPv6 Host doesn't belong to network",
            ),
            (
                serde_json::json!({"ipv6-dns": "x"}),
                "Failed to parse IPv6 DNS",
            ),
            (
                serde_json::json!({"ipv6-dns": "2001:db8::3", "restrict": true}),
                "IPv6 DNS doesn't belong to network",
            ),
            (
                serde_json::json!({"ipv6": false, "ipv6-host": "fec0::2"}),
                "IPv6 disabled but prefix/host6/dns6 provided",
            ),
            (
                serde_json::json!({"domainname": ""}),
                "'domainname' parameter cannot be empty",
            ),
            (
                serde_json::json!({"bootfile": "x".repeat(128)}),
                "'bootfile' parameter cannot exceed 127 bytes",
            ),
        ] {
            assert_eq!(cfg(v.clone()).unwrap_err(), want, "{v}");
        }
        assert!(
            cfg(serde_json::json!({"dns": "10.9.9.9"})).is_ok(),
            "dns outside the network is fine unrestricted"
        );
    }

    #[test]
    fn ipv6_addressing() {
        let ip6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let c = config(&opts(serde_json::json!({})), Path::new("/nonexistent")).unwrap();
        assert!(c.ipv6);
        assert_eq!((c.ipv6_prefix, c.ipv6_prefixlen), (ip6("fec0::"), 64));
        assert_eq!((c.ipv6_host, c.ipv6_dns), (ip6("fec0::2"), ip6("fec0::3")));
        // Length 0 means 64; host and DNS default to the prefix as given, last byte ORed.
        let c = config(
            &opts(serde_json::json!({"ipv6-prefix": "fd00:1::10", "ipv6-prefixlen": 0})),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(c.ipv6_prefixlen, 64);
        assert_eq!(
            (c.ipv6_host, c.ipv6_dns),
            (ip6("fd00:1::12"), ip6("fd00:1::13"))
        );
        // A DNS outside the prefix is fine unrestricted; the prefix length alone does not
        // count as an IPv6 option given with IPv6 off.
        assert!(cfg(serde_json::json!({"ipv6-dns": "2001:db8::3"})).is_ok());
        let c = config(
            &opts(serde_json::json!({"ipv6": false, "ipv6-prefixlen": 80})),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert!(!c.ipv6 && c.ipv4);
        assert!(c.in_prefix6(ip6("fec0::ffff")) && !c.in_prefix6(ip6("fec0:0:0:1::")));
    }

    #[test]
    fn guestfwd_rules() {
        let c = Config::default();
        let g = parse_guestfwd("tcp:10.0.2.100:80-cmd:nc -q0 'a b' \"c\"", &c, &[]).unwrap();
        assert_eq!(
            g.target,
            GuestFwdTarget::Command(vec!["nc".into(), "-q0".into(), "a b".into(), "c".into()])
        );
        assert_eq!(g.server, "10.0.2.100:80".parse().unwrap());
        let g = parse_guestfwd(":10.0.2.101:81-127.0.0.1:8080", &c, &[]).unwrap();
        assert_eq!(
            g.target,
            GuestFwdTarget::Addr("127.0.0.1:8080".parse().unwrap())
        );
        let d = parse_guestfwd("::82-tcp:127.0.0.1:9", &c, &[]).unwrap();
        assert_eq!(*d.server.ip(), Ipv4Addr::new(10, 0, 2, 4));
        assert_eq!(
            parse_guestfwd("udp:10.0.2.100:80-cmd:x", &c, &[])
                .unwrap_err()
                .desc,
            "Invalid guest forwarding rule 'udp:10.0.2.100:80-cmd:x'"
        );
        assert_eq!(
            parse_guestfwd("tcp:10.0.2.100-cmd:x", &c, &[])
                .unwrap_err()
                .desc,
            "Invalid guest forwarding rule 'tcp:10.0.2.100-cmd:x'"
        );
        assert_eq!(
            parse_guestfwd("tcp:10.0.2.2:80-cmd:x", &c, &[])
                .unwrap_err()
                .desc,
            "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:80-cmd:x'"
        );
        assert_eq!(
            parse_guestfwd("tcp:10.0.2.101:81-cmd:x", &c, &[g])
                .unwrap_err()
                .desc,
            "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.101:81-cmd:x'"
        );
        assert_eq!(shell_words("a 'b"), None);
    }

    #[test]
    fn hostfwd_rules() {
        let d = Ipv4Addr::new(10, 0, 2, 15);
        let f = parse_hostfwd("tcp::2222-:22", d).unwrap();
        assert_eq!(
            (f.udp, f.host, f.guest),
            (
                false,
                "0.0.0.0:2222".parse().unwrap(),
                "10.0.2.15:22".parse().unwrap()
            )
        );
        let f = parse_hostfwd("udp:127.0.0.1:0x10-10.0.2.9:53", d).unwrap();
        assert_eq!(
            (f.udp, f.host, f.guest),
            (
                true,
                "127.0.0.1:16".parse().unwrap(),
                "10.0.2.9:53".parse().unwrap()
            )
        );
        // netdevd's IPv6 forms.
        for (r, host, guest) in [
            ("tcp:[::1]:2222-:22", "[::1]:2222", "10.0.2.15:22"),
            (
                "tcp:[::1]:2222-[fec0::15]:22",
                "[::1]:2222",
                "[fec0::15]:22",
            ),
            ("udp:[]:53-[]:53", "[::]:53", "[::]:53"),
            (
                "tcp:127.0.0.1:80-[fec0::9]:8080",
                "127.0.0.1:80",
                "[fec0::9]:8080",
            ),
        ] {
            let f = parse_hostfwd(r, d).unwrap();
            assert_eq!(
                (f.host, f.guest),
                (host.parse().unwrap(), guest.parse().unwrap()),
                "{r}"
            );
        }
        for (r, why) in [
            ("tcp", "No : separators"),
            ("sctp::1-:2", "Bad protocol name"),
            ("tcp:1", "Missing : separator"),
            ("tcp:x:1-:2", "Bad host address"),
            ("tcp::1:2", "Bad host port separator"),
            ("tcp::70000-:2", "Bad host port"),
            ("tcp::1-2", "Missing guest address"),
            ("tcp::1-y:2", "Bad guest address"),
            ("tcp::1-:0", "Bad guest port"),
            ("tcp::1-:70000", "Bad guest port"),
            ("tcp:[::1:1-:2", "Bad host address"),
            ("tcp:[fec0::zz]:1-:2", "Bad host address"),
            ("tcp:[::1]1-:2", "Missing : separator"),
            ("tcp:[::1]:1-[fec0::15]", "Missing guest address"),
            ("tcp:[::1]:1-[10.0.2.15]:2", "Bad guest address"),
            ("tcp:[::1]:1-[::1]:0", "Bad guest port"),
        ] {
            assert_eq!(
                parse_hostfwd(r, d).unwrap_err().desc,
                format!("Invalid host forwarding rule '{r}' ({why})")
            );
        }
    }
}
