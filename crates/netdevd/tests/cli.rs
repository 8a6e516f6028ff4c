//! The command line: QEMU-style options, checked before anything starts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{netdevd_bin, start_netdevd, Qmp, TempDir};
use serde_json::json;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(netdevd_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_options_fail_with_one_line_naming_them() {
    let dir = TempDir::new("cli-bad");
    let sock = dir.path("n.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    for (args, needle) in [
        (vec!["--bogus"], "--bogus"),
        (vec!["--qmp", "unix:/x,server=off"], "--qmp"),
        (
            vec!["--qmp", &qmp, "--netdev", "hubport,id=h0"],
            "Parameter 'hubid' is missing",
        ),
        (
            vec!["--qmp", &qmp, "--netdev", "hubport,id=h0,hubid=x"],
            "'hubid'",
        ),
        (
            vec![
                "--qmp",
                &qmp,
                "--netdev",
                "hubport,id=h0,hubid=0",
                "--netdev",
                "hubport,id=h0,hubid=1",
            ],
            "Duplicate ID 'h0'",
        ),
        (
            vec!["--qmp", &qmp, "--netdev", "socket,id=s"],
            "exactly one of",
        ),
        (
            vec!["--qmp", &qmp, "--netdev", "{\"type\":\"hubport\"}"],
            "Parameter 'id' is missing",
        ),
        (
            vec!["--qmp", &qmp, "--netdev", "vmnet-host,id=v"],
            "does not accept value 'vmnet-host'",
        ),
    ] {
        let (code, _out, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(lines[0].starts_with("netdevd: "), "{err}");
        // Nothing was started: no socket left behind.
        assert!(!sock.exists(), "{args:?} left a socket");
    }
}

#[test]
fn acceptance_example_runs_and_serves() {
    let dir = TempDir::new("cli-ok");
    let sock = dir.path("n.sock");
    let _d = start_netdevd(
        &sock,
        &[
            "--netdev",
            "hubport,id=h0,hubid=0",
            "-netdev",
            r#"{"type":"hubport","id":"h1","hubid":0,"netdev":"h0"}"#,
        ],
    );
    let mut q = Qmp::negotiated(&sock);
    let r = q.cmd(
        &json!({"execute": "netdev_add", "arguments": {"type": "hubport", "id": "h0", "hubid": 3}}),
    );
    assert_eq!(
        r["error"]["desc"], "Duplicate ID 'h0'",
        "command-line netdevs exist"
    );
    assert_eq!(
        q.cmd(&json!({"execute": "set_link", "arguments": {"name": "h1", "up": false}})),
        json!({"return": {}})
    );
    assert_eq!(
        q.cmd(&json!({"execute": "netdev_del", "arguments": {"id": "h1"}})),
        json!({"return": {}})
    );
    assert_eq!(
        q.cmd(&json!({"execute": "query-rx-filter"})),
        json!({"return": []})
    );
    let r = q.cmd(&json!({"execute": "announce-self", "arguments": {"initial": 50, "max": 550, "rounds": 10, "step": 50}}));
    assert_eq!(r, json!({"return": {}}));
}

#[test]
fn tcp_qmp_pidfile_and_daemonize() {
    let dir = TempDir::new("cli-daemon");
    let pidfile = dir.path("pid");
    let sock = dir.path("n.sock");
    let out = Command::new(netdevd_bin())
        .args(["-daemonize", "-pidfile"])
        .arg(&pidfile)
        .arg("-qmp")
        .arg(format!("unix:{}", sock.display()))
        .args(["-qmp", "tcp:127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tcp = stdout
        .lines()
        .find_map(|l| l.strip_prefix("netdevd: QMP on tcp:"))
        .expect("bound tcp address printed")
        .to_string();
    let mut pid = None;
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(&pidfile) {
            pid = s.trim().parse::<i32>().ok();
            if pid.is_some() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = pid.expect("pidfile written");
    // QMP over TCP.
    let mut s = std::net::TcpStream::connect(&tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::{BufRead, BufReader, Write};
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("{\"QMP\": "), "{line}");
    assert!(line.ends_with("\r\n"));
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"quit\"}")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "{\"return\": {}}\r\n");
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "{\"return\": {}}\r\n");
    // The daemon exits on quit and removes its pidfile and socket.
    for _ in 0..250 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() || !pidfile.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!pidfile.exists(), "pidfile removed");
    assert!(!sock.exists(), "socket removed");
}

#[test]
fn help_and_netdev_help() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--netdev"));
    let (code, out, _) = run(&["-netdev", "help"]);
    assert_eq!(code, 0);
    assert!(out.contains("hubport"));
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = TempDir::new("cli-term");
    let sock = dir.path("n.sock");
    let mut d = start_netdevd(&sock, &[]);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let st = d.child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!sock.exists());
}
