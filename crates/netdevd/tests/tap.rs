//! The tap netdev with namespaces as guests: each test makes its own network namespaces
//! (unique names, deleted on drop even when it fails), opens a tap inside each with
//! `netdevd-nstap`, and hands it to netdevd, which stays in the host namespace. Traffic only
//! flows between those namespaces. Needs root (CI runs as root).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{sh, start_netdevd, Netns, Qmp, TempDir};
use serde_json::{json, Value};

fn nstap_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netdevd-nstap")
}

fn must(ns: &Netns, cmd: &str) -> String {
    let (ok, out) = sh(ns, cmd);
    assert!(ok, "in {}: {cmd}\n{out}", ns.name);
    out
}

/// Give `ns` a tap `tap0` joined to netdevd's hub 0, with address 10.9.0.`host`.
fn attach(ns: &Netns, qmp: &std::path::Path, id: &str, host: u8, extra: &[&str]) {
    let st = Command::new(nstap_bin())
        .args(["--netns", &ns.name, "--qmp"])
        .arg(qmp)
        .args(["--id", id, "--hub", "0"])
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "netdevd-nstap for {id}");
    must(
        ns,
        &format!("ip addr add 10.9.0.{host}/24 dev tap0 && ip link set tap0 up"),
    );
}

fn ping(ns: &Netns, host: u8, count: u32) -> bool {
    sh(ns, &format!("ping -c {count} -W 2 -i 0.2 10.9.0.{host}")).0
}

const SINK: &str = r#"
import socket, hashlib, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 5001)); l.listen(1); print("listening", flush=True)
l.settimeout(30); c, _ = l.accept(); c.settimeout(30)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

const SOURCE: &str = r#"
import socket, hashlib, sys
mib = int(sys.argv[2])
s = socket.create_connection((sys.argv[1], 5001), timeout=30)
base = bytes(range(256)) * 4096
h = hashlib.sha256(); n = 0
for i in range(mib):
    b = base[i % 251:] + base[:i % 251]
    s.sendall(b); h.update(b); n += len(b)
s.shutdown(socket.SHUT_WR); s.recv(1)
print(n, h.hexdigest(), flush=True)
"#;

/// Start the sink in `ns`; returns once it listens.
fn start_sink(ns: &Netns) -> Child {
    let mut c = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", SINK])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut line = String::new();
    let out = c.stdout.as_mut().unwrap();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    c
}

/// Send `mib` MiB from `ns` to 10.9.0.`host` and check the sink got exactly those bytes.
fn transfer(from: &Netns, host: u8, sink: Child, mib: u32) {
    let sent = must(
        from,
        &format!(
            "python3 -c '{}' 10.9.0.{host} {mib}",
            SOURCE.replace('\'', "\"")
        ),
    );
    let got = sink.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&got.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sent.trim(), got.trim(), "bytes differ");
    assert!(
        sent.starts_with(&format!("{} ", mib as u64 * 1024 * 1024)),
        "{sent}"
    );
}

