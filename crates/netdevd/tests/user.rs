//! The `user` netdev with real clients in a network namespace of the test's (a tap handed to
//! netdevd, netdevd in the host namespace): busybox `udhcpc` gets a lease and every option,
//! `ping` reaches the gateway, `dig @10.0.2.3` resolves through a dnsmasq the test starts on
//! a loopback address (never the machine's resolver), and UDP to 10.0.2.2 reaches a server
//! on the host's 127.0.0.1. Needs root.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{hand_tap, sh, start_netdevd, Netns, Proc, TempDir};

#[test]
fn dhcp_dns_ping_and_udp_from_a_namespace() {
    let dir = TempDir::new("user");
    let ns = Netns::new("user");
    // The upstream resolver: dnsmasq on a loopback address of its own.
    let dns_ip = format!("127.0.0.{}", 100 + std::process::id() % 100);
    let dnsmasq = dnsmasq(&dir, &dns_ip);
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {dns_ip}\n")).unwrap();
    // A UDP echo server on the host's loopback.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let sock = dir.path("n.sock");
    let _d = start_netdevd(
        &sock,
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            "user,id=u,hostname=guest1,domainname=example.test,dnssearch=a.test,dnssearch=b.a.test,bootfile=pxelinux.0,tftp-server-name=10.0.2.2",
            "--netdev",
            "hubport,id=up,hubid=0,netdev=u",
        ],
    );
    hand_tap(&ns, &sock);
    let script = dir.path("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  env | grep -E '^(ip|subnet|router|dns|serverid|lease|hostname|domain|search|tftp|bootfile|boot_file|mtu)=' | sort\n  ip addr add \"$ip/$subnet\" dev \"$interface\"\n  ip route add default via \"$router\"\nesac\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    let (ok, out) = sh(
        &ns,
        &format!(
            "ip link set tap0 up && busybox udhcpc -i tap0 -f -q -n -t 5 -T 1 -s {}",
            script.display()
        ),
    );
    assert!(ok, "udhcpc failed:\n{out}");
    println!("{out}");
    for want in [
        "ip=10.0.2.15",
        "subnet=255.255.255.0",
        "router=10.0.2.2",
        "dns=10.0.2.3",
        "serverid=10.0.2.2",
        "lease=86400",
        "hostname=guest1",
        "domain=example.test",
        "search=a.test b.a.test",
        "tftp=10.0.2.2",
        "bootfile=pxelinux.0",
        "mtu=1500",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == want),
            "udhcpc did not report {want}:\n{out}"
        );
    }
    let (ok, out) = sh(&ns, "ping -c 2 -W 2 10.0.2.2");
    assert!(ok, "ping the gateway:\n{out}");
    let (ok, out) = sh(&ns, "dig @10.0.2.3 name.test +short +time=2 +tries=3");
    assert!(
        ok && out.trim() == "10.1.2.3",
        "dig through 10.0.2.3:\n{out}"
    );
    let (ok, out) = sh(
        &ns,
        &format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(b'hello-udp', ('10.0.2.2', {echo_port})); print(s.recv(100).decode())\""
        ),
    );
    assert!(
        ok && out.trim() == "hello-udp",
        "UDP echo through 10.0.2.2:\n{out}"
    );
    drop(dnsmasq);
    std::thread::sleep(Duration::from_millis(10));
}

/// Start netdevd with a user netdev on hub 0 and hand `ns` a tap on that hub, configured
/// statically as the DHCP lease would (10.0.2.15/24 via 10.0.2.2).
fn user_guest(dir: &TempDir, ns: &Netns, user_opts: &str) -> Proc {
    let sock = dir.path("n.sock");
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let d = start_netdevd(
        &sock,
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            user_opts,
            "--netdev",
            "hubport,id=up,hubid=0,netdev=u",
        ],
    );
    hand_tap(ns, &sock);
    let (ok, out) = sh(ns, "ip addr add 10.0.2.15/24 dev tap0 && ip link set tap0 up && ip route add default via 10.0.2.2");
    assert!(ok, "{out}");
    d
}

