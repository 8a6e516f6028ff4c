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
        &format!("virtio-net-pci,netdev=n0,mac={mac},vectors=0"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
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
