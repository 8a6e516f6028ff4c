//! NICs over vhost-user with real peers: QEMU 7.2 runs a Linux guest (scripts/build-guest)
//! whose virtio-net-pci device is `-netdev vhost-user` on a netdevd NIC (`--nic`), its
//! memory a shared memfd. QEMU 7.2 under TCG crashes when the guest starts a vhost-user
//! virtio-net device with MSI-X, so the device has `vectors=0`.

mod common;

use std::time::Duration;

use common::{start_netdevd, Guest, TempDir};

const BOOT: Duration = Duration::from_secs(180);

/// QEMU's options for a vhost-user virtio-net NIC on `sock`, guest memory shared.
fn vhost_user_args(sock: &std::path::Path, mac: &str) -> Vec<String> {
    vhost_user_args_with(sock, mac, "")
}

/// [`vhost_user_args`] with more `virtio-net-pci` properties (`,host_mtu=1400`).
fn vhost_user_args_with(sock: &std::path::Path, mac: &str, props: &str) -> Vec<String> {
    [
        "-object",
        "memory-backend-memfd,id=mem,size=256M,share=on",
        "-machine",
        "memory-backend=mem",
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-netdev",
        "vhost-user,id=n0,chardev=c0",
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={mac},vectors=0{props}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A file of `mib` MiB of varied bytes served over HTTP on the host's loopback: the server,
/// its port, the file's path.
fn serve_file(dir: &TempDir, mib: u32) -> (common::Proc, u16, std::path::PathBuf) {
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..(mib << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(www.join("file"), &blob).unwrap();
    let (http, port) = common::http_server(&www);
    (http, port, www.join("file"))
}

/// The start of a guest script that can take a DHCP lease: `udhcpc -s /tmp/dhcp.sh` applies
/// it and prints `LEASE <ip>`.
const DHCP_SCRIPT: &str = r#"printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr add $ip/$subnet dev $interface\nip route add default via $router\necho "LEASE $ip"\n' > /tmp/dhcp.sh
chmod +x /tmp/dhcp.sh
"#;

/// Kill netdevd `nd` under guest `g` (which prints `PING OK n` / `PING LOST n`), start
/// another with `args`, and wait until the guest's pings come back; returns the new one.
fn restart_under(
    g: &mut Guest,
    nd: &mut common::Proc,
    qmp: &std::path::Path,
    args: &[&str],
) -> common::Proc {
    nd.child.kill().unwrap();
    nd.child.wait().unwrap();
    let lost = g.wait_for("PING LOST", Duration::from_secs(30));
    let n_lost: u32 = lost.rsplit(' ').next().unwrap().parse().unwrap();
    let nd2 = start_netdevd(qmp, args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let l = g.wait_for("PING OK", deadline - std::time::Instant::now());
        let n: u32 = l.rsplit(' ').next().unwrap().parse().unwrap();
        if n > n_lost {
            return nd2;
        }
        g.seen.retain(|s| s != &l);
    }
}

/// A guest on a vhost-user NIC peered with the user netdev: DHCP lease from netdevd, then
/// 16 MiB from an HTTP server on the host's loopback, intact.
#[test]
fn guest_on_a_vhost_user_nic_gets_a_lease_and_fetches_16_mib() {
    let dir = TempDir::new("vhu-user");
    let blob: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("file"), &blob).unwrap();
    let (_http, port) = common::http_server(&www);
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let sock = dir.path("nic.sock");
    let mut nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            "user,id=u,hostname=vhu",
            "--nic",
            &format!(
                "id=nic0,netdev=u,macaddr=52:54:00:12:34:88,socket={}",
                sock.display()
            ),
        ],
    );
    let script = format!(
        r#"#!/bin/sh
printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr add $ip/$subnet dev $interface\nip route add default via $router\necho "LEASE $ip $router $dns $hostname"\n' > /tmp/dhcp.sh
chmod +x /tmp/dhcp.sh
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2 -s /tmp/dhcp.sh || {{ echo "NETDEVD-TEST FAIL dhcp"; exit 1; }}
wget -q -O /tmp/f http://10.0.2.2:{port}/file || {{ echo "NETDEVD-TEST FAIL wget"; cat /proc/net/dev; exit 1; }}
echo "MD5 $(md5sum /tmp/f | cut -d' ' -f1)"
echo "NETDEVD-TEST PASS"
"#
    );
    let mut g = Guest::boot_with(
        "g",
        &dir.0,
        &vhost_user_args(&sock, "52:54:00:12:34:88"),
        &script,
    );
    let lease = g.wait_for("LEASE ", BOOT);
    assert_eq!(lease, "LEASE 10.0.2.15 10.0.2.2 10.0.2.3 vhu");
    let md5 = g.wait_for("MD5 ", BOOT);
    let want = common::digest("md5sum", &www.join("file"));
    assert_eq!(md5, format!("MD5 {want}"));
    g.wait_for("NETDEVD-TEST PASS", BOOT);
    assert_eq!(
        g.wait_for("NETDEVD-GUEST EXIT", BOOT),
        "NETDEVD-GUEST EXIT 0"
    );
    drop(g);
    // The VMM went away: netdevd goes on.
    let mut q = common::Qmp::negotiated(&dir.path("n.sock"));
    let r = q.cmd(&serde_json::json!({"execute": "x-query-netdev-stats"}));
    assert!(r["return"].is_array(), "{r}");
    assert!(nd.child.try_wait().unwrap().is_none(), "netdevd died");
}

