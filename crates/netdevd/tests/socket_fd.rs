//! The socket netdev's `fd=` mode: an fd inherited at start-up (as libvirt hands QEMU
//! fds) and an fd passed over QMP with `getfd` (SCM_RIGHTS), stream and datagram sockets.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use common::{netdevd_bin, start_netdevd, Proc, Qmp, TempDir};
use serde_json::json;

/// The test's own end on the hub: a unix datagram socket the daemon's `dgram` netdev talks to.
fn dgram_end(dir: &TempDir) -> (UnixDatagram, Vec<String>) {
    let t = dir.path("t.sock");
    let u = dir.path("u.sock");
    let sock = UnixDatagram::bind(&t).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let args = vec![
        "--netdev".into(),
        format!(
            "dgram,id=u,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            u.display(),
            t.display()
        ),
        "--netdev".into(),
        "hubport,id=hu,hubid=0,netdev=u".into(),
    ];
    (sock, args)
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 12];
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(len, tag);
    f
}

fn framed(f: &[u8]) -> Vec<u8> {
    let mut v = (f.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(f);
    v
}

#[test]
fn inherited_stream_fd() {
    let dir = TempDir::new("fd-inherit");
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    let (end, end_args) = dgram_end(&dir);
    let sock = dir.path("n.sock");
    let mut cmd = std::process::Command::new(netdevd_bin());
    cmd.arg("--qmp").arg(format!("unix:{}", sock.display()));
    cmd.args([
        "--netdev",
        "socket,id=f,fd=3",
        "--netdev",
        "hubport,id=hf,hubid=0,netdev=f",
    ]);
    cmd.args(&end_args);
    netdevd_sys::pass_fd(&mut cmd, OwnedFd::from(theirs), 3);
    let _p = Proc {
        child: cmd.spawn().unwrap(),
    };
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = frame(1, 1000);
    mine.write_all(&framed(&f)).unwrap();
    let mut buf = vec![0u8; 70000];
    let n = end.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    let g = frame(2, 60);
    end.send_to(&g, dir.path("u.sock")).unwrap();
    let mut got = vec![0u8; 64];
    mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    mine.read_exact(&mut got).unwrap();
    assert_eq!(got, framed(&g));
}

#[test]
fn getfd_datagram_fd_is_consumed() {
    let dir = TempDir::new("fd-getfd");
    let (mine, theirs) = UnixDatagram::pair().unwrap();
    mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (end, end_args) = dgram_end(&dir);
    let sock = dir.path("n.sock");
    let _d = start_netdevd(
        &sock,
        &end_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut q = Qmp::negotiated(&sock);
    q.send_with_fd(
        br#"{"execute":"getfd","arguments":{"fdname":"vmfd"}}"#,
        theirs.as_fd(),
    );
    assert_eq!(
        q.read_line(Duration::from_secs(5)).unwrap(),
        json!({"return": {}})
    );
    drop(theirs);
    let add =
        json!({"execute": "netdev_add", "arguments": {"type": "socket", "id": "f", "fd": "vmfd"}});
    assert_eq!(q.cmd(&add), json!({"return": {}}));
    assert_eq!(q.cmd(&json!({"execute": "netdev_add", "arguments": {"type": "hubport", "id": "hf", "hubid": 0, "netdev": "f"}})), json!({"return": {}}));
    // The name was used up.
    let again =
        json!({"execute": "netdev_add", "arguments": {"type": "socket", "id": "f2", "fd": "vmfd"}});
    assert_eq!(
        q.cmd(&again)["error"]["desc"],
        "File descriptor named 'vmfd' has not been found"
    );
    let f = frame(3, 1514);
    mine.send(&f).unwrap();
    let mut buf = vec![0u8; 70000];
    let n = end.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    let g = frame(4, 200);
    end.send_to(&g, dir.path("u.sock")).unwrap();
    let n = mine.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &g[..]);
    // Deleting the netdev closes its fd: our end sees the peer gone.
    assert_eq!(
        q.cmd(&json!({"execute": "netdev_del", "arguments": {"id": "f"}})),
        json!({"return": {}})
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(mine.send(&f).is_err(), "the daemon's end is closed");
}

#[test]
fn fd_of_the_wrong_kind_is_refused() {
    let dir = TempDir::new("fd-kind");
    let sock = dir.path("n.sock");
    let _d = start_netdevd(&sock, &[]);
    let mut q = Qmp::negotiated(&sock);
    let (r, _w) = rustix::pipe::pipe().unwrap();
    q.send_with_fd(
        br#"{"execute":"getfd","arguments":{"fdname":"p"}}"#,
        r.as_fd(),
    );
    assert_eq!(
        q.read_line(Duration::from_secs(5)).unwrap(),
        json!({"return": {}})
    );
    let r = q.cmd(
        &json!({"execute": "netdev_add", "arguments": {"type": "socket", "id": "f", "fd": "p"}}),
    );
    assert_eq!(r["error"]["class"], "GenericError");
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("can't use fd=p"),
        "{r}"
    );
    // Nothing half-made.
    assert_eq!(
        q.cmd(&json!({"execute": "netdev_del", "arguments": {"id": "f"}}))["error"]["class"],
        "DeviceNotFound"
    );
}
