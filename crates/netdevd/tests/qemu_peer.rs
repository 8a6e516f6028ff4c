//! Real QEMU 7.2 as the peer of netdevd's socket, stream and dgram netdevs. QEMU runs with
//! no guest (`-machine none`): its side of each link is joined by a QEMU hub to a QEMU
//! `socket,udp=` netdev that the test reads and writes, and netdevd's side is joined by a
//! netdevd hub to a `socket,udp=` netdev the test also reads and writes. Frames must cross
//! both ways byte for byte, through QEMU's own framing on the link between the two.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{free_tcp_port, start_netdevd, start_qemu, Qmp, TempDir};
use serde_json::json;

fn free_udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn frame(seed: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, seed]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// Send `f` from `from` to `to` until it arrives at `at` (the link may still be coming up).
fn cross(from: &UdpSocket, to: u16, at: &UdpSocket, f: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 70000];
    while Instant::now() < deadline {
        from.send_to(f, ("127.0.0.1", to)).unwrap();
        while let Ok((n, _)) = at.recv_from(&mut buf) {
            if &buf[..n] == f {
                return;
            }
        }
    }
    panic!("a {}-byte frame did not cross", f.len());
}

/// The two UDP ends a wiring exposes: (test socket, port to send to) on each side.
struct Ends {
    qemu_in: u16,
    qemu_tap: UdpSocket,
    nd_in: u16,
    nd_tap: UdpSocket,
}

fn udp_end() -> (UdpSocket, u16) {
    (free_udp(), free_udp_port())
}

/// QEMU args joining `link` (a netdev named `l`) to a udp netdev the test talks to.
fn qemu_args(link: String, tap: &UdpSocket, inport: u16) -> Vec<String> {
    vec![
        "-netdev".into(),
        link,
        "-netdev".into(),
        "hubport,id=ql,hubid=0,netdev=l".into(),
        "-netdev".into(),
        format!(
            "socket,id=u,udp=127.0.0.1:{},localaddr=127.0.0.1:{inport}",
            tap.local_addr().unwrap().port()
        ),
        "-netdev".into(),
        "hubport,id=qu,hubid=0,netdev=u".into(),
    ]
}

fn nd_args(link: String, tap: &UdpSocket, inport: u16) -> Vec<String> {
    vec![
        "--netdev".into(),
        link,
        "--netdev".into(),
        "hubport,id=nl,hubid=0,netdev=l".into(),
        "--netdev".into(),
        format!(
            "socket,id=u,udp=127.0.0.1:{},localaddr=127.0.0.1:{inport}",
            tap.local_addr().unwrap().port()
        ),
        "--netdev".into(),
        "hubport,id=nu,hubid=0,netdev=u".into(),
    ]
}

fn exchange(e: &Ends) {
    for (i, len) in [60usize, 61, 1514, 9000, 65000].into_iter().enumerate() {
        let f = frame(i as u8, len);
        cross(&e.qemu_tap, e.qemu_in, &e.nd_tap, &f);
        let g = frame(100 + i as u8, len);
        cross(&e.nd_tap, e.nd_in, &e.qemu_tap, &g);
    }
}