/// Two guests, each on a vhost-user NIC, on one hub: they ping each other and copy a file;
/// `announce-self` sends RARP frames from each NIC's MAC onto the hub, seen by a stream
/// client the test attaches to the same hub. Guest b's device has `host_mtu=1400` (QEMU
/// sends `NET_SET_MTU`): its driver takes that MTU, and a frame over it from the hub is
/// dropped at netdevd's NIC and counted.
#[test]
fn two_guests_on_vhost_user_nics_and_announce_self() {
    use std::io::{Read, Write};
    let dir = TempDir::new("vhu-hub");
    let (sa, sb, tap) = (dir.path("a.sock"), dir.path("b.sock"), dir.path("tap.sock"));
    let qmp = dir.path("n.sock");
    let _nd = start_netdevd(
        &qmp,
        &[
            "--netdev",
            "hubport,id=pa,hubid=0",
            "--netdev",
            "hubport,id=pb,hubid=0",
            "--netdev",
            &format!(
                "stream,id=t,server=on,addr.type=unix,addr.path={}",
                tap.display()
            ),
            "--netdev",
            "hubport,id=pt,hubid=0,netdev=t",
            "--nic",
            &format!(
                "id=nica,netdev=pa,macaddr=52:54:00:12:34:a1,socket={}",
                sa.display()
            ),
            "--nic",
            &format!(
                "id=nicb,netdev=pb,macaddr=52:54:00:12:34:b1,socket={}",
                sb.display()
            ),
        ],
    );
    // The test's own port on the hub: length-prefixed frames, RARPs kept.
    let mut s = std::os::unix::net::UnixStream::connect(&tap).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(240))).unwrap();
    let mut to_hub = s.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<[u8; 6]>();
    std::thread::spawn(move || loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            break;
        }
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut f).is_err() {
            break;
        }
        if f.len() >= 14 && f[12..14] == [0x80, 0x35] {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&f[6..12]);
            let _ = tx.send(mac);
        }
    });
    let script_a = r#"#!/bin/sh
ip addr add 10.0.0.1/24 dev eth0 && ip link set eth0 up || { echo "NETDEVD-TEST FAIL ifup"; exit 1; }
dd if=/dev/urandom of=/www/file bs=1024 count=4096 2>/dev/null
echo "MD5 $(md5sum /www/file | cut -d' ' -f1)"
httpd -p 80 -h /www
i=0
until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do
  i=$((i+1)); [ $i -ge 90 ] && { echo "NETDEVD-TEST FAIL no ping reply"; exit 1; }
done
echo "NETDEVD-TEST PING OK"
nc -l -p 81 | grep -q done && echo "NETDEVD-TEST PASS"
"#;
    let script_b = r#"#!/bin/sh
ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up || { echo "NETDEVD-TEST FAIL ifup"; exit 1; }
echo "MTU $(cat /sys/class/net/eth0/mtu)"
i=0
until ping -c 1 -W 1 10.0.0.1 >/dev/null 2>&1; do
  i=$((i+1)); [ $i -ge 90 ] && { echo "NETDEVD-TEST FAIL no ping reply"; exit 1; }
done
ping -c 3 -W 2 10.0.0.1 | grep -q " 0% packet loss" || { echo "NETDEVD-TEST FAIL ping loss"; exit 1; }
echo "NETDEVD-TEST PING OK"
i=0
until wget -q -O /tmp/got http://10.0.0.1/file; do
  i=$((i+1)); [ $i -ge 30 ] && { echo "NETDEVD-TEST FAIL wget"; exit 1; }; sleep 1
done
echo "MD5 $(md5sum /tmp/got | cut -d' ' -f1)"
i=0
until echo done | nc 10.0.0.1 81; do
  i=$((i+1)); [ $i -ge 30 ] && { echo "NETDEVD-TEST FAIL signal"; exit 1; }; sleep 1
