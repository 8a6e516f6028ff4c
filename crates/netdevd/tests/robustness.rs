//! Bad input never takes the daemon down: garbage, truncated and deeply nested JSON, many
//! connections at once, clients that vanish mid-message. After each, the daemon still
//! answers a fresh client.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{start_netdevd, Qmp, TempDir};
use serde_json::json;

fn still_serves(sock: &std::path::Path) {
    let mut q = Qmp::negotiated(sock);
    let r = q.cmd(&json!({"execute": "query-rx-filter", "id": "alive"}));
    assert_eq!(r, json!({"return": [], "id": "alive"}));
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn one_mebibyte_of_garbage() {
    let dir = TempDir::new("garbage");
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    let mut q = Qmp::negotiated(&sock);
    let data = garbage(1 << 20, 0x9e37_79b9_7f4a_7c15);
    // Write from another thread: the daemon answers while we write, and both sides must
    // keep moving.
    let mut w = q.sock.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
        // Resynchronise (a control character) and ask something.
        let _ = w.write_all(b"\x00\n{\"execute\":\"query-rx-filter\",\"id\":\"after\"}");
    });
    let mut errors = 0;
    loop {
        let v = q
            .read_line(Duration::from_secs(30))
            .expect("the daemon keeps answering");
        if v.get("id") == Some(&json!("after")) {
            assert_eq!(v["return"], json!([]));
            break;
        }
        assert_eq!(v["error"]["class"], "GenericError", "{v}");
        errors += 1;
    }
    writer.join().unwrap();
    assert!(errors > 0);
    still_serves(&sock);
}

#[test]
fn truncated_and_nested_json() {
    let dir = TempDir::new("nested");
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    let mut q = Qmp::negotiated(&sock);
    // 100 000 levels: answered with the nesting error, not a stack overflow.
    let deep = "[".repeat(100_000);
    q.send_raw(deep.as_bytes());
    let v = q.read_line(Duration::from_secs(10)).unwrap();
    assert_eq!(v["error"]["desc"], "JSON nesting depth limit exceeded");
    // Exactly at QEMU's limit: accepted as a value (and refused as a request).
    let mut q = Qmp::negotiated(&sock);
    let ok = format!("{}{}", "[".repeat(1024), "]".repeat(1024));
    q.send_raw(ok.as_bytes());
    assert_eq!(
        q.read_line(Duration::from_secs(10)).unwrap()["error"]["desc"],
        "QMP input must be a JSON object"
    );
    // A truncated request, then the client goes away mid-message.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"netdev_add\",\"arguments\":{\"type\":\"hub").unwrap();
    drop(s);
    // A string token larger than the per-message limit.
    let mut q = Qmp::negotiated(&sock);
    let mut big = b"\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 << 20));
    big.extend_from_slice(b"\" {\"execute\":\"query-rx-filter\",\"id\":1}");
    let mut w = q.sock.try_clone().unwrap();
    let t = std::thread::spawn(move || w.write_all(&big).unwrap());
    let v = q.read_line(Duration::from_secs(20)).unwrap();
    assert_eq!(v["error"]["desc"], "JSON token size limit exceeded");
    t.join().unwrap();
    still_serves(&sock);
}

#[test]
fn two_hundred_simultaneous_connections() {
    let dir = TempDir::new("conns");
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    let mut clients: Vec<Qmp> = (0..200).map(|_| Qmp::connect(&sock)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_raw(b"{\"execute\":\"qmp_capabilities\"}");
        let id = format!("h{i}");
        c.send_raw(json!({"execute": "netdev_add", "arguments": {"type": "hubport", "id": id, "hubid": i % 7}, "id": i}).to_string().as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.read_line(Duration::from_secs(20)).unwrap(),
            json!({"return": {}})
        );
        assert_eq!(
            c.read_line(Duration::from_secs(20)).unwrap(),
            json!({"return": {}, "id": i})
        );
    }
    // Every client sees the others' netdevs: one registry.
    let r = clients[0].cmd(&json!({"execute": "netdev_add", "arguments": {"type": "hubport", "id": "h199", "hubid": 0}}));
    assert_eq!(r["error"]["desc"], "Duplicate ID 'h199'");
    // Half of them vanish without a word, some mid-message.
    for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        if i % 4 == 0 {
            c.send_raw(b"{\"execute\":");
        }
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
    }
    still_serves(&sock);
}

#[test]
fn fds_sent_with_garbage_are_not_leaked() {
    let dir = TempDir::new("fdleak");
    let sock = dir.path("n.sock");
    let d = start_netdevd(&sock, &[]);
    let count = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .unwrap()
            .count()
    };
    let mut q = Qmp::negotiated(&sock);
    still_serves(&sock);
    let before = count();
    for i in 0..50 {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        // Alternate: fds with garbage, with a getfd that is then closed.
        if i % 2 == 0 {
            q.send_with_fd(b"{garbage}", std::os::fd::AsFd::as_fd(&r));
            q.read_line(Duration::from_secs(5)).unwrap();
        } else {
            q.send_with_fd(
                br#"{"execute":"getfd","arguments":{"fdname":"f"}}"#,
                std::os::fd::AsFd::as_fd(&r),
            );
            assert_eq!(
                q.read_line(Duration::from_secs(5)).unwrap(),
                json!({"return": {}})
            );
        }
    }
    assert_eq!(
        q.cmd(&json!({"execute": "closefd", "arguments": {"fdname": "f"}})),
        json!({"return": {}})
    );
    drop(q);
    still_serves(&sock);
    // Pending fds of a closed connection are closed with it.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        count() <= before + 1,
        "fds before {before}, after {}",
        count()
    );
}

