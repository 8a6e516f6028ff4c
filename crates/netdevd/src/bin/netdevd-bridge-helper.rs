//! `netdevd-bridge-helper`: QEMU's bridge helper protocol and access rules, for netdevd's
//! `bridge` netdev and tap `helper=` (and QEMU's, which can use it unchanged).
//!
//! usage: netdevd-bridge-helper [--use-vnet] --br=BRIDGE --fd=UNIXFD
//!
//! It reads the ACL file `/etc/qemu/bridge.conf` (it must exist): lines `allow NAME`,
//! `allow all`, `deny NAME`, `deny all`, `include FILE` (errors in included files are
//! ignored), `#` comments. Access is denied unless some rule allows the bridge, and any
//! matching deny wins. Then it creates a tap (`tapN`; with a virtio-net header for
//! `--use-vnet` when the kernel has it), gives it the bridge's MTU and a MAC whose first byte
//! is 0xfe (so it never becomes the bridge's own address), adds it to the bridge, brings it
//! up, and sends its fd over UNIXFD with one byte of data. It needs CAP_NET_ADMIN (run it
//! as root or give it the capability); it works in whatever network namespace it runs in.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

const ACL_FILE: &str = "/etc/qemu/bridge.conf";

#[derive(Debug, PartialEq, Eq)]
enum Rule {
    AllowAll,
    Allow(String),
    DenyAll,
    Deny(String),
}

/// Read an ACL file and the files it includes (depth-limited against include loops).
fn read_acl(path: &Path, depth: u32, rules: &mut Vec<Rule>) -> Result<(), String> {
    if depth > 8 {
        return Err(format!("include depth exceeded at {}", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to open file {}: {e}", path.display()))?;
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (cmd, arg) = line
            .split_once(char::is_whitespace)
            .map(|(c, a)| (c, a.trim()))
            .unwrap_or((line, ""));
        match (cmd, arg) {
            ("allow", "all") => rules.push(Rule::AllowAll),
            ("allow", name) if !name.is_empty() => rules.push(Rule::Allow(name.to_string())),
            ("deny", "all") => rules.push(Rule::DenyAll),
            ("deny", name) if !name.is_empty() => rules.push(Rule::Deny(name.to_string())),
            // As QEMU: a broken included file does not stop the helper.
            ("include", file) if !file.is_empty() => {
                let _ = read_acl(Path::new(file), depth + 1, rules);
            }
            _ => return Err(format!("Invalid config line:\n  {raw}")),
        }
    }
    Ok(())
}

/// QEMU's decision: some rule must allow the bridge, and no rule may deny it.
fn allowed(rules: &[Rule], bridge: &str) -> bool {
    let mut allow = false;
    let mut deny = false;
    for r in rules {
        match r {
            Rule::AllowAll => allow = true,
            Rule::Allow(n) if n == bridge => allow = true,
            Rule::DenyAll => deny = true,
            Rule::Deny(n) if n == bridge => deny = true,
            _ => {}
        }
    }
    allow && !deny
}

fn run() -> Result<(), String> {
    let mut use_vnet = false;
    let mut bridge = None;
    let mut unixfd = None;
    for a in std::env::args().skip(1) {
        if a == "--use-vnet" {
            use_vnet = true;
        } else if let Some(b) = a.strip_prefix("--br=") {
            bridge = Some(b.to_string());
        } else if let Some(f) = a.strip_prefix("--fd=") {
            unixfd = Some(f.parse::<i32>().map_err(|_| format!("bad --fd={f}"))?);
        } else {
            return Err(format!(
                "usage: netdevd-bridge-helper [--use-vnet] --br=BRIDGE --fd=UNIXFD (unknown '{a}')"
            ));
        }
    }
    let (Some(bridge), Some(unixfd)) = (bridge, unixfd) else {
        return Err("usage: netdevd-bridge-helper [--use-vnet] --br=BRIDGE --fd=UNIXFD".into());
    };
    if bridge.len() >= 16 {
        return Err(format!("name `{bridge}' too long: {}", bridge.len()));
    }
    let mut rules = Vec::new();
    read_acl(Path::new(ACL_FILE), 0, &mut rules)?;
    if !allowed(&rules, &bridge) {
        return Err("access denied by acl file".into());
    }
    netdevd_sys::record_inherited_fds();
    let sock: OwnedFd =
        netdevd_sys::claim_inherited_fd(unixfd).map_err(|e| format!("bad --fd={unixfd}: {e}"))?;
    use netdevd_sys::tap::*;
    let vnet = use_vnet
        && tap_features()
            .map(|f| f & IFF_VNET_HDR != 0)
            .unwrap_or(false);
    let (tap, name) = tap_open("tap%d", if vnet { IFF_VNET_HDR } else { 0 })
        .map_err(|e| format!("failed to create tun device: {e}"))?;
    let mtu =
        if_mtu(&bridge).map_err(|e| format!("failed to get mtu of bridge `{bridge}': {e}"))?;
    if_set_mtu(&name, mtu)
        .map_err(|e| format!("failed to set mtu of device `{name}' to {mtu}: {e}"))?;
    if_mac_first_byte_fe(&name)
        .map_err(|e| format!("failed to set mac address of interface `{name}': {e}"))?;
    bridge_add_if(&bridge, &name)
        .map_err(|e| format!("failed to add interface `{name}' to bridge `{bridge}': {e}"))?;
    if_up(&name).map_err(|e| format!("failed to bring up interface `{name}': {e}"))?;
    netdevd_sys::send_with_fds(sock.as_fd(), &[0], &[tap.as_fd()])
        .map_err(|e| format!("failed to write fd to unix socket: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rules_like_qemu() {
        let r = |v: Vec<Rule>, b: &str| allowed(&v, b);
        assert!(!r(vec![], "br0"), "default deny");
        assert!(r(vec![Rule::Allow("br0".into())], "br0"));
        assert!(!r(vec![Rule::Allow("br0".into())], "br1"));
        assert!(r(vec![Rule::AllowAll], "br1"));
        assert!(
            !r(vec![Rule::AllowAll, Rule::Deny("br1".into())], "br1"),
            "deny wins"
        );
        assert!(
            !r(vec![Rule::Deny("br1".into()), Rule::AllowAll], "br1"),
            "deny wins in any order"
        );
        assert!(!r(vec![Rule::Allow("br0".into()), Rule::DenyAll], "br0"));
    }

    #[test]
    fn acl_file_syntax() {
        let dir = std::env::temp_dir().join(format!("ndbh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inc = dir.join("inc.conf");
        std::fs::write(&inc, "deny br2\n").unwrap();
        let main = dir.join("bridge.conf");
        std::fs::write(
            &main,
            format!(
                "# comment\nallow br0 # trailing\nallow all\n\ninclude {}\ninclude /nonexistent\n",
                inc.display()
            ),
        )
        .unwrap();
        let mut rules = Vec::new();
        read_acl(&main, 0, &mut rules).unwrap();
        assert_eq!(
            rules,
            vec![
                Rule::Allow("br0".into()),
                Rule::AllowAll,
                Rule::Deny("br2".into())
            ]
        );
        std::fs::write(&main, "permit br0\n").unwrap();
        assert!(read_acl(&main, 0, &mut Vec::new()).is_err());
        assert!(read_acl(&dir.join("missing"), 0, &mut Vec::new()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