done
echo "NETDEVD-TEST PASS"
"#;
    let mut a = Guest::boot_with(
        "a",
        &dir.0,
        &vhost_user_args(&sa, "52:54:00:12:34:a1"),
        script_a,
    );
    let mut b = Guest::boot_with(
        "b",
        &dir.0,
        &vhost_user_args_with(&sb, "52:54:00:12:34:b1", ",host_mtu=1400"),
        script_b,
    );
    let md5_a = a.wait_for("MD5 ", BOOT);
    assert_eq!(b.wait_for("MTU ", BOOT), "MTU 1400");
    b.wait_for("NETDEVD-TEST PING OK", BOOT);
    a.wait_for("NETDEVD-TEST PING OK", BOOT);
    // Broadcasts from the test's port to both NICs: 1418 bytes (b's MTU, an Ethernet header
    // and a VLAN tag) reach b, 1500 bytes do not; a's NIC has no MTU and takes both.
    let mut q = common::Qmp::negotiated(&qmp);
    for len in [1418usize, 1500] {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0xee, 0x88, 0xb5]);
        f.resize(len, 0);
        to_hub.write_all(&(len as u32).to_be_bytes()).unwrap();
        to_hub.write_all(&f).unwrap();
    }
    let over_mtu = |q: &mut common::Qmp, nic: &str| {
        let st = q.cmd(&serde_json::json!({"execute": "x-query-netdev-stats"}));
        let c = st["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == nic)
            .cloned();
        c.and_then(|c| c["backend-drops"]["over-mtu"].as_u64())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while over_mtu(&mut q, "nicb") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(over_mtu(&mut q, "nicb"), 1, "one frame over b's MTU");
    assert_eq!(over_mtu(&mut q, "nica"), 0, "a has no MTU");
    // announce-self while both guests run (a NIC whose VMM is gone is link-down, and QEMU
    // drops what a link-down NIC sends): two rounds from each NIC reach the test's port.
    while rx.try_recv().is_ok() {}
    let r = q.cmd(&serde_json::json!({"execute": "announce-self", "arguments": {"initial": 50, "max": 550, "rounds": 2, "step": 100}}));
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    let mut seen = Vec::new();
    while let Ok(m) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(m);
    }
    for mac in [
        [0x52, 0x54, 0, 0x12, 0x34, 0xa1],
        [0x52, 0x54, 0, 0x12, 0x34, 0xb1],
    ] {
        assert_eq!(
            seen.iter().filter(|m| **m == mac).count(),
            2,
            "RARPs from {mac:02x?}: {seen:02x?}"
        );
    }
    let md5_b = b.wait_for("MD5 ", BOOT);
    assert_eq!(md5_a, md5_b, "the copied file differs");
    b.wait_for("NETDEVD-TEST PASS", BOOT);
    a.wait_for("NETDEVD-TEST PASS", BOOT);
    for g in [&mut a, &mut b] {
        assert_eq!(
            g.wait_for("NETDEVD-GUEST EXIT", BOOT),
            "NETDEVD-GUEST EXIT 0"
        );
    }
}

/// What netdevd holds: open fds and mappings.
fn held(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count();
    (fds, maps)
}

/// Send one request (bytes and fds) on a front-end connection.
fn send(s: &std::os::unix::net::UnixStream, req: &netdevd_vhost::msg::Request) {
    use std::os::fd::AsFd;
    let (bytes, fds) = netdevd_vhost::msg::encode(req);
    let n = netdevd_sys::send_with_fds(s.as_fd(), &bytes, &fds).unwrap();
    assert_eq!(n, bytes.len());
}