/// A dnsmasq answering `name.test` (A 10.1.2.3, AAAA 2001:db8::1234) on `addr` port 53.
fn dnsmasq(dir: &TempDir, addr: &str) -> Proc {
    Proc {
        child: Command::new("dnsmasq")
            .args([
                "-k",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--address=/name.test/10.1.2.3",
                "--address=/name.test/2001:db8::1234",
                "--log-facility=-",
            ])
            .arg(format!("--listen-address={addr}"))
            .arg(format!(
                "--pid-file={}",
                dir.path(&format!("dnsmasq-{addr}.pid")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian dnsmasq-base) must be installed"),
    }
}

/// IPv6 with the kernel's own stack as the client: SLAAC gives the namespace an address in
/// fec0::/64 from netdevd's router advertisement (duplicate address detection passes:
/// netdevd answers no probe), `rdisc6` (ndisc6) sees the prefix, the MTU and the DNS server
/// fec0::3, `ping -6` reaches the gateway and the DNS address, `dig @fec0::3 AAAA` is
/// answered through a dnsmasq on the host's 127.0.0.x (an IPv4 upstream for an IPv6 query,
/// which libslirp leaves unanswered) and through one on ::1, and UDP to fec0::2 reaches an
/// echo server on the host's ::1.
#[test]
fn ipv6_slaac_router_advert_ping_dns_and_udp_from_a_namespace() {
    let dir = TempDir::new("user6");
    let ns = Netns::new("user6");
    let dns4 = format!("127.0.0.{}", 100 + (std::process::id() + 7) % 100);
    let _dns4 = dnsmasq(&dir, &dns4);
    let _dns6 = dnsmasq(&dir, "::1");
    let echo = UdpSocket::bind("[::1]:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let sock = dir.path("n.sock");
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {dns4}\n")).unwrap();
    // Forwards from the host's ::1: into the guest's first IPv6 address (`[]`) and, QEMU's
    // guest form, to its IPv4 address.
    let free6 = || {
        std::net::TcpListener::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (fwd6, fwd4) = (free6(), free6());
    let user = format!(
        "user,id=u,dnssearch=example.test,hostfwd=tcp:[::1]:{fwd6}-[]:8080,hostfwd=tcp:[::1]:{fwd4}-:8080"
    );
    let mut d = start_netdevd(
        &sock,
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            &user,
            "--netdev",
            "hubport,id=up,hubid=0,netdev=u",
        ],
    );
    hand_tap(&ns, &sock);
    let (ok, out) = sh(&ns, "ip link set tap0 up");
    assert!(ok, "{out}");
    let mut addr = String::new();
    for _ in 0..100 {
        let (_, out) = sh(&ns, "ip -6 addr show dev tap0");
        if out.contains("inet6 fec0::") && !out.contains("tentative") {
            addr = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        addr.contains("/64"),
        "no SLAAC address in fec0::/64: {addr}"
    );
    assert!(!addr.contains("dadfailed"), "{addr}");
    let (ok, out) = sh(&ns, "rdisc6 -1 -r 3 -w 1000 tap0");
    assert!(ok, "rdisc6: {out}");
    assert!(out.contains("fec0::/64"), "rdisc6 saw no prefix: {out}");
    assert!(
        out.lines().any(|l| l.contains("MTU") && l.contains("1500")),
        "rdisc6 saw no MTU: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("Recursive DNS server") && l.contains("fec0::3")),
        "rdisc6 saw no RDNSS: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("DNS search list") && l.contains("example.test")),
        "rdisc6 saw no DNSSL: {out}"
    );
    for dst in ["fec0::2", "fec0::3"] {
        let (ok, out) = sh(&ns, &format!("ping -6 -c 2 -W 2 {dst}"));
        assert!(ok, "ping -6 {dst}: {out}");
    }
    let (ok, out) = sh(&ns, "dig +short +time=2 +tries=2 @fec0::3 AAAA name.test");
    assert!(
        ok && out.trim() == "2001:db8::1234",
        "dig through an IPv4 upstream: {out}"
    );
    let (ok, out) = sh(
        &ns,
        &format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(b'over six', ('fec0::2', {echo_port})); print(s.recv(100).decode())\""
        ),
    );
    assert!(ok && out.contains("over six"), "UDP echo over IPv6: {out}");
    // The advertisement makes netdevd the default router.
    let (_, out) = sh(&ns, "ip -6 route show default");
    assert!(
        out.contains("via fe80::2"),
        "no default route from the RA: {out}"
    );
    // TCP over IPv6: 1 MiB from an HTTP server on the host's ::1 through fec0::2 (curl -6),
    // and 8 MiB the other way to a sink on ::1.
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("file"), &body).unwrap();
    let (_http, hport) = common::http_server_on(&www, "::1");
    let (ok, out) = sh(
        &ns,
        &format!("curl -6 -sS -g --max-time 20 http://[fec0::2]:{hport}/file | md5sum"),
    );
    let want = common::digest("md5sum", &www.join("file"));
    assert!(ok && out.starts_with(&want), "curl -6: {out} vs {want}");
    let sink = std::net::TcpListener::bind("[::1]:0").unwrap();
    let sport = sink.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = sink.accept().unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        c.write_all(b"done").unwrap();
        all
    });
    let (ok, out) = sh(
        &ns,
        &format!("python3 -c \"import socket; s=socket.create_connection(('fec0::2',{sport}),timeout=30); d=bytes(range(256))*32768; s.sendall(d); s.shutdown(1); print(s.recv(10))\""),
    );
    assert!(ok && out.contains("done"), "upload over IPv6: {out}");
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 8 << 20);
    assert!(
        got.chunks(256)
            .all(|c| c.iter().enumerate().all(|(i, &b)| b == i as u8)),
        "upload bytes differ"
    );
    // The forwards from ::1: a server on the guest's port 8080 (both families) tells who
    // it saw. Into IPv6, connections come from fec0::2; into IPv4 (the guest's 10.0.2.15,
    // set by hand here), from 10.0.2.2.
    let (ok, out) = sh(&ns, "ip addr add 10.0.2.15/24 dev tap0");
    assert!(ok, "{out}");
    let _srv = common::ns_python(
        &ns,
        "import socket\nl=socket.create_server(('::',8080), family=socket.AF_INET6, dualstack_ipv6=True)\nprint('up',flush=True)\nfor _ in range(2):\n    c,a=l.accept()\n    c.sendall(a[0].encode()+b' '+c.recv(100))\n    c.close()\n",
    );
    for (port, from) in [(fwd6, "fec0::2 "), (fwd4, "::ffff:10.0.2.2 ")] {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("::1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"hi6").unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert_eq!(answer, format!("{from}hi6"), "hostfwd from [::1]:{port}");
    }
    // ISC dhclient, stateless: it takes the reply only with a Server Identifier. Its own
    // script would rewrite the machine's resolv.conf; ours only records what it got.
    let script = dir.path("dhclient6.sh");
    let got = dir.path("dhclient6.out");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep -E '^(reason|new_dhcp6_)' >> {}\n",
            got.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    let (_, out) = sh(
        &ns,
        &format!(
            "timeout 8 dhclient -6 -S -d -v -sf {} -lf {} -pf {} tap0 2>&1",
            script.display(),
            dir.path("dhclient6.leases").display(),
            dir.path("dhclient6.pid").display()
        ),
    );
    let env = std::fs::read_to_string(&got).unwrap_or_default();
    assert!(
        env.contains("new_dhcp6_name_servers=fec0::3")
            && env.contains("new_dhcp6_domain_search=example.test"),
        "dhclient -6 -S got no DNS: {env}\n{out}"
    );
    // Through an IPv6 upstream: the same netdevd options, resolv.conf naming ::1.
    drop(d);
    std::fs::write(&resolv, "nameserver ::1\n").unwrap();
    d = start_netdevd(
        &sock,
        &[
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--netdev",
            "user,id=u",
            "--netdev",
            "hubport,id=up,hubid=0,netdev=u",
        ],
    );
    let ns1 = Netns::new("user6a");
    hand_tap(&ns1, &sock);
    let (ok, out) = sh(&ns1, "ip link set tap0 up");
    assert!(ok, "{out}");
    let mut ready = false;
    for _ in 0..100 {
        let (_, out) = sh(&ns1, "ip -6 addr show dev tap0");
        if out.contains("inet6 fec0::") && !out.contains("tentative") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "no SLAAC address the second time");
    let (ok, out) = sh(&ns1, "dig +short +time=2 +tries=2 @fec0::3 AAAA name.test");
    assert!(
        ok && out.trim() == "2001:db8::1234",
        "dig AAAA through an IPv6 upstream: {out}"
    );
    let (ok, out) = sh(&ns1, "dig +short +time=2 +tries=2 @fec0::3 A name.test");
    assert!(
        ok && out.trim() == "10.1.2.3",
        "dig through an IPv6 upstream: {out}"
    );
    // Another prefix, as the options give it.
    drop(d);
    let dir2 = TempDir::new("user6b");
    let ns2 = Netns::new("user6b");
    let _d2 = user_guest(
        &dir2,
        &ns2,
        "user,id=u,ipv6-prefix=fd00:1:2:3::,ipv6-prefixlen=64,ipv6-host=fd00:1:2:3::1",
    );
    let mut ok = false;
    for _ in 0..100 {
        let (_, out) = sh(&ns2, "ip -6 addr show dev tap0");
        if out.contains("inet6 fd00:1:2:3:") && !out.contains("tentative") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "no SLAAC address in fd00:1:2:3::/64");
    let (ok, out) = sh(&ns2, "ping -6 -c 1 -W 2 fd00:1:2:3::1");
    assert!(ok, "ping -6 the configured host: {out}");
}