fn stats(q: &mut Qmp, name: &str) -> Value {
    let r = q.cmd(&json!({"execute": "x-query-netdev-stats"}));
    r["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn two_namespaces_ping_arp_tcp_with_offloads_and_link() {
    let dir = TempDir::new("tap2");
    let (a, b) = (Netns::new("tapa"), Netns::new("tapb"));
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    attach(&a, &sock, "ta", 1, &[]);
    attach(&b, &sock, "tb", 2, &[]);
    assert!(ping(&a, 2, 3), "ping a -> b");
    // ARP resolved the peer through the hub.
    let neigh = must(&a, "ip neigh show 10.9.0.2");
    assert!(neigh.contains("lladdr"), "{neigh}");
    // TCP at MTU 1500 with offloads: 64 MiB byte for byte, and the tap handed netdevd
    // frames far larger than the MTU (TSO), which crossed to the other tap whole.
    let sink = start_sink(&b);
    transfer(&a, 2, sink, 64);
    let mut q = Qmp::negotiated(&sock);
    let sa = stats(&mut q, "ta");
    let sb = stats(&mut q, "tb");
    println!("ta: {sa}\ntb: {sb}");
    assert!(
        sa["tx-max-frame"].as_u64().unwrap() > 1514,
        "no frame above the MTU: {sa}"
    );
    assert!(sa["tx-offloaded"].as_u64().unwrap() > 0);
    assert!(
        sb["rx-max-frame"].as_u64().unwrap() > 1514,
        "the big frames were cut on the way: {sb}"
    );
    // set_link down stops traffic, up resumes it.
    assert_eq!(
        q.cmd(&json!({"execute": "set_link", "arguments": {"name": "ta", "up": false}})),
        json!({"return": {}})
    );
    assert!(!ping(&a, 2, 2), "ping crossed a downed link");
    assert_eq!(
        q.cmd(&json!({"execute": "set_link", "arguments": {"name": "ta", "up": true}})),
        json!({"return": {}})
    );
    assert!(ping(&a, 2, 3), "ping after link up");
}

#[test]
fn offloaded_frames_are_finished_for_a_tap_without_vnet_hdr() {
    let dir = TempDir::new("tapsw");
    let (a, c) = (Netns::new("tapo"), Netns::new("tapn"));
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    attach(&a, &sock, "ta", 1, &[]);
    attach(&c, &sock, "tc", 3, &["--vnet-hdr", "off"]);
    let sink = start_sink(&c);
    transfer(&a, 3, sink, 32);
    let mut q = Qmp::negotiated(&sock);
    let sa = stats(&mut q, "ta");
    let sc = stats(&mut q, "tc");
    println!("ta: {sa}\ntc: {sc}");
    assert!(
        sa["tx-offloaded"].as_u64().unwrap() > 0,
        "the sender used offloads: {sa}"
    );
    assert!(
        sc["rx-max-frame"].as_u64().unwrap() <= 1514,
        "segments reached the plain tap: {sc}"
    );
}

#[test]
fn netdev_del_of_a_third_tap_during_a_transfer_loses_nothing() {
    let dir = TempDir::new("tapdel");
    let (a, b, c) = (
        Netns::new("tdela"),
        Netns::new("tdelb"),
        Netns::new("tdelc"),
    );
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    attach(&a, &sock, "ta", 1, &[]);
    attach(&b, &sock, "tb", 2, &[]);
    attach(&c, &sock, "tc", 3, &[]);
    let sink = start_sink(&b);
    let sock2 = sock.clone();
    let deleter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut q = Qmp::negotiated(&sock2);
        let r1 = q.cmd(&json!({"execute": "netdev_del", "arguments": {"id": "tc-port"}}));
        let r2 = q.cmd(&json!({"execute": "netdev_del", "arguments": {"id": "tc"}}));
        (r1, r2)
    });
    transfer(&a, 2, sink, 96);
    let (r1, r2) = deleter.join().unwrap();
    assert_eq!((r1, r2), (json!({"return": {}}), json!({"return": {}})));
    // The deleted tap's fd was closed: its interface has no carrier now.
    let link = must(&c, "cat /sys/class/net/tap0/carrier 2>&1 || true");
    assert!(link.contains('0') || link.contains("Invalid"), "{link}");
}

#[test]
fn multiqueue_taps_with_four_queues() {
    let dir = TempDir::new("tapmq");
    let (a, b) = (Netns::new("tmqa"), Netns::new("tmqb"));
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    attach(&a, &sock, "ta", 1, &["--queues", "4"]);
    attach(&b, &sock, "tb", 2, &[]);
    let queues = must(&a, "ls /sys/class/net/tap0/queues");
    assert_eq!(
        queues
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .count(),
        4,
        "{queues}"
    );
    assert!(ping(&a, 2, 3));
    let sink = start_sink(&b);
    transfer(&a, 2, sink, 16);
    // netdevd creating a 4-queue tap itself (inside a namespace of the test's).
    let d = Netns::new("tmqd");
    let sock_d = dir.path("d.sock");
    let _nd = common::start_netdevd_in(
        Some(&d),
        &sock_d,
        &[
            "--netdev",
            "tap,id=t,ifname=mq0,queues=4,script=no,downscript=no",
        ],
    );
    let queues = must(&d, "ls /sys/class/net/mq0/queues");
    assert_eq!(
        queues
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .count(),
        4,
        "{queues}"
    );
}

