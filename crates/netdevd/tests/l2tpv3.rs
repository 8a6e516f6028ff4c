//! The L2TPv3 data header (`netdevd_wire::l2tpv3`) against QEMU 7.2's own `l2tpv3` netdev:
//! QEMU runs the pseudowire's far end on a hub with a `socket,udp=` netdev, the test holds
//! both ends' sockets. A frame into QEMU's socket netdev comes out of its l2tpv3 netdev with
//! exactly the header `Layout::header` builds; a datagram the test builds with `Layout` goes
//! into QEMU's l2tpv3 netdev and comes out of the socket netdev as the frame. Loopback only.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{start_qemu, TempDir};
use netdevd_wire::l2tpv3::{Cookie, Layout};

struct Case {
    name: &'static str,
    opts: &'static str,
    layout: Layout,
    tx: (u32, u64),
    rx: (u32, u64),
}

fn udp() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let p = s.local_addr().unwrap().port();
    (s, p)
}

fn free_port() -> u16 {
    udp().1
}

fn run(c: &Case) {
    let name = c.name;
    let dir = TempDir::new(name);
    let (l2tp, l2tp_port) = udp();
    let (frames, frames_port) = udp();
    let (qemu_l2tp, qemu_sock) = (free_port(), free_port());
    let _q = start_qemu(
        &dir.path("q.sock"),
        &[
            "-netdev",
            &format!(
                "l2tpv3,id=l,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={qemu_l2tp},dstport={l2tp_port},{}",
                c.opts
            ),
            "-netdev",
            "hubport,id=h1,hubid=0,netdev=l",
            "-netdev",
            &format!("socket,id=s,udp=127.0.0.1:{frames_port},localaddr=127.0.0.1:{qemu_sock}"),
            "-netdev",
            "hubport,id=h2,hubid=0,netdev=s",
        ],
    );
    let mut buf = vec![0u8; 70000];
    // QEMU's transmit: frames of several sizes, each with the next counter value.
    for (i, len) in [60usize, 1514, 2048].into_iter().enumerate() {
        let f: Vec<u8> = (0..len).map(|j| (j * 13 + i) as u8).collect();
        frames.send_to(&f, ("127.0.0.1", qemu_sock)).unwrap();
        let (n, from) = l2tp.recv_from(&mut buf).unwrap();
        assert_eq!(from.port(), qemu_l2tp, "{name}");
        let want = c.layout.header(c.tx.0, c.tx.1, i as u32 + 1);
        assert_eq!(
            &buf[..want.len()],
            &want[..],
            "{name}: QEMU's header, frame {i}"
        );
        assert_eq!(&buf[want.len()..n], &f[..], "{name}: the frame after it");
    }
    // QEMU's receive: the test's datagrams with the header built here.
    for (i, len) in [60usize, 1514, 2048].into_iter().enumerate() {
        let f: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        let mut d = c.layout.header(c.rx.0, c.rx.1, i as u32 + 1);
        d.extend_from_slice(&f);
        l2tp.send_to(&d, ("127.0.0.1", qemu_l2tp)).unwrap();
        let (n, _) = frames.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..], "{name}: QEMU took the header, frame {i}");
    }
    // A wrong session is QEMU's drop too: nothing comes out.
    let mut d = c.layout.header(c.rx.0 ^ 1, c.rx.1, 9);
    d.extend_from_slice(&[0u8; 60]);
    l2tp.send_to(&d, ("127.0.0.1", qemu_l2tp)).unwrap();
    frames
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(frames.recv_from(&mut buf).is_err(), "{name}: wrong session");
}

#[test]
fn headers_match_qemu_7_2_byte_for_byte() {
    let plain = Layout {
        udp: true,
        cookie: Cookie::None,
        counter: false,
        pin_counter: false,
        offset: 0,
    };
    let cases = [
        Case {
            name: "l2tp-plain",
            opts: "txsession=0x11223344",
            layout: plain,
            tx: (0x1122_3344, 0),
            rx: (0x1122_3344, 0),
        },
        Case {
            name: "l2tp-c64",
            opts: "txsession=0x11223344,rxsession=0x55667788,txcookie=0x0102030405060708,rxcookie=0x1112131415161718,cookie64=on,counter=on",
            layout: Layout {
                cookie: Cookie::Bits64,
                counter: true,
                ..plain
            },
            tx: (0x1122_3344, 0x0102_0304_0506_0708),
            rx: (0x5566_7788, 0x1112_1314_1516_1718),
        },
        Case {
            name: "l2tp-c32",
            opts: "txsession=7,rxsession=8,txcookie=0xa1b2c3d4,rxcookie=0xd4c3b2a1,counter=on,pincounter=on",
            layout: Layout {
                cookie: Cookie::Bits32,
                counter: true,
                pin_counter: true,
                ..plain
            },
            tx: (7, 0xa1b2_c3d4),
            rx: (8, 0xd4c3_b2a1),
        },
    ];
    for c in &cases {
        run(c);
    }
}