/// A sender faster than the receiver: backpressure through a hub, nothing lost, no stall.
/// 40 000 numbered 1514-byte frames (60 MB) from one socket client to another.
#[test]
fn sustained_transfer_through_a_hub_is_lossless() {
    use std::io::Read;
    let dir = TempDir::new("sustained");
    let pa = common::free_tcp_port();
    let pb = common::free_tcp_port();
    let _d = start_netdevd(
        &dir.path("n.sock"),
        &[
            "--netdev",
            &format!("socket,id=a,listen=127.0.0.1:{pa}"),
            "--netdev",
            "hubport,id=ha,hubid=0,netdev=a",
            "--netdev",
            &format!("socket,id=b,listen=127.0.0.1:{pb}"),
            "--netdev",
            "hubport,id=hb,hubid=0,netdev=b",
        ],
    );
    let mut a = std::net::TcpStream::connect(("127.0.0.1", pa)).unwrap();
    let mut b = std::net::TcpStream::connect(("127.0.0.1", pb)).unwrap();
    // Both links are up once the daemon accepted: probe until a frame crosses.
    let probe = |a: &mut std::net::TcpStream, b: &mut std::net::TcpStream| {
        b.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        for _ in 0..100 {
            let mut f = 60u32.to_be_bytes().to_vec();
            f.extend_from_slice(&[0xee; 60]);
            a.write_all(&f).unwrap();
            let mut got = [0u8; 64];
            if b.read_exact(&mut got).is_ok() {
                return;
            }
        }
        panic!("links never came up");
    };
    probe(&mut a, &mut b);
    const N: u32 = 40_000;
    const SIZE: usize = 1514;
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..N {
            batch.extend_from_slice(&(SIZE as u32).to_be_bytes());
            let mut f = vec![0xffu8; 12];
            f.extend_from_slice(&[0x88, 0xb5]);
            f.extend_from_slice(&i.to_be_bytes());
            f.resize(SIZE, (i % 251) as u8);
            batch.extend_from_slice(&f);
            if batch.len() > 1 << 20 {
                a.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        a.write_all(&batch).unwrap();
        a
    });
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 4 + SIZE];
    for i in 0..N {
        b.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("stalled after {i} frames: {e}"));
        assert_eq!(
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
            SIZE
        );
        assert_eq!(
            u32::from_be_bytes([buf[18], buf[19], buf[20], buf[21]]),
            i,
            "frames lost or reordered"
        );
        assert!(buf[22..].iter().all(|&x| x == (i % 251) as u8));
    }
    drop(writer.join().unwrap());
}

/// Stream peers that send a zero length, a length above 64 KiB + header, or vanish
/// mid-frame are dropped and logged; the listener goes on and serves the next peer.
#[test]
fn bad_stream_peers_are_dropped_and_the_next_is_served() {
    use std::io::Read;
    let dir = TempDir::new("badpeer");
    let pa = common::free_tcp_port();
    let pb = common::free_tcp_port();
    let sock = dir.path("n.sock");
    let _d = start_netdevd(
        &sock,
        &[
            "--netdev",
            &format!("socket,id=a,listen=127.0.0.1:{pa}"),
            "--netdev",
            "hubport,id=ha,hubid=0,netdev=a",
            "--netdev",
            &format!("socket,id=b,listen=127.0.0.1:{pb}"),
            "--netdev",
            "hubport,id=hb,hubid=0,netdev=b",
        ],
    );
    let mut b = std::net::TcpStream::connect(("127.0.0.1", pb)).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let bad: [&[u8]; 3] = [
        &[0, 0, 0, 0, 1, 2],
        &[0, 1, 0x10, 1, 9, 9, 9],
        &[0, 0, 5, 0xdc, 1, 2, 3],
    ];
    for junk in bad {
        let mut a = std::net::TcpStream::connect(("127.0.0.1", pa)).unwrap();
        a.write_all(junk).unwrap();
        drop(a);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing of the junk reached the other side.
    let mut buf = [0u8; 16];
    assert!(b.read(&mut buf).is_err(), "junk crossed the hub");
    // The next peer is served.
    let mut a = std::net::TcpStream::connect(("127.0.0.1", pa)).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut f = 60u32.to_be_bytes().to_vec();
    f.extend_from_slice(&[0x42; 60]);
    let mut got = [0u8; 64];
    let mut ok = false;
    for _ in 0..50 {
        a.write_all(&f).unwrap();
        if b.read_exact(&mut got).is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok && got[..] == f[..]);
    still_serves(&sock);
}
