//! One behaviour suite for a user-mode network, run against netdevd's `user` netdev and
//! against slirp4netns (libslirp, what QEMU's `-netdev user` is), so that what the suite
//! expects is what libslirp does.
//!
//! Everything happens in namespaces the test makes: `host` is where the NAT runs (netdevd,
//! or slirp4netns) with a dnsmasq on its 127.0.0.1 and servers on its loopback; `guest`
//! holds the tap and the clients (busybox udhcpc, ping, dig, curl, Python); `far` is another
//! machine, reached from `host` over a veth (198.18.0.2), standing for "outside". Needs root.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hand_tap, ns_python, sh, start_netdevd_env, Netns, Proc, TempDir};

/// The address of `far` as `host` and the guest see it.
const FAR: &str = "198.18.0.2";
/// Its IPv6 address (documentation prefix, only on the test's veth).
const FAR6: &str = "2001:db8:f::2";
/// Ports of the servers in `host` (on every address, so on its loopback) and in `far`.
const HTTP: u16 = 8080;
const ECHO: u16 = 7000;
const UDP_ECHO: u16 = 7001;
/// The forward `host` 127.0.0.1:FWD_HOST -> guest :FWD_GUEST.
const FWD_HOST: u16 = 2222;
const FWD_GUEST: u16 = 8022;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Nat {
    Netdevd,
    /// netdevd as on kernels before 6.9 (no `SO_PEEK_OFF` for TCP: peeks from the start).
    NetdevdNoPeekOff,
    Slirp4netns,
}

fn must(ns: &Netns, cmd: &str) {
    let (ok, out) = sh(ns, cmd);
    assert!(ok, "{cmd}: {out}");
}

/// HTTP (serving `dir`), a TCP echo and a UDP echo, on every address of the namespace, IPv4
/// and IPv6 (dual-stack sockets).
fn servers(ns: &Netns, dir: &std::path::Path) -> Proc {
    let script = format!(
        r#"
import os, resource, socket, socketserver, threading, http.server
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
os.chdir({dir:?})
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
class Http(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    address_family = socket.AF_INET6
threading.Thread(target=Http(('::', {HTTP}), Quiet).serve_forever, daemon=True).start()
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(65536)
            if not d: break
            self.request.sendall(d)
class Tcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 2048
    address_family = socket.AF_INET6
threading.Thread(target=Tcp(('::', {ECHO}), Echo).serve_forever, daemon=True).start()
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.bind(('::', {UDP_ECHO}))
def udp():
    while True:
        d, a = u.recvfrom(65536)
        u.sendto(d, a)
threading.Thread(target=udp, daemon=True).start()
print('up', flush=True)
threading.Event().wait()
"#,
        dir = dir.display().to_string()
    );
    ns_python(ns, &script)
}

struct World {
    nat: Nat,
    dir: TempDir,
    host: Netns,
    guest: Netns,
    far: Netns,
    /// Processes, dropped (killed) in reverse order of start.
    procs: Vec<Proc>,
    /// `ip netns exec` reads the host namespace's resolv.conf from here.
    etc_netns: std::path::PathBuf,
    /// The MD5 of the file the HTTP servers serve.
    md5: String,
}

impl Drop for World {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        let _ = std::fs::remove_dir_all(&self.etc_netns);
    }
}