/// A front-end of the test's own (the driver side of `netdevd_vhost::driver`) connects
/// 1000 times: every tenth time it sets the device up whole (memory, rings, kicks) and asks
/// for an announcement (`SEND_RARP`), which reaches the hub; malformed messages close the
/// connection. Afterwards netdevd holds no more fds or mappings than before, and a QEMU-less
/// front-end still gets its features answered.
#[test]
fn a_thousand_front_ends_come_and_go_and_nothing_leaks() {
    use netdevd_vhost::msg::{code, Request};
    use std::io::{Read, Write};
    let dir = TempDir::new("vhu-cycles");
    let (sock, tap) = (dir.path("nic.sock"), dir.path("tap.sock"));
    let nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--netdev",
            "hubport,id=pa,hubid=0",
            "--netdev",
            &format!(
                "stream,id=t,server=on,addr.type=unix,addr.path={}",
                tap.display()
            ),
            "--netdev",
            "hubport,id=pt,hubid=0,netdev=t",
            "--nic",
            &format!(
                "id=nic0,netdev=pa,macaddr=52:54:00:12:34:c1,socket={}",
                sock.display()
            ),
        ],
    );
    let pid = nd.child.id();
    let mut t = std::os::unix::net::UnixStream::connect(&tap).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = held(pid);
    let features = |s: &mut std::os::unix::net::UnixStream| -> Option<u64> {
        // A refused connection may already be closed when the request goes out.
        let (bytes, _) = netdevd_vhost::msg::encode(&Request::GetFeatures);
        s.write_all(&bytes).ok()?;
        let mut r = [0u8; 20];
        s.read_exact(&mut r).ok()?;
        assert_eq!(
            u32::from_le_bytes(r[..4].try_into().unwrap()),
            code::GET_FEATURES
        );
        Some(u64::from_le_bytes(r[12..].try_into().unwrap()))
    };
    // A front-end connection, answered. netdevd takes one front-end at a time and refuses a
    // second while the first is open; the first may outlive the test's close for a moment
    // (another test of this process forking a QEMU holds a copy of the fd until the exec),
    // so a refused connection is tried again, as a VMM reconnects.
    let connect = || -> (std::os::unix::net::UnixStream, u64) {
        for _ in 0..100 {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            if let Some(f) = features(&mut s) {
                return (s, f);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("netdevd refused 100 front-ends in a row");
    };
    let mut rarps = 0;
    for i in 0..1000 {
        let (mut s, f) = connect();
        assert!(f & (1 << 32) != 0, "VERSION_1 offered");
        match i % 10 {
            0 => {
                // The whole set-up, then SEND_RARP.
                let d = netdevd_vhost::driver::Driver::new(1 << 20, 256).unwrap();
                send(&s, &Request::SetOwner);
                for (_, r) in d.setup(netdevd_vhost::device::FEATURES).unwrap() {
                    let r = match r {
                        Request::SetVringKick { index, .. } => Request::SetVringKick {
                            index,
                            fd: Some(
                                rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
                                    .unwrap(),
                            ),
                        },
                        r => r,
                    };
                    send(&s, &r);
                }
                send(&s, &Request::SendRarp([0x52, 0x54, 0, 0x12, 0x34, 0xc1]));
                // The announcement arrives on the hub's other port.
                let mut len = [0u8; 4];
                t.read_exact(&mut len).unwrap();
                let mut fr = vec![0u8; u32::from_be_bytes(len) as usize];
                t.read_exact(&mut fr).unwrap();
                assert_eq!(&fr[12..14], &[0x80, 0x35], "a RARP");
                assert_eq!(&fr[6..12], &[0x52, 0x54, 0, 0x12, 0x34, 0xc1]);
                rarps += 1;
            }
            1 => {
                // A wrong protocol version: netdevd hangs up.
                s.write_all(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]).unwrap();
                let mut b = [0u8; 1];
                assert_eq!(s.read(&mut b).unwrap_or(0), 0, "connection closed");
            }
            2 => {
                // A memory table that promises a fd and brings none.
                let mut m = vec![5, 0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0];
                m.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
                m.extend_from_slice(&[0u8; 32]);
                s.write_all(&m).unwrap();
                let mut b = [0u8; 1];
                assert_eq!(s.read(&mut b).unwrap_or(0), 0, "connection closed");
            }
            _ => {}
        }
        drop(s);
    }
    assert_eq!(rarps, 100);
    // Let netdevd see the last hang-up.
    std::thread::sleep(Duration::from_millis(300));
    let (s, f) = connect();
    assert!(f != 0);
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let after = held(pid);
    assert_eq!(after, before, "fds and mappings (before, after)");
}

/// netdevd killed and started again under a running guest: QEMU (`reconnect=1` on the
/// chardev) connects to the new netdevd, sets the rings up again where they were, and the
/// guest's pings of the gateway go on.
#[test]
fn netdevd_restarted_under_a_running_guest() {
    let dir = TempDir::new("vhu-restart");
    let sock = dir.path("nic.sock");
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let args = |sock: &std::path::Path| {
        vec![
            "--resolv-conf".to_string(),
            resolv.to_str().unwrap().to_string(),
            "--netdev".into(),
            "user,id=u".into(),
            "--nic".into(),
            format!("id=nic0,netdev=u,socket={}", sock.display()),
        ]
    };
    let a = args(&sock);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut nd = start_netdevd(&dir.path("n.sock"), &a);
    let script = r#"#!/bin/sh
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up || { echo "NETDEVD-TEST FAIL ifup"; exit 1; }
n=0
while [ $n -lt 600 ]; do
  n=$((n+1))
  if ping -c 1 -W 1 10.0.2.2 >/dev/null 2>&1; then echo "PING OK $n"; else echo "PING LOST $n"; fi
done
"#;
    let mut net = vhost_user_args(&sock, "52:54:00:12:34:d1");
    // QEMU reconnects to the socket every second when it goes away.
    net[5] = format!("socket,id=c0,path={},reconnect=1", sock.display());
    let mut g = Guest::boot_with("g", &dir.0, &net, script);
    g.wait_for("PING OK", BOOT);
    // Kill netdevd (no clean shutdown) and start another on the same socket.
    // Pings come back after the restart.
    let nd2 = restart_under(&mut g, &mut nd, &dir.path("n2.sock"), &a);
    // The guest killed mid-traffic: netdevd lets go of everything it held for it (as much
    // as a netdevd of the same options that never had a guest holds).
    drop(g);
    let fresh_sock = dir.path("nic3.sock");
    let a3 = args(&fresh_sock);
    let a3: Vec<&str> = a3.iter().map(String::as_str).collect();
    let nd3 = start_netdevd(&dir.path("n3.sock"), &a3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        held(nd2.child.id()),
        held(nd3.child.id()),
        "fds and mappings"
    );
}

