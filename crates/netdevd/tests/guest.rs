//! Real Linux guests (Debian's kernel, busybox; built by scripts/build-guest) under QEMU
//! 7.2, attached to netdevd through QEMU's own socket and stream netdevs, on one netdevd hub.

mod common;

use std::time::Duration;

use common::{start_netdevd, Guest, TempDir};

const BOOT: Duration = Duration::from_secs(120);

fn uptime(line: &str) -> f64 {
    line.split_whitespace()
        .last()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn two_guests_ping_each_other_and_copy_a_file() {
    let dir = TempDir::new("guests");
    let port = common::free_tcp_port();
    let vmb = dir.path("vmb.sock");
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--netdev",
            &format!("socket,id=vma,listen=127.0.0.1:{port}"),
            "--netdev",
            "hubport,id=pa,hubid=0,netdev=vma",
            "--netdev",
            &format!(
                "stream,id=vmb,server=on,addr.type=unix,addr.path={}",
                vmb.display()
            ),
            "--netdev",
            "hubport,id=pb,hubid=0,netdev=vmb",
        ],
    );
    let script_a = r#"#!/bin/sh
ip addr add 10.0.0.1/24 dev eth0 && ip link set eth0 up || { echo "NETDEVD-TEST FAIL ifup"; exit 1; }
dd if=/dev/urandom of=/www/file bs=1024 count=512 2>/dev/null
echo "MD5 $(md5sum /www/file | cut -d' ' -f1)"
httpd -p 80 -h /www
i=0
until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do
  i=$((i+1)); [ $i -ge 90 ] && { echo "NETDEVD-TEST FAIL no ping reply"; exit 1; }
done
ping -c 3 -W 2 10.0.0.2 | grep -q " 0% packet loss" || { echo "NETDEVD-TEST FAIL ping loss"; exit 1; }
echo "NETDEVD-TEST PING OK"
# Stay up until the other guest says it has the file.
nc -l -p 81 | grep -q done && echo "NETDEVD-TEST PASS"
"#;
    let script_b = r#"#!/bin/sh
ip addr add 10.0.0.2/24 dev eth0 && ip link set eth0 up || { echo "NETDEVD-TEST FAIL ifup"; exit 1; }
i=0
until ping -c 1 -W 1 10.0.0.1 >/dev/null 2>&1; do
  i=$((i+1)); [ $i -ge 90 ] && { echo "NETDEVD-TEST FAIL no ping reply"; exit 1; }
done
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
    let mut a = Guest::boot(
        "a",
        &dir.0,
        &format!("socket,id=n0,connect=127.0.0.1:{port}"),
        "52:54:00:12:34:0a",
        script_a,
    );
    let mut b = Guest::boot(
        "b",
        &dir.0,
        &format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            vmb.display()
        ),
        "52:54:00:12:34:0b",
        script_b,
    );
    let boot_a = uptime(&a.wait_for("NETDEVD-GUEST BOOTED", BOOT));
    let boot_b = uptime(&b.wait_for("NETDEVD-GUEST BOOTED", BOOT));
    println!("guest boot time (kernel uptime at /init): a {boot_a:.2} s, b {boot_b:.2} s");
    let md5_a = a.wait_for("MD5 ", BOOT);
    b.wait_for("NETDEVD-TEST PING OK", BOOT);
    a.wait_for("NETDEVD-TEST PING OK", BOOT);
    let md5_b = b.wait_for("MD5 ", BOOT);
    assert_eq!(md5_a, md5_b, "the copied file differs");
    assert!(md5_a.len() > 20);
    b.wait_for("NETDEVD-TEST PASS", BOOT);
    a.wait_for("NETDEVD-TEST PASS", BOOT);
    assert_eq!(
        a.wait_for("NETDEVD-GUEST EXIT", BOOT),
        "NETDEVD-GUEST EXIT 0"
    );
    assert_eq!(
        b.wait_for("NETDEVD-GUEST EXIT", BOOT),
        "NETDEVD-GUEST EXIT 0"
    );
    for g in [&mut a, &mut b] {
        let st = g.proc_.child.wait().unwrap();
        assert!(st.success(), "{}: qemu exited {st}", g.name);
    }
}