#[test]
fn tap_options_scripts_and_errors() {
    let dir = TempDir::new("tapopt");
    let ns = Netns::new("topt");
    let up = dir.path("up.sh");
    let down = dir.path("down.sh");
    let marks = dir.path("marks");
    std::fs::write(
        &up,
        format!(
            "#!/bin/sh\necho up $1 >> {}\nip link set \"$1\" up\n",
            marks.display()
        ),
    )
    .unwrap();
    std::fs::write(
        &down,
        format!("#!/bin/sh\necho down $1 >> {}\n", marks.display()),
    )
    .unwrap();
    let fail = dir.path("fail.sh");
    std::fs::write(&fail, "#!/bin/sh\nexit 1\n").unwrap();
    for p in [&up, &down, &fail] {
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(p).unwrap().permissions(),
            0o755,
        );
        Command::new("chmod").arg("755").arg(p).status().unwrap();
    }
    let sock = dir.path("n.sock");
    let _d = common::start_netdevd_in(Some(&ns), &sock, &[]);
    let mut q = Qmp::negotiated(&sock);
    let add =
        |q: &mut Qmp, args: Value| q.cmd(&json!({"execute": "netdev_add", "arguments": args}));
    let r = add(
        &mut q,
        json!({"type": "tap", "id": "t1", "ifname": "ndt1", "script": up.to_str().unwrap(), "downscript": down.to_str().unwrap(), "sndbuf": 65536, "vnet_hdr": true, "poll-us": 50}),
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "up ndt1\n");
    assert!(
        must(&ns, "ip link show ndt1").contains("UP"),
        "the up-script ran with the name"
    );
    assert_eq!(
        q.cmd(&json!({"execute": "netdev_del", "arguments": {"id": "t1"}})),
        json!({"return": {}})
    );
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "up ndt1\ndown ndt1\n"
    );
    assert!(!sh(&ns, "ip link show ndt1").0, "the tap is gone");
    // A failing script is an error with QEMU's text (raw wait status), and no tap is left.
    let r = add(
        &mut q,
        json!({"type": "tap", "id": "t2", "ifname": "ndt2", "script": fail.to_str().unwrap()}),
    );
    assert_eq!(
        r["error"]["desc"],
        format!("network script {} failed with status 256", fail.display())
    );
    assert!(!sh(&ns, "ip link show ndt2").0);
    // vhost is not available: an error (QEMU 7.2 aborts), nothing left behind.
    let r = add(
        &mut q,
        json!({"type": "tap", "id": "t3", "ifname": "ndt3", "script": "no", "vhost": true}),
    );
    assert_eq!(
        r["error"]["desc"],
        "vhost-net requested but could not be initialized"
    );
    assert!(!sh(&ns, "ip link show ndt3").0);
    let r = add(
        &mut q,
        json!({"type": "tap", "id": "t4", "ifname": "ndt4", "script": "no", "vhost": false, "vhostfd": "x"}),
    );
    assert_eq!(r["error"]["desc"], "vhostfd(s)= is not valid without vhost");
    let r = add(
        &mut q,
        json!({"type": "tap", "id": "t5", "queues": 0, "script": "no"}),
    );
    assert_eq!(r["error"]["desc"], "queues= must be at least 1");
    // vnet_hdr=off gives a tap without the header; the id is then taken.
    assert_eq!(
        add(
            &mut q,
            json!({"type": "tap", "id": "t6", "ifname": "ndt6", "script": "no", "downscript": "no", "vnet_hdr": false})
        ),
        json!({"return": {}})
    );
    assert_eq!(
        add(&mut q, json!({"type": "tap", "id": "t6", "script": "no"}))["error"]["desc"],
        "Duplicate ID 't6'"
    );
}

/// The `bridge` netdev with QEMU's own `qemu-bridge-helper` and with netdevd's: the helper
/// runs inside a namespace of the test's (where a Linux bridge with an address waits), with
/// an ACL file bind-mounted over /etc/qemu in a private mount namespace, so the host's /etc
/// is not touched (only an empty /etc/qemu mount point is created when missing).
#[test]
fn bridge_driver_with_qemus_helper_and_ours() {
    let helpers = [
        ("qemu", "/usr/lib/qemu/qemu-bridge-helper".to_string()),
        (
            "netdevd",
            env!("CARGO_BIN_EXE_netdevd-bridge-helper").to_string(),
        ),
    ];
    assert!(
        std::path::Path::new(&helpers[0].1).exists(),
        "qemu-bridge-helper missing (Debian package qemu-system-common)"
    );
    if !std::path::Path::new("/etc/qemu").exists() {
        std::fs::create_dir_all("/etc/qemu").unwrap();
    }
    for (who, helper) in helpers {
        let dir = TempDir::new(&format!("br-{who}"));
        let br_ns = Netns::new(&format!("br{who}"));
        let a = Netns::new(&format!("bra{who}"));
        must(&br_ns, "ip link add ndtbr type bridge && ip addr add 10.9.0.10/24 dev ndtbr && ip link set ndtbr up");
        let acl = dir.path("acl");
        std::fs::create_dir_all(&acl).unwrap();
        std::fs::write(acl.join("bridge.conf"), "allow ndtbr\n").unwrap();
        let wrapped = format!(
            "unshare -m --propagation private sh -c 'mount --bind {} /etc/qemu && exec ip netns exec {} {} \"$@\"' helper",
            acl.display(),
            br_ns.name,
            helper
        );
        let sock = dir.path("n.sock");
        let _d = start_netdevd(&sock, &[]);
        let mut q = Qmp::negotiated(&sock);
        let r = q.cmd(&json!({"execute": "netdev_add", "arguments": {"type": "bridge", "id": "br0", "br": "ndtbr", "helper": wrapped}}));
        assert_eq!(r, json!({"return": {}}), "{who}'s helper");
        assert_eq!(q.cmd(&json!({"execute": "netdev_add", "arguments": {"type": "hubport", "id": "brport", "hubid": 0, "netdev": "br0"}})), json!({"return": {}}));
        let ports = must(&br_ns, "ip -o link show master ndtbr");
        assert!(
            ports.contains("tap"),
            "{who}: no tap on the bridge: {ports}"
        );
        assert!(
            ports.contains("fe:"),
            "{who}: the tap's MAC starts with fe: {ports}"
        );
        attach(&a, &sock, "ta", 1, &[]);
        assert!(ping(&a, 10, 3), "{who}: ping through the bridge");
        // The ACL decides: a bridge it does not allow is refused.
        must(&br_ns, "ip link add ndtbr2 type bridge");
        let r = q.cmd(&json!({"execute": "netdev_add", "arguments": {"type": "bridge", "id": "br2", "br": "ndtbr2", "helper": wrapped}}));
        assert_eq!(r["error"]["desc"], "bridge helper failed", "{who}");
    }
}