/// `set_link` on a vhost-user NIC stops frames both ways and `set_link` up brings them back;
/// `query-rx-filter` reports the filter the NIC applies. The front-end is the test's own
/// (`netdevd_vhost::driver`), the other end a stream client on the same hub.
#[test]
fn set_link_on_a_vhost_user_nic_stops_frames_both_ways() {
    use netdevd_vhost::device::{RX, TX};
    use netdevd_vhost::msg::Request;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let dir = TempDir::new("vhu-link");
    let (sock, tap, qmp) = (
        dir.path("nic.sock"),
        dir.path("tap.sock"),
        dir.path("n.sock"),
    );
    let _nd = start_netdevd(
        &qmp,
        &[
            "--netdev",
            "hubport,id=pa,hubid=0",
            "--netdev",
            &format!(
                "stream,id=t,server=on,addr.type=unix,addr.path={}",
                tap.display()
            ),
            "--netdev",
            "hubport,id=pt,hubid=0,netdev=t",
            "--nic",
            &format!(
                "id=nic0,netdev=pa,macaddr=52:54:00:12:34:e1,socket={}",
                sock.display()
            ),
        ],
    );
    let mut t = std::os::unix::net::UnixStream::connect(&tap).unwrap();
    t.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut d = netdevd_vhost::driver::Driver::new(1 << 20, 256).unwrap();
    let kicks: Vec<std::os::fd::OwnedFd> = (0..2)
        .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap())
        .collect();
    for (_, r) in d.setup(netdevd_vhost::device::FEATURES).unwrap() {
        let r = match r {
            Request::SetVringKick { index, .. } => Request::SetVringKick {
                index,
                fd: Some(kicks[index as usize].try_clone().unwrap()),
            },
            r => r,
        };
        send(&s, &r);
    }
    // A request with a reply: everything before it has been handled.
    send(&s, &Request::GetFeatures);
    let mut reply = [0u8; 20];
    (&s).read_exact(&mut reply).unwrap();
    let kick = |q: usize| {
        rustix::io::write(kicks[q].as_fd(), &1u64.to_ne_bytes()).unwrap();
    };
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0xe1];
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&mac);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut rx_slot = 0u16;
    let mut tx_slot = 0u16;
    // One frame each way; returns (the guest got the hub's frame, the hub got the guest's).
    // `expect`: whether frames should pass (they are waited for long, under load; their
    // absence is waited for a second).
    let mut round = |d: &mut netdevd_vhost::driver::Driver,
                     t: &mut std::os::unix::net::UnixStream,
                     tag: u8,
                     expect: bool| {
        let wait: u64 = if expect { 400 } else { 40 };
        t.set_read_timeout(Some(Duration::from_millis(wait * 25)))
            .unwrap();
        d.offer(RX, rx_slot, &[(&[0u8; 2048][..], true)]);
        rx_slot = (rx_slot + 1) % 256;
        kick(RX);
        let mut f = frame.clone();
        f[20] = tag;
        let mut m = (f.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&f);
        t.write_all(&m).unwrap();
        let mut got_rx = false;
        for _ in 0..wait {
            std::thread::sleep(Duration::from_millis(25));
            if !d.take_used(RX).is_empty() {
                got_rx = true;
                break;
            }
        }
        let mut g = frame.clone();
        g[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        g[6..12].copy_from_slice(&mac);
        g[20] = tag;
        d.offer(TX, tx_slot, &[(&[0u8; 12][..], false), (&g[..], false)]);
        tx_slot = (tx_slot + 2) % 256;
        kick(TX);
        let mut got_tx = false;
        let mut len = [0u8; 4];
        while t.read_exact(&mut len).is_ok() {
            let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
            t.read_exact(&mut b).unwrap();
            if b.len() > 20 && b[6..12] == mac && b[20] == tag {
                got_tx = true;
                break;
            }
        }
        (got_rx, got_tx)
    };
    let r1 = round(&mut d, &mut t, 1, true);
    let mut q = common::Qmp::negotiated(&qmp);
    let st = q.cmd(&serde_json::json!({"execute": "x-query-netdev-stats"}));
    assert_eq!(r1, (true, true), "link up; {st}");
    let r =
        q.cmd(&serde_json::json!({"execute": "query-rx-filter", "arguments": {"name": "nic0"}}));
    assert_eq!(r["return"][0]["main-mac"], "52:54:00:12:34:e1", "{r}");
    assert_eq!(r["return"][0]["promiscuous"], true, "{r}");
    let r = q.cmd(
        &serde_json::json!({"execute": "set_link", "arguments": {"name": "nic0", "up": false}}),
    );
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    assert_eq!(round(&mut d, &mut t, 2, false), (false, false), "link down");
    q.cmd(&serde_json::json!({"execute": "set_link", "arguments": {"name": "nic0", "up": true}}));
    assert_eq!(
        round(&mut d, &mut t, 3, true),
        (true, true),
        "link up again"
    );
    drop(s);
}