/// `smb=DIR`: smbclient in the namespace lists the share `qemu` at 10.0.2.4, fetches a file
/// from it byte for byte and writes one into it; `netdev_del` ends the private smbd and
/// removes its directory. A directory that cannot be read is refused with QEMU's text.
#[test]
fn smb_share_through_a_private_smbd() {
    let dir = TempDir::new("usmb");
    let ns = Netns::new("usmb");
    let share = dir.path("share");
    std::fs::create_dir(&share).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(share.join("blob"), &body).unwrap();
    let _d = user_guest(&dir, &ns, &format!("user,id=u,smb={}", share.display()));
    let private = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("netdevd-smb.{}.", _d.child.id())))
            })
            .collect()
    };
    assert_eq!(private().len(), 1, "no private SMB directory");
    let (ok, out) = sh(&ns, "ip link set lo up && smbclient -N -L //10.0.2.4");
    assert!(ok && out.contains("qemu"), "smbclient -L: {out}");
    let got = dir.path("got");
    let (ok, out) = sh(
        &ns,
        &format!(
            "cd {} && smbclient -N //10.0.2.4/qemu -c 'get blob {}; put /etc/hostname up.txt'",
            dir.path("").display(),
            got.display()
        ),
    );
    assert!(ok, "smbclient get/put: {out}");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        body,
        "the file came back changed"
    );
    assert_eq!(
        std::fs::read(share.join("up.txt")).unwrap(),
        std::fs::read("/etc/hostname").unwrap()
    );
    let mut q = common::Qmp::negotiated(&dir.path("n.sock"));
    let r = q.cmd(&serde_json::json!({"execute": "netdev_del", "arguments": {"id": "u"}}));
    assert!(r.get("return").is_some(), "{r}");
    assert!(private().is_empty(), "the private SMB directory is left");
    // Refused as QEMU refuses it.
    let r = q.cmd(&serde_json::json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u2", "smb": "/nonexistent/dir"}}));
    assert_eq!(
        r["error"]["desc"],
        "Error accessing shared directory '/nonexistent/dir': No such file or directory",
        "{r}"
    );
    let r = q.cmd(&serde_json::json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u2", "smb": share.to_str().unwrap(), "smbserver": "10.0.2.2"}}));
    assert_eq!(
        r["error"]["desc"], "Conflicting/invalid smbserver address",
        "{r}"
    );
    // Refused later, for an id in use: no directory is made either.
    let r = q.cmd(&serde_json::json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "up", "smb": share.to_str().unwrap()}}));
    assert!(r.get("error").is_some(), "{r}");
    assert!(private().is_empty(), "a refused netdev left a directory");
}