impl World {
    fn new(nat: Nat) -> World {
        let tag = match nat {
            Nat::Netdevd => "sn",
            Nat::NetdevdNoPeekOff => "so",
            Nat::Slirp4netns => "ss",
        };
        let dir = TempDir::new(&format!("suite-{tag}"));
        let host = Netns::new(&format!("{tag}h"));
        let guest = Netns::new(&format!("{tag}g"));
        let far = Netns::new(&format!("{tag}f"));
        let etc_netns = std::path::PathBuf::from("/etc/netns").join(&host.name);
        let mut w = World {
            nat,
            dir,
            host,
            guest,
            far,
            procs: Vec::new(),
            etc_netns,
            md5: String::new(),
        };
        // ICMP sockets for everyone in `host` (its own setting, not the machine's).
        must(
            &w.host,
            "sysctl -q -w net.ipv4.ping_group_range='0 2147483647'",
        );
        must(
            &w.host,
            &format!(
                "ip link add xhost type veth peer name xfar netns {} && ip addr add 198.18.0.1/24 dev xhost && ip link set xhost up",
                w.far.name
            ),
        );
        must(
            &w.far,
            &format!("ip addr add {FAR}/24 dev xfar && ip link set xfar up"),
        );
        must(&w.host, "ip -6 addr add 2001:db8:f::1/64 dev xhost nodad");
        must(&w.far, &format!("ip -6 addr add {FAR6}/64 dev xfar nodad"));
        // The file the HTTP servers serve, 1 MiB of varied bytes.
        let www = w.dir.path("www");
        std::fs::create_dir_all(&www).unwrap();
        let body: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(www.join("file"), &body).unwrap();
        w.md5 = common::digest("md5sum", &www.join("file"));
        // The upstream resolver, on the host namespace's loopback.
        w.procs.push(Proc {
            child: Command::new("ip")
                .args(["netns", "exec", &w.host.name, "dnsmasq"])
                .args([
                    "-k",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--port=53",
                    "--address=/name.test/10.1.2.3",
                ])
                .arg(format!(
                    "--pid-file={}",
                    w.dir.path("dnsmasq.pid").display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (Debian dnsmasq-base) must be installed"),
        });
        std::fs::create_dir_all(&w.etc_netns).unwrap();
        std::fs::write(w.etc_netns.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        w.procs.push(servers(&w.host, &www));
        w.procs.push(servers(&w.far, &www));
        match nat {
            Nat::Netdevd => w.start_netdevd(&[]),
            Nat::NetdevdNoPeekOff => w.start_netdevd(&[("NETDEVD_NO_PEEK_OFF", "1")]),
            Nat::Slirp4netns => w.start_slirp4netns(),
        }
        // The guest's side: a lease from the NAT's DHCP server, printed and applied.
        let script = w.dir.path("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in bound|renew)\n  env | grep -E '^(ip|subnet|router|dns|serverid|lease)=' | sort\n  ip addr add \"$ip/$subnet\" dev \"$interface\"\n  ip route add default via \"$router\"\nesac\n",
        )
        .unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&script)
            .status()
            .unwrap();
        let (ok, out) = sh(
            &w.guest,
            &format!(
                "ip link set tap0 up && busybox udhcpc -i tap0 -f -q -n -t 5 -T 1 -s {}",
                script.display()
            ),
        );
        assert!(ok, "{nat:?}: udhcpc failed:\n{out}");
        for want in [
            "ip=10.0.2.15",
            "subnet=255.255.255.0",
            "router=10.0.2.2",
            "dns=10.0.2.3",
            "serverid=10.0.2.2",
            "lease=86400",
        ] {
            assert!(
                out.lines().any(|l| l.trim() == want),
                "{nat:?}: udhcpc did not report {want}:\n{out}"
            );
        }
        w
    }

    fn start_netdevd(&mut self, env: &[(&str, &str)]) {
        let sock = self.dir.path("n.sock");
        let resolv = self.etc_netns.join("resolv.conf");
        let hostfwd = format!("hostfwd=tcp:127.0.0.1:{FWD_HOST}-:{FWD_GUEST}");
        self.procs.push(start_netdevd_env(
            Some(&self.host),
            &sock,
            &[
                "--resolv-conf",
                resolv.to_str().unwrap(),
                "--netdev",
                &format!("user,id=u,{hostfwd}"),
                "--netdev",
                "hubport,id=up,hubid=0,netdev=u",
            ],
            env,
        ));
        hand_tap(&self.guest, &sock);
    }

    fn start_slirp4netns(&mut self) {
        let api = self.dir.path("slirp.sock");
        self.procs.push(Proc {
            child: Command::new("ip")
                .args(["netns", "exec", &self.host.name, "slirp4netns"])
                .args(["--netns-type=path", "--enable-ipv6", "--api-socket"])
                .arg(&api)
                .arg(format!("/run/netns/{}", self.guest.name))
                .arg("tap0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("slirp4netns (Debian slirp4netns) must be installed"),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(api.exists() && sh(&self.guest, "ip link show tap0").0) {
            assert!(Instant::now() < deadline, "slirp4netns did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // slirp4netns's own default guest is 10.0.2.100 (its --configure address); QEMU's
        // and netdevd's is the first DHCP address, which the suite's guest takes.
        let mut c = UnixStream::connect(&api).unwrap();
        write!(
            c,
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{FWD_HOST},"guest_addr":"10.0.2.15","guest_port":{FWD_GUEST}}}}}"#
        )
        .unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("return"), "add_hostfwd: {answer}");
    }

    fn guest(&self, cmd: &str) -> (bool, String) {
        sh(&self.guest, cmd)
    }

    fn check(&self, what: &str, cmd: &str, want: &str) {
        let (ok, out) = self.guest(cmd);
        assert!(
            ok && out.trim() == want,
            "{:?}: {what}: `{cmd}` printed {out:?}, want {want:?}",
            self.nat
        );
    }
}

fn suite(nat: Nat) {
    let w = World::new(nat);
    // ICMP: the gateway answers itself; an outside address through an ICMP socket.
    for to in ["10.0.2.2", "10.0.2.3", FAR] {
        let (ok, out) = w.guest(&format!("ping -c 2 -W 3 {to}"));
        assert!(ok, "{nat:?}: ping {to}:\n{out}");
    }
    // DNS through 10.0.2.3 to the dnsmasq upstream, over UDP and over TCP.
    for tcp in ["", "+tcp"] {
        w.check(
            "dig",
            &format!("dig @10.0.2.3 name.test +short +time=3 +tries=2 {tcp}"),
            "10.1.2.3",
        );
    }
    // HTTP from the host's loopback (through 10.0.2.2) and from outside.
    for to in ["10.0.2.2", FAR] {
        w.check(
            "curl",
            &format!("curl -sS --max-time 30 http://{to}:{HTTP}/file | md5sum | cut -d' ' -f1"),
            &w.md5,
        );
    }
    // UDP echo, both places.
    for to in ["10.0.2.2", FAR] {
        w.check(
            "udp echo",
            &format!(
                "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(b'hello-udp', ('{to}', {UDP_ECHO})); print(s.recv(100).decode())\""
            ),
            "hello-udp",
        );
    }
    // IPv6, both NATs (slirp4netns with --enable-ipv6): a SLAAC address from the router
    // advertisement and ping -6 of the gateway. slirp4netns's prefix is fd00::/64 (its
    // default), netdevd's QEMU's fec0::/64.
    let p6 = if nat == Nat::Slirp4netns {
        "fd00::"
    } else {
        "fec0::"
    };
    let mut addr = false;
    for _ in 0..100 {
        let (_, out) = w.guest("ip -6 addr show dev tap0");
        if out.contains(&format!("inet6 {p6}")) && !out.contains("tentative") {
            addr = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(addr, "{nat:?}: no SLAAC address");
    let (ok, out) = w.guest(&format!("ping -6 -c 2 -W 3 {p6}2"));
    assert!(ok, "{nat:?}: ping -6 {p6}2:\n{out}");
    // Both are the default router; TCP and UDP over IPv6 reach the host's ::1 through the
    // gateway address and a host outside through the route.
    let (_, out) = w.guest("ip -6 route show default");
    assert!(
        out.contains("via fe80::2"),
        "{nat:?}: no default route: {out}"
    );
    for to in [format!("{p6}2"), FAR6.to_string()] {
        w.check(
            "curl -6",
            &format!(
                "curl -6 -g -sS --max-time 30 http://[{to}]:{HTTP}/file | md5sum | cut -d' ' -f1"
            ),
            &w.md5,
        );
        w.check(
            "tcp echo over IPv6",
            &format!("python3 -c \"import socket; s=socket.create_connection(('{to}',{ECHO}),timeout=10); s.sendall(b'six'*1000); d=b''\nwhile len(d)<3000: d+=s.recv(4096)\nprint(d==b'six'*1000)\""),
            "True",
        );
        w.check(
            "udp echo over IPv6",
            &format!(
                "python3 -c \"import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(b'hello-udp6', ('{to}', {UDP_ECHO})); print(s.recv(100).decode())\""
            ),
            "hello-udp6",
        );
    }
    // Where they differ: libslirp 4.7 relays IPv6 DNS queries only to IPv6 resolvers (the
    // suite's is on 127.0.0.1) and has no external ICMPv6; netdevd does both.
    if nat != Nat::Slirp4netns {
        w.check(
            "dig over IPv6",
            "dig @fec0::3 name.test +short +time=3 +tries=2",
            "10.1.2.3",
        );
        let (ok, out) = w.guest(&format!("ping -6 -c 2 -W 3 {FAR6}"));
        assert!(ok, "{nat:?}: ping -6 {FAR6}:\n{out}");
    }
    // An inbound forward: host 127.0.0.1:FWD_HOST reaches a server in the guest.
    let _srv = ns_python(
        &w.guest,
        &format!("import socket\nl=socket.create_server(('0.0.0.0',{FWD_GUEST}))\nprint('up',flush=True)\nc,a=l.accept()\nc.sendall(b'from-guest:'+c.recv(100))\nc.close()\n"),
    );
    let (ok, out) = sh(
        &w.host,
        &format!("python3 -c \"import socket; c=socket.create_connection(('127.0.0.1',{FWD_HOST}),timeout=10); c.sendall(b'hi'); print(c.recv(100).decode())\""),
    );
    assert!(
        ok && out.trim() == "from-guest:hi",
        "{nat:?}: hostfwd: {out}"
    );
    // 1000 TCP connections at once to the host's loopback, each echoing its own bytes.
    w.check(
        "1000 connections",
        &format!("python3 -c \"import socket, resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\nss=[socket.create_connection(('10.0.2.2',{ECHO}),timeout=30) for _ in range(1000)]\nfor i,s in enumerate(ss): s.sendall(b'conn%05d'%i)\nprint(sum(1 for i,s in enumerate(ss) if s.recv(20)==b'conn%05d'%i))\""),
        "1000",
    );
}

#[test]
fn behaviour_suite_against_netdevd() {
    suite(Nat::Netdevd);
}

#[test]
fn behaviour_suite_against_netdevd_without_peek_offsets() {
    suite(Nat::NetdevdNoPeekOff);
}

#[test]
fn behaviour_suite_against_slirp4netns() {
    suite(Nat::Slirp4netns);
}