/// NICs over QMP: `device_add` makes one (QEMU's virtio-net-pci property names plus
/// `socket`), a front-end attaches, `device_del` takes it away with DEVICE_DELETED, closes
/// the front-end's connection and removes the socket; QEMU's texts for what is wrong.
#[test]
fn device_add_and_device_del_over_qmp() {
    use std::io::Read;
    let dir = TempDir::new("vhu-qmp");
    let qmp = dir.path("n.sock");
    let sock = dir.path("nic.sock");
    let _nd = start_netdevd(&qmp, &["--netdev", "hubport,id=h0,hubid=0"]);
    let mut q = common::Qmp::negotiated(&qmp);
    let add = |q: &mut common::Qmp, args: serde_json::Value| {
        q.cmd(&serde_json::json!({"execute": "device_add", "arguments": args}))
    };
    let r = add(
        &mut q,
        serde_json::json!({"driver": "e1000", "id": "x", "socket": sock}),
    );
    assert_eq!(
        r["error"]["desc"], "'e1000' is not a valid device model name",
        "{r}"
    );
    let r = add(
        &mut q,
        serde_json::json!({"driver": "virtio-net-pci", "id": "x"}),
    );
    assert_eq!(r["error"]["desc"], "Parameter 'socket' is missing", "{r}");
    let r = add(
        &mut q,
        serde_json::json!({"driver": "virtio-net-pci", "id": "nic1", "netdev": "h0", "mac": "52:54:00:12:34:f1", "socket": sock}),
    );
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    let r = add(
        &mut q,
        serde_json::json!({"driver": "virtio-net-pci", "id": "nic1", "socket": dir.path("b.sock")}),
    );
    assert_eq!(r["error"]["desc"], "Duplicate ID 'nic1' for device", "{r}");
    let r =
        q.cmd(&serde_json::json!({"execute": "query-rx-filter", "arguments": {"name": "nic1"}}));
    assert_eq!(r["return"][0]["main-mac"], "52:54:00:12:34:f1", "{r}");
    // A front-end attaches; device_del hangs up on it.
    let mut fe = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    fe.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    send(&fe, &netdevd_vhost::msg::Request::GetFeatures);
    let mut reply = [0u8; 20];
    fe.read_exact(&mut reply).unwrap();
    let r = q.cmd(&serde_json::json!({"execute": "device_del", "arguments": {"id": "nic1"}}));
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    let ev = q
        .read_message(Duration::from_secs(5), false)
        .expect("DEVICE_DELETED");
    assert_eq!(ev["event"], "DEVICE_DELETED", "{ev}");
    assert_eq!(ev["data"]["device"], "nic1");
    assert_eq!(ev["data"]["path"], "/machine/peripheral/nic1");
    let mut b = [0u8; 1];
    assert_eq!(
        fe.read(&mut b).unwrap_or(0),
        0,
        "the front-end's connection is closed"
    );
    assert!(!sock.exists(), "the socket is removed");
    let r = q.cmd(&serde_json::json!({"execute": "device_del", "arguments": {"id": "nic1"}}));
    assert_eq!(r["error"]["class"], "DeviceNotFound", "{r}");
    assert_eq!(r["error"]["desc"], "Device 'nic1' not found");
    // The hubport it was peered with can take a new NIC.
    let r = add(
        &mut q,
        serde_json::json!({"driver": "virtio-net-pci", "id": "nic2", "netdev": "h0", "socket": sock}),
    );
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
}