/// TCP from the namespace to servers on the host's loopback through 10.0.2.2: an HTTP
/// download and an upload, checked byte for byte, and 200 connections at once.
#[test]
fn tcp_to_the_host_through_the_gateway() {
    use std::io::{Read, Write};
    let dir = TempDir::new("usertcp");
    let ns = Netns::new("utcp");
    let _d = user_guest(&dir, &ns, "user,id=u");
    // An HTTP server with a 4 MiB file, on the host's loopback.
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let (_http, port) = common::http_server(&www);
    let (ok, out) = sh(
        &ns,
        &format!("busybox wget -q -O - http://10.0.2.2:{port}/blob | sha256sum"),
    );
    let want = common::digest("sha256sum", &www.join("blob"));
    assert!(
        ok && out.starts_with(&want),
        "download differs: {out} vs {want}"
    );
    // An upload: 16 MiB from the namespace to a sink on the host.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = sink.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = sink.accept().unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        c.write_all(b"done").unwrap();
        all
    });
    let (ok, out) = sh(
        &ns,
        &format!("python3 -c \"import socket; s=socket.create_connection(('10.0.2.2',{sport}),timeout=30); d=bytes(range(256))*65536; s.sendall(d); s.shutdown(1); print(s.recv(10))\""),
    );
    assert!(ok && out.contains("done"), "upload: {out}");
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 16 << 20);
    assert!(
        got.chunks(256)
            .all(|c| c.iter().enumerate().all(|(i, &b)| b == i as u8)),
        "upload bytes differ"
    );
    // 1000 connections at once, each echoing its own bytes.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let eport = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in echo.incoming().take(1000) {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let script = format!(
        "import socket, resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\nss=[socket.create_connection(('10.0.2.2',{eport}),timeout=30) for _ in range(1000)]\nfor i,s in enumerate(ss): s.sendall(b'conn%05d'%i)\nok=sum(1 for i,s in enumerate(ss) if s.recv(20)==b'conn%05d'%i)\nprint(ok)\n"
    );
    std::fs::write(dir.path("many.py"), script).unwrap();
    let (ok, out) = sh(&ns, &format!("python3 {}", dir.path("many.py").display()));
    assert!(ok && out.trim() == "1000", "concurrent connections: {out}");
    // A port nobody listens on: the guest sees the refusal.
    let closed = common::free_tcp_port();
    let (ok, out) = sh(&ns, &format!("python3 -c \"import socket; socket.create_connection(('10.0.2.2',{closed}),timeout=5)\""));
    assert!(!ok && out.contains("refused"), "{out}");
}