/// `netdevd` with no flags prints QEMU options; two guests started with exactly those
/// options reach each other.
#[test]
fn default_configuration_attaches_guests_with_the_printed_options() {
    let dir = TempDir::new("default");
    // In a Proc, so that a failing assertion below still ends the daemon.
    let mut nd = common::Proc {
        child: std::process::Command::new(common::netdevd_bin())
            .env("XDG_RUNTIME_DIR", &dir.0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    let out = nd.child.child_stdout();
    let attach: Vec<Vec<String>> = out
        .iter()
        .filter(|l| l.trim_start().starts_with("qemu-system-x86_64 ... "))
        .map(|l| {
            l.trim_start()
                .trim_start_matches("qemu-system-x86_64 ... ")
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .collect();
    assert_eq!(attach.len(), 2, "two attach lines in:\n{}", out.join("\n"));
    let script = |me: &str, other: &str| {
        format!(
            "#!/bin/sh\nip addr add 10.0.0.{me}/24 dev eth0 && ip link set eth0 up\ni=0\nuntil ping -c 1 -W 1 10.0.0.{other} >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 90 ] && {{ echo 'NETDEVD-TEST FAIL'; exit 1; }}; done\necho 'NETDEVD-TEST PASS'\nsleep 3\n"
        )
    };
    // The stream line names its own MAC; give the socket one a different one.
    let mut a_args = attach[0].clone();
    if let Some(d) = a_args.iter_mut().find(|a| a.starts_with("virtio-net-pci")) {
        d.push_str(",mac=52:54:00:12:34:61");
    }
    let mut a = Guest::boot_with("a", &dir.0, &a_args, &script("1", "2"));
    let mut b = Guest::boot_with("b", &dir.0, &attach[1], &script("2", "1"));
    a.wait_for("NETDEVD-TEST PASS", BOOT);
    b.wait_for("NETDEVD-TEST PASS", BOOT);
    assert_eq!(
        a.wait_for("NETDEVD-GUEST EXIT", BOOT),
        "NETDEVD-GUEST EXIT 0"
    );
    assert_eq!(
        b.wait_for("NETDEVD-GUEST EXIT", BOOT),
        "NETDEVD-GUEST EXIT 0"
    );
    drop(nd);
}

trait StdoutLines {
    fn child_stdout(&mut self) -> Vec<String>;
}

impl StdoutLines for std::process::Child {
    /// Lines the daemon prints at start-up (it prints them all before serving).
    fn child_stdout(&mut self) -> Vec<String> {
        use std::io::BufRead;
        let out = self.stdout.take().unwrap();
        let mut lines = Vec::new();
        for l in std::io::BufReader::new(out).lines() {
            let l = l.unwrap();
            let done = l.contains("netdev_add") && l.contains("hubport");
            lines.push(l);
            if done {
                break;
            }
        }
        lines
    }
}

/// A real guest on a hub with the user netdev: it gets a DHCP lease from netdevd and
/// fetches a file over HTTP from a server on the host's loopback, through 10.0.2.2.
#[test]
fn guest_gets_a_lease_and_fetches_a_file_from_the_host() {
    let dir = TempDir::new("guest-user");
    let blob: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("file"), &blob).unwrap();
    let (_http, port) = common::http_server(&www);
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let vm = dir.path("vm.sock");
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            "user,id=u,hostname=guest9",
            "--netdev",
            "hubport,id=pu,hubid=0,netdev=u",
            "--netdev",
            &format!(
                "stream,id=vm,server=on,addr.type=unix,addr.path={}",
                vm.display()
            ),
            "--netdev",
            "hubport,id=pv,hubid=0,netdev=vm",
        ],
    );
    let script = format!(
        r#"#!/bin/sh
printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr add $ip/$subnet dev $interface\nip route add default via $router\necho "LEASE $ip $router $dns $hostname"\n' > /tmp/dhcp.sh
chmod +x /tmp/dhcp.sh
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 2 -s /tmp/dhcp.sh || {{ echo "NETDEVD-TEST FAIL dhcp"; exit 1; }}
wget -q -O /tmp/f http://10.0.2.2:{port}/file || {{ echo "NETDEVD-TEST FAIL wget"; exit 1; }}
echo "MD5 $(md5sum /tmp/f | cut -d' ' -f1)"
echo "NETDEVD-TEST PASS"
"#
    );
    let mut g = Guest::boot(
        "g",
        &dir.0,
        &format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            vm.display()
        ),
        "52:54:00:12:34:77",
        &script,
    );
    let lease = g.wait_for("LEASE ", BOOT);
    assert_eq!(lease, "LEASE 10.0.2.15 10.0.2.2 10.0.2.3 guest9");
    let md5 = g.wait_for("MD5 ", BOOT);
    let want = common::digest("md5sum", &www.join("file"));
    assert_eq!(md5, format!("MD5 {want}"));
    g.wait_for("NETDEVD-TEST PASS", BOOT);
    assert_eq!(
        g.wait_for("NETDEVD-GUEST EXIT", BOOT),
        "NETDEVD-GUEST EXIT 0"
    );
}