/// DPDK's testpmd as the front-end (`net_virtio_user`, its own virtio driver, no VM): frames
/// of every size from 60 to 1514 bytes go from a stream client through the NIC to testpmd,
/// which swaps the MACs and sends them back (`macswap`); each comes back intact.
#[test]
fn dpdk_testpmd_round_trips_frames_of_every_size() {
    use std::io::{Read, Write};
    let dir = TempDir::new("vhu-dpdk");
    let (sock, tap) = (dir.path("nic.sock"), dir.path("tap.sock"));
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--netdev",
            &format!(
                "stream,id=t,server=on,addr.type=unix,addr.path={}",
                tap.display()
            ),
            "--nic",
            &format!(
                "id=nic0,netdev=t,macaddr=52:54:00:12:34:a1,socket={}",
                sock.display()
            ),
        ],
    );
    let mut tp = common::Proc {
        child: std::process::Command::new("dpdk-testpmd")
            .args(["--no-pci", "--no-huge", "-m", "512"])
            .arg(format!("--file-prefix=netdevd-test-{}", std::process::id()))
            .arg("--vdev")
            .arg(format!("net_virtio_user0,path={},queues=1", sock.display()))
            .args([
                "--",
                "--forward-mode=macswap",
                "--auto-start",
                "--total-num-mbufs=8192",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dpdk-testpmd (Debian dpdk-dev) must be installed"),
    };
    let mut t = std::os::unix::net::UnixStream::connect(&tap).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // testpmd needs a moment to start its port: retry the first frame until it comes back.
    let send = |t: &mut std::os::unix::net::UnixStream, f: &[u8]| {
        let mut m = (f.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(f);
        t.write_all(&m).unwrap();
    };
    let recv = |t: &mut std::os::unix::net::UnixStream| -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        t.read_exact(&mut len).ok()?;
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        t.read_exact(&mut f).ok()?;
        Some(f)
    };
    let frame = |size: usize| -> Vec<u8> {
        let mut f = vec![
            0x52, 0x54, 0, 0x12, 0x34, 0xa1, 2, 0, 0, 0, 0, 9, 0x08, 0x00,
        ];
        f.extend((0..size - 14).map(|i| (i * 7 + size) as u8));
        f
    };
    let swapped = |f: &[u8]| -> Vec<u8> {
        let mut g = f[6..12].to_vec();
        g.extend_from_slice(&f[..6]);
        g.extend_from_slice(&f[12..]);
        g
    };
    let mut up = false;
    for _ in 0..60 {
        send(&mut t, &frame(60));
        if recv(&mut t).is_some() {
            up = true;
            break;
        }
    }
    assert!(up, "testpmd never answered");
    while recv(&mut t).is_some() {}
    for size in 60..=1514 {
        let f = frame(size);
        send(&mut t, &f);
        let g = recv(&mut t).unwrap_or_else(|| panic!("no answer for {size} bytes"));
        assert_eq!(g, swapped(&f), "the {size}-byte frame came back changed");
    }
    if let Some(stdin) = tp.child.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
}

/// QEMU 10.0 (`../shared/tools/qemu10-install.sh` puts it in /opt/qemu10, scripts/test runs
/// it): a guest whose vhost-user NIC has MSI-X (which QEMU 7.2 under TCG cannot run) and a
/// chardev with `reconnect-ms` (QEMU 9.2 and later) fetches through the user netdev, and
/// picks up a restarted netdevd.
#[test]
fn qemu_10_with_msix_and_reconnect_ms() {
    const QEMU10: &str = "/opt/qemu10/bin/qemu-system-x86_64";
    if !std::path::Path::new(QEMU10).exists() {
        println!("SKIPPED: no QEMU 10 at {QEMU10} (../shared/tools/qemu10-install.sh)");
        return;
    }
    let dir = TempDir::new("vhu-q10");
    let sock = dir.path("nic.sock");
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let (_http, port, file) = serve_file(&dir, 4);
    let args = [
        "--resolv-conf".to_string(),
        resolv.to_str().unwrap().to_string(),
        "--netdev".into(),
        "user,id=u".into(),
        "--nic".into(),
        format!("id=nic0,netdev=u,socket={}", sock.display()),
    ];
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nd = start_netdevd(&dir.path("n.sock"), &a);
    let script = format!(
        r#"#!/bin/sh
{DHCP_SCRIPT}ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2 -s /tmp/dhcp.sh || {{ echo "NETDEVD-TEST FAIL dhcp"; exit 1; }}
wget -q -O /tmp/f http://10.0.2.2:{port}/file || {{ echo "NETDEVD-TEST FAIL wget"; exit 1; }}
echo "MD5 $(md5sum /tmp/f | cut -d' ' -f1)"
n=0
while [ $n -lt 600 ]; do
  n=$((n+1))
  if ping -c 1 -W 1 10.0.2.2 >/dev/null 2>&1; then echo "PING OK $n"; else echo "PING LOST $n"; fi
done
"#
    );
    let mut net = vhost_user_args(&sock, "52:54:00:12:34:10");
    net[5] = format!("socket,id=c0,path={},reconnect-ms=500", sock.display());
    // MSI-X on: no vectors=0.
    net[9] = "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:10".into();
    let mut g = Guest::boot_with_qemu(QEMU10, "g", &dir.0, &net, &script);
    g.wait_for("LEASE 10.0.2.15", BOOT);
    let md5 = g.wait_for("MD5 ", BOOT);
    assert_eq!(md5, format!("MD5 {}", common::digest("md5sum", &file)));
    g.wait_for("PING OK", BOOT);
    let _nd2 = restart_under(&mut g, &mut nd, &dir.path("n2.sock"), &a);
}

/// Two queue pairs (`MQ`): a two-CPU guest under QEMU 7.2 (`queues=2`, `mq=on`) brings up
/// both pairs, gets its lease and fetches 4 MiB intact.
#[test]
fn a_guest_with_two_queue_pairs() {
    let dir = TempDir::new("vhu-mq");
    let sock = dir.path("nic.sock");
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let (_http, port, file) = serve_file(&dir, 4);
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            "user,id=u",
            "--nic",
            &format!("id=nic0,netdev=u,socket={}", sock.display()),
        ],
    );
    let script = format!(
        r#"#!/bin/sh
{DHCP_SCRIPT}ip link set eth0 up
echo "QUEUES $(ls /sys/class/net/eth0/queues | tr '\n' ' ')"
udhcpc -i eth0 -q -n -t 10 -T 2 -s /tmp/dhcp.sh || {{ echo "NETDEVD-TEST FAIL dhcp"; exit 1; }}
wget -q -O /tmp/f http://10.0.2.2:{port}/file || {{ echo "NETDEVD-TEST FAIL wget"; exit 1; }}
echo "MD5 $(md5sum /tmp/f | cut -d' ' -f1)"
echo "NETDEVD-TEST PASS"
"#
    );
    let mut net = vhost_user_args(&sock, "52:54:00:12:34:20");
    net[7] = "vhost-user,id=n0,chardev=c0,queues=2".into();
    net[9] = "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:20,mq=on,vectors=0".into();
    net.extend(["-smp".to_string(), "2".to_string()]);
    let mut g = Guest::boot_with("g", &dir.0, &net, &script);
    let q = g.wait_for("QUEUES ", BOOT);
    assert!(
        q.contains("rx-1") && q.contains("tx-1"),
        "the guest has two queue pairs: {q}"
    );
    g.wait_for("LEASE 10.0.2.15", BOOT);
    let md5 = g.wait_for("MD5 ", BOOT);
    assert_eq!(md5, format!("MD5 {}", common::digest("md5sum", &file)));
    g.wait_for("NETDEVD-TEST PASS", BOOT);
}