/// `hostfwd`: a host port forwarded to a server in the namespace; data both ways, byte for
/// byte, several connections in turn; QEMU's syntax errors; a busy port is refused.
#[test]
fn hostfwd_reaches_a_server_in_the_namespace() {
    use std::io::{Read, Write};
    let dir = TempDir::new("userfwd");
    let ns = Netns::new("ufwd");
    let port = common::free_tcp_port();
    let _d = user_guest(
        &dir,
        &ns,
        &format!("user,id=u,hostfwd=tcp:127.0.0.1:{port}-:8080"),
    );
    // A server in the namespace: reads a line, answers with it and 2 MiB of data.
    let server = "import socket\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0',8080)); l.listen(4); print('up', flush=True)\nfor _ in range(3):\n    c,a=l.accept(); f=c.makefile('rb'); line=f.readline()\n    c.sendall(line + bytes(range(256))*8192); c.shutdown(socket.SHUT_WR); f.close(); c.close()\n";
    let mut srv = common::ns_python(&ns, server);
    for i in 0..3 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(format!("hello {i}\n").as_bytes()).unwrap();
        let mut all = Vec::new();
        if let Err(e) = c.read_to_end(&mut all) {
            panic!("connection {i}: {e} after {} bytes", all.len());
        }
        let head = format!("hello {i}\n");
        assert!(all.starts_with(head.as_bytes()), "connection {i}");
        let body = &all[head.len()..];
        assert_eq!(body.len(), 2 << 20, "connection {i}");
        assert!(body
            .chunks(256)
            .all(|c| c.iter().enumerate().all(|(j, &b)| b == j as u8)));
    }
    let _ = srv.child.wait();
    // Syntax errors name the rule and QEMU's reason; a port in use cannot be forwarded.
    let mut q = common::Qmp::negotiated(&dir.path("n.sock"));
    let r = q.cmd(&serde_json::json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u2", "hostfwd": [{"str": "tcp::99999-:22"}]}}));
    assert_eq!(
        r["error"]["desc"],
        "Invalid host forwarding rule 'tcp::99999-:22' (Bad host port)"
    );
    let rule = format!("tcp:127.0.0.1:{port}-:22");
    let r = q.cmd(&serde_json::json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u2", "hostfwd": [{"str": rule}]}}));
    assert_eq!(
        r["error"]["desc"],
        format!("Could not set up host forwarding rule '{rule}'")
    );
}

/// `restrict=on`: the guest reaches nothing outside but the gateway's ping and the
/// forwards — TCP and UDP to the host fail, DHCP still answers (without router and DNS), and
/// a hostfwd into the guest still works.
#[test]
fn restrict_isolates_the_guest() {
    use std::io::Read;
    let dir = TempDir::new("userrestrict");
    let ns = Netns::new("urst");
    let fwd = common::free_tcp_port();
    let _d = user_guest(
        &dir,
        &ns,
        &format!("user,id=u,restrict=on,hostfwd=tcp:127.0.0.1:{fwd}-:9000"),
    );
    let tcp_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = tcp_server.local_addr().unwrap().port();
    tcp_server.set_nonblocking(true).unwrap();
    let udp_server = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let uport = udp_server.local_addr().unwrap().port();
    let (ok, out) = sh(&ns, &format!("python3 -c \"import socket; socket.create_connection(('10.0.2.2',{tport}),timeout=3)\""));
    assert!(!ok, "TCP out was let through: {out}");
    assert!(
        tcp_server.accept().is_err(),
        "the host server saw a connection"
    );
    let (ok, _) = sh(&ns, &format!("python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'x', ('10.0.2.2', {uport})); s.recv(10)\""));
    assert!(!ok, "UDP out was answered");
    assert!(
        udp_server.recv_from(&mut [0u8; 16]).is_err(),
        "the host saw the datagram"
    );
    let (ok, out) = sh(&ns, "ping -c 1 -W 2 10.0.2.2");
    assert!(ok, "the gateway answers ping even restricted: {out}");
    // DHCP still answers, without router and DNS.
    let (ok, out) = sh(
        &ns,
        "busybox udhcpc -i tap0 -f -q -n -t 3 -T 1 -s /bin/true 2>&1",
    );
    assert!(ok && out.contains("obtained"), "DHCP under restrict: {out}");
    // The forward into the guest works.
    let mut srv = common::ns_python(&ns, "import socket\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0',9000)); l.listen(1); print('up', flush=True)\nc,a=l.accept(); c.sendall(b'inside'); c.shutdown(socket.SHUT_WR); c.recv(1)");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "inside");
    drop(c);
    let _ = srv.child.wait();
}