/// netdevd listens, QEMU connects: `-netdev socket,connect=` to netdevd's `socket,listen=`.
#[test]
fn qemu_socket_connect_to_netdevd_listen() {
    let dir = TempDir::new("qpeer-sock");
    let port = free_tcp_port();
    let (qtap, qin) = udp_end();
    let (ntap, nin) = udp_end();
    let nd_a = nd_args(format!("socket,id=l,listen=127.0.0.1:{port}"), &ntap, nin);
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &nd_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let qa = qemu_args(format!("socket,id=l,connect=127.0.0.1:{port}"), &qtap, qin);
    let _q = start_qemu(
        &dir.path("q.sock"),
        &qa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    exchange(&Ends {
        qemu_in: qin,
        qemu_tap: qtap,
        nd_in: nin,
        nd_tap: ntap,
    });
}

/// QEMU listens, netdevd connects.
#[test]
fn netdevd_socket_connect_to_qemu_listen() {
    let dir = TempDir::new("qpeer-conn");
    let port = free_tcp_port();
    let (qtap, qin) = udp_end();
    let (ntap, nin) = udp_end();
    let qa = qemu_args(format!("socket,id=l,listen=127.0.0.1:{port}"), &qtap, qin);
    let _q = start_qemu(
        &dir.path("q.sock"),
        &qa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let nd_a = nd_args(format!("socket,id=l,connect=127.0.0.1:{port}"), &ntap, nin);
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &nd_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    exchange(&Ends {
        qemu_in: qin,
        qemu_tap: qtap,
        nd_in: nin,
        nd_tap: ntap,
    });
}

/// QEMU 7.2's `stream` netdev over a unix socket to netdevd's stream server.
#[test]
fn qemu_stream_unix_to_netdevd() {
    let dir = TempDir::new("qpeer-stream");
    let path = dir.path("vm.sock");
    let (qtap, qin) = udp_end();
    let (ntap, nin) = udp_end();
    let nd_a = nd_args(
        format!(
            "stream,id=l,server=on,addr.type=unix,addr.path={}",
            path.display()
        ),
        &ntap,
        nin,
    );
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &nd_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let qa = qemu_args(
        format!(
            "stream,id=l,server=off,addr.type=unix,addr.path={}",
            path.display()
        ),
        &qtap,
        qin,
    );
    let _q = start_qemu(
        &dir.path("q.sock"),
        &qa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    exchange(&Ends {
        qemu_in: qin,
        qemu_tap: qtap,
        nd_in: nin,
        nd_tap: ntap,
    });
}

/// QEMU 7.2's `stream` netdev as the server over TCP, netdevd's `stream` (JSON form) as the
/// client.
#[test]
fn netdevd_stream_inet_to_qemu() {
    let dir = TempDir::new("qpeer-stream-inet");
    let port = free_tcp_port();
    let (qtap, qin) = udp_end();
    let (ntap, nin) = udp_end();
    let qa = qemu_args(
        format!("stream,id=l,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        &qtap,
        qin,
    );
    let _q = start_qemu(
        &dir.path("q.sock"),
        &qa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let link = json!({"type": "stream", "id": "l", "addr": {"type": "inet", "host": "127.0.0.1", "port": port.to_string()}});
    let nd_a = nd_args(link.to_string(), &ntap, nin);
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &nd_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    exchange(&Ends {
        qemu_in: qin,
        qemu_tap: qtap,
        nd_in: nin,
        nd_tap: ntap,
    });
}

/// QEMU 7.2's `dgram` netdev (unix datagrams) to netdevd's `dgram`.
#[test]
fn qemu_dgram_unix_to_netdevd() {
    let dir = TempDir::new("qpeer-dgram");
    let (qp, np) = (dir.path("q.dgram"), dir.path("n.dgram"));
    let (qtap, qin) = udp_end();
    let (ntap, nin) = udp_end();
    let nd_a = nd_args(
        format!(
            "dgram,id=l,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            np.display(),
            qp.display()
        ),
        &ntap,
        nin,
    );
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &nd_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let qa = qemu_args(
        format!(
            "dgram,id=l,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            qp.display(),
            np.display()
        ),
        &qtap,
        qin,
    );
    let _q = start_qemu(
        &dir.path("q.sock"),
        &qa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    exchange(&Ends {
        qemu_in: qin,
        qemu_tap: qtap,
        nd_in: nin,
        nd_tap: ntap,
    });
}

/// A listening netdevd socket takes a second VM after the first leaves, and its link
/// follows the connection (down, up, down).
#[test]
fn listener_serves_one_peer_after_another() {
    let dir = TempDir::new("qpeer-again");
    let port = free_tcp_port();
    let (ntap, nin) = udp_end();
    let nd_a = nd_args(format!("socket,id=l,listen=127.0.0.1:{port}"), &ntap, nin);
    let _nd = start_netdevd(
        &dir.path("n.sock"),
        &nd_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for round in 0..2 {
        let (qtap, qin) = udp_end();
        let qa = qemu_args(format!("socket,id=l,connect=127.0.0.1:{port}"), &qtap, qin);
        let mut q = start_qemu(
            &dir.path(&format!("q{round}.sock")),
            &qa.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        exchange(&Ends {
            qemu_in: qin,
            qemu_tap: qtap,
            nd_in: nin,
            nd_tap: ntap.try_clone().unwrap(),
        });
        let mut m = Qmp::negotiated(&dir.path(&format!("q{round}.sock")));
        m.cmd(&json!({"execute": "quit"}));
        q.child.wait().unwrap();
    }
}

/// `socket,mcast=` between QEMU and netdevd, inside a network namespace this test made
/// (multicast stays on its loopback). The test's ends are unix datagram sockets, reachable
/// from any namespace.
#[test]
fn multicast_between_qemu_and_netdevd_in_a_netns() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("qpeer-mcast");
    let ns = common::Netns::new("mcast");
    let group = format!(
        "239.255.77.{}:{}",
        1 + std::process::id() % 200,
        20000 + std::process::id() % 20000
    );
    let end = |side: &str| {
        let t = dir.path(&format!("{side}-t.sock"));
        let sock = UnixDatagram::bind(&t).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let u = dir.path(&format!("{side}-u.sock"));
        let opt = format!(
            "dgram,id=u,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            u.display(),
            t.display()
        );
        (sock, u, opt)
    };
    let (qend, qu, qopt) = end("q");
    let (nend, nu, nopt) = end("n");
    let link = format!("socket,id=l,mcast={group},localaddr=127.0.0.1");
    let _nd = common::start_netdevd_in(
        Some(&ns),
        &dir.path("n.sock"),
        &[
            "--netdev",
            &link,
            "--netdev",
            "hubport,id=nl,hubid=0,netdev=l",
            "--netdev",
            &nopt,
            "--netdev",
            "hubport,id=nu,hubid=0,netdev=u",
        ],
    );
    let _q = common::start_qemu_in(
        Some(&ns),
        &dir.path("q.sock"),
        &[
            "-netdev",
            &link,
            "-netdev",
            "hubport,id=ql,hubid=0,netdev=l",
            "-netdev",
            &qopt,
            "-netdev",
            "hubport,id=qu,hubid=0,netdev=u",
        ],
    );
    let cross = |from: &UnixDatagram, to: &std::path::Path, at: &UnixDatagram, f: &[u8]| {
        let mut buf = vec![0u8; 70000];
        for _ in 0..50 {
            // The peer's socket may not be bound yet while it starts.
            if from.send_to(f, to).is_err() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            while let Ok(n) = at.recv(&mut buf) {
                if &buf[..n] == f {
                    return;
                }
            }
        }
        panic!("a {}-byte frame did not cross the multicast group", f.len());
    };
    for (i, len) in [60usize, 1514, 9000].into_iter().enumerate() {
        cross(&qend, &qu, &nend, &frame(i as u8, len));
        cross(&nend, &nu, &qend, &frame(50 + i as u8, len));
    }
}