/// Client mode (`server=off`): the VMM listens (`-chardev socket,server=on,wait=off`) and
/// netdevd, started first, keeps trying until it can connect; the guest gets its lease and
/// fetches 1 MiB intact.
#[test]
fn client_mode_connects_to_a_listening_vmm() {
    let dir = TempDir::new("vhu-client");
    let sock = dir.path("vmm.sock");
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let (_http, port, file) = serve_file(&dir, 1);
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            "user,id=u",
            "--nic",
            &format!("id=nic0,netdev=u,server=off,socket={}", sock.display()),
        ],
    );
    let script = format!(
        r#"#!/bin/sh
{DHCP_SCRIPT}ip link set eth0 up
udhcpc -i eth0 -q -n -t 15 -T 2 -s /tmp/dhcp.sh || {{ echo "NETDEVD-TEST FAIL dhcp"; exit 1; }}
wget -q -O /tmp/f http://10.0.2.2:{port}/file || {{ echo "NETDEVD-TEST FAIL wget"; exit 1; }}
echo "MD5 $(md5sum /tmp/f | cut -d' ' -f1)"
"#
    );
    let mut net = vhost_user_args(&sock, "52:54:00:12:34:30");
    net[5] = format!("socket,id=c0,path={},server=on,wait=off", sock.display());
    let mut g = Guest::boot_with("g", &dir.0, &net, &script);
    g.wait_for("LEASE 10.0.2.15", BOOT);
    let md5 = g.wait_for("MD5 ", BOOT);
    assert_eq!(md5, format!("MD5 {}", common::digest("md5sum", &file)));
}