/// UDP `hostfwd`: datagrams from host clients reach a server in the namespace, and its
/// answers come back to each client.
#[test]
fn udp_hostfwd_round_trips() {
    let dir = TempDir::new("userudpfwd");
    let ns = Netns::new("uudp");
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _d = user_guest(
        &dir,
        &ns,
        &format!("user,id=u,hostfwd=udp:127.0.0.1:{port}-:5353"),
    );
    let mut srv = common::ns_python(&ns, "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0',5353)); print('up', flush=True)\nfor _ in range(6):\n    d,a=s.recvfrom(2000); s.sendto(d.upper(), a)\n");
    for client in 0..2 {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let msg = format!("hello from client {client}");
        let mut got = None;
        // The first datagram may go while netdevd still learns the guest's MAC: retry.
        for _ in 0..20 {
            c.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
            let mut buf = [0u8; 100];
            if let Ok((n, _)) = c.recv_from(&mut buf) {
                got = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
        }
        assert_eq!(got, Some(msg.to_uppercase()), "client {client}");
    }
    let _ = srv.child.kill();
}

/// `guestfwd`: guest connections to a forwarded address reach a command (on its
/// stdin/stdout, one per connection) or a host service — also with `restrict=on`.
#[test]
fn guestfwd_to_a_command_and_to_a_host_service() {
    use std::io::Write;
    let dir = TempDir::new("userguestfwd");
    let ns = Netns::new("ugfw");
    let svc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = svc.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in svc.incoming().take(2) {
            let Ok(mut c) = c else { break };
            let _ = c.write_all(b"host-service");
        }
    });
    let opts = format!("user,id=u,restrict=on,guestfwd=tcp:10.0.2.100:7-cmd:tr a-z A-Z,guestfwd=tcp:10.0.2.101:80-127.0.0.1:{sport}");
    let _d = user_guest(&dir, &ns, &opts);
    let client = |addr: &str, port: u16, send: &str| {
        let py = format!(
            "import socket\ns=socket.create_connection(('{addr}',{port}),timeout=10)\ns.sendall(b'{send}'); s.shutdown(socket.SHUT_WR)\nd=b''\nwhile True:\n    x=s.recv(100)\n    if not x: break\n    d+=x\nprint(d.decode())\n"
        );
        let f = dir.path(&format!("c{port}.py"));
        std::fs::write(&f, py).unwrap();
        sh(&ns, &format!("python3 {}", f.display()))
    };
    for _ in 0..2 {
        let (ok, out) = client("10.0.2.100", 7, "hello guestfwd");
        assert!(ok && out.trim() == "HELLO GUESTFWD", "cmd: {out}");
    }
    let (ok, out) = client("10.0.2.101", 80, "");
    assert!(ok && out.trim() == "host-service", "host service: {out}");
    // Other ports of the forward address, and other destinations, stay closed (restrict).
    let (ok, _) = client("10.0.2.101", 81, "");
    assert!(!ok);
}

/// TFTP: a client in the namespace fetches the boot file (the name DHCP offers) from
/// 10.0.2.2, with and without a larger block size; names leaving the root are refused.
#[test]
fn tftp_serves_the_boot_file_and_nothing_outside_its_root() {
    let dir = TempDir::new("usertftp");
    let ns = Netns::new("utftp");
    let root = dir.path("tftp");
    std::fs::create_dir_all(&root).unwrap();
    let boot: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(root.join("pxelinux.0"), &boot).unwrap();
    std::fs::write(dir.path("secret"), b"not for the guest").unwrap();
    std::os::unix::fs::symlink(dir.path("secret"), root.join("escape")).unwrap();
    let _d = user_guest(
        &dir,
        &ns,
        &format!(
            "user,id=u,restrict=on,tftp={},bootfile=pxelinux.0",
            root.display()
        ),
    );
    let want = common::digest("sha256sum", &root.join("pxelinux.0"));
    for (i, extra) in ["", "-b 1024"].into_iter().enumerate() {
        let out_file = dir.path(&format!("got{i}"));
        let (ok, out) = sh(
            &ns,
            &format!(
                "busybox tftp -g {extra} -r pxelinux.0 -l {} 10.0.2.2 && sha256sum {}",
                out_file.display(),
                out_file.display()
            ),
        );
        assert!(ok && out.starts_with(&want), "tftp {extra}: {out}");
    }
    // tftp-hpa, the client PXE set-ups use on Linux.
    let out_file = dir.path("got-hpa");
    let (ok, out) = sh(
        &ns,
        &format!(
            "tftp 10.0.2.2 -m binary -c get pxelinux.0 {} && sha256sum {}",
            out_file.display(),
            out_file.display()
        ),
    );
    assert!(ok && out.starts_with(&want), "tftp-hpa: {out}");
    for name in ["escape", "../secret", "nope"] {
        let (ok, out) = sh(
            &ns,
            &format!("busybox tftp -g -r {name} -l /dev/null 10.0.2.2"),
        );
        assert!(!ok, "{name} was served: {out}");
    }
}

/// Bad input from the guest: while a 16 MiB download runs, the namespace writes 3000
/// malformed frames straight onto its tap (truncated at every layer, lengths that
/// contradict the frame, 9000-byte frames, TCP flag combinations that make no sense,
/// segments for connections that do not exist, IP fragments, garbage). The download
/// arrives intact, and the daemon still answers ping and QMP.
#[test]
fn malformed_frames_are_dropped_and_other_flows_go_on() {
    let dir = TempDir::new("userbad");
    let ns = Netns::new("ubad");
    let _d = user_guest(&dir, &ns, "user,id=u");
    let (ok, out) = sh(&ns, "ip link set tap0 mtu 9000");
    assert!(ok, "{out}");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let (_http, port) = common::http_server(&www);
    let want = common::digest("md5sum", &www.join("blob"));
    // The download, throttled so that it is still running while the bad frames go in.
    let download = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg(format!(
            "curl -sS --max-time 120 --limit-rate 4M http://10.0.2.2:{port}/blob | md5sum"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let inject = r#"
import random, socket, struct
random.seed(7)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('tap0', 0))
me = bytes.fromhex(open('/sys/class/net/tap0/address').read().strip().replace(':', ''))
gw = bytes.fromhex('52550a000202')
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
def ip(proto, payload, tot=None, ihl=5, frag=0x4000, dst=b'\x0a\x00\x02\x02'):
    h = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, tot if tot is not None else 20 + len(payload), 1, frag, 64, proto, 0, b'\x0a\x00\x02\x0f', dst)
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + b'\0' * (ihl * 4 - 20 if ihl > 5 else 0) + payload
def tcp(sport, dport, flags, off=5, data=b'', seq=1, ack=0):
    return struct.pack('!HHIIBBHHH', sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + data
def udp(sport, dport, data, length=None):
    return struct.pack('!HHHH', sport, dport, length if length is not None else 8 + len(data), 0) + data
eth = gw + me + b'\x08\x00'
arp = gw + me + b'\x08\x06'
bad = [
    b'', gw, gw + me, eth, eth + b'\x45', arp, arp + b'\x00\x01\x08\x00\x06',
    arp + b'\x00\x01\x08\x00\x06\x04\x00\x01' + me + b'\x0a\x00\x02\x0f' + b'\0' * 6 + b'\x0a\x00\x02\x02' + b'\0' * 9000,
    eth + ip(6, b'')[:15], eth + ip(6, tcp(1, 80, 2)[:10]),
    eth + ip(6, tcp(1, 80, 2), tot=60000), eth + ip(6, tcp(1, 80, 2), tot=10),
    eth + ip(6, tcp(1, 80, 2), ihl=15), eth + ip(6, tcp(1, 80, 2), ihl=3),
    eth + ip(6, tcp(1, 80, 0x02 | 0x01 | 0x04, off=15)), eth + ip(6, tcp(1, 80, 2, off=2)),
    eth + ip(17, udp(1, 53, b'x' * 100, length=4000)), eth + ip(17, udp(1, 53, b'x', length=3)),
    eth + ip(17, udp(68, 67, b'\x01' * 8000)), eth + ip(17, udp(68, 67, b'\x01\x01\x06')),
    eth + ip(17, udp(5, 69, b'\x00\x01' + b'a' * 8000)), eth + ip(17, udp(5, 69, b'\x00')),
    eth + ip(1, b'\x08\x00'), eth + ip(1, b'\x08\x00\x00\x00\x00\x01\x00\x01' + b'p' * 8900),
    eth + ip(6, tcp(1, 80, 0x3f)), eth + ip(6, tcp(2, 81, 0x10, data=b'data for no one')),
    eth + ip(6, tcp(3, 82, 0x02, data=b'x' * 8900)),
    eth + ip(17, udp(1, 2, b'fragment'), frag=0x2000), eth + ip(17, udp(1, 2, b'frag'), frag=0x0010),
    eth + ip(99, b'unknown protocol'), gw + me + b'\x86\xdd' + b'\x60' + b'\0' * 60,
    gw + me + b'\x81\x00\x00\x05\x08\x00' + ip(6, tcp(1, 80, 2)),
]
n = 0
for i in range(3000):
    f = bad[i % len(bad)] if i < 2000 else bytes(random.getrandbits(8) for _ in range(random.randrange(1, 1600)))
    if i >= 2000 and random.random() < 0.5:
        f = eth + f
    # Network rule: whatever random bytes happen to parse as IPv4 goes to 10.0.2.2 (the
    # host's loopback), never to an address outside.
    if len(f) >= 34 and f[12:14] == b'\x08\x00':
        f = f[:30] + bytes([10, 0, 2, 2]) + f[34:]
    try:
        s.send(f)
        n += 1
    except OSError:
        pass
print(n)
"#;
    let (ok, out) = sh(
        &ns,
        &format!("python3 -c \"{}\"", inject.replace('"', "\\\"")),
    );
    assert!(ok, "injector: {out}");
    let sent: usize = out.trim().parse().unwrap_or(0);
    assert!(sent > 2500, "only {sent} bad frames went out");
    let out = download.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.starts_with(&want),
        "the download was hurt: {got} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, out) = sh(&ns, "ping -c 1 -W 2 10.0.2.2");
    assert!(ok, "ping after the bad frames: {out}");
    let mut q = common::Qmp::negotiated(&dir.path("n.sock"));
    let r = q.cmd(&serde_json::json!({"execute": "x-query-netdev-stats"}));
    // Every kind of bad frame sent is counted under its own reason (frames shorter than an
    // Ethernet header stop at the tap).
    let u = r["return"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "u"))
        .unwrap_or_else(|| panic!("no stats for u: {r}"));
    for why in [
        "bad-arp",
        "bad-ipv4",
        "bad-tcp",
        "bad-udp",
        "not-echo-request",
        "bad-ipv6",
        "other-ethertype",
        "other-ip-protocol",
    ] {
        assert!(
            u["backend-drops"][why].as_u64().unwrap_or(0) > 0,
            "no {why} drops counted: {u}"
        );
    }
}
