//! Helpers shared by the integration tests: start real peers (netdevd, QEMU 7.2) and talk
//! QMP to them over unix sockets. A peer that is missing fails the test; it never passes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("netdevd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace this test made (unique name), with `lo` up and multicast on;
/// deleted on drop, also when the test fails. Needs root, which CI has.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("ndt-{tag}-{}-{n}", std::process::id());
        let ok = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2) runs");
            assert!(
                st.success(),
                "ip {args:?} failed: network namespace tests need root"
            );
        };
        ok(&["netns", "add", &name]);
        let ns = Netns { name };
        ok(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ok(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "link",
            "set",
            "lo",
            "multicast",
            "on",
        ]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `ip netns exec NS sh -c CMD`: whether it succeeded, and its stdout then stderr.
pub fn sh(ns: &Netns, cmd: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", cmd])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Hand `ns` a tap (`tap0`) whose other end is netdev `g` on hub 0 of the netdevd serving
/// QMP on `sock` (netdevd-nstap: getfd, netdev_add tap,fd=, hubport).
pub fn hand_tap(ns: &Netns, sock: &Path) {
    let st = Command::new(env!("CARGO_BIN_EXE_netdevd-nstap"))
        .args(["--netns", &ns.name, "--qmp"])
        .arg(sock)
        .args(["--id", "g", "--hub", "0"])
        .status()
        .unwrap();
    assert!(st.success(), "netdevd-nstap failed");
}

/// The hex digest `tool` (`md5sum`, `sha256sum`) prints for the file at `path`.
pub fn digest(tool: &str, path: &Path) -> String {
    let out = Command::new(tool)
        .arg(path)
        .output()
        .expect("coreutils runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("{tool} printed nothing for {}", path.display()))
        .to_string()
}

/// A process we started; killed (by its own pid) on drop if still running.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn netdevd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netdevd")
}

fn wait_for_socket(path: &Path, proc_: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if UnixStream::connect(path).is_ok() {
            return;
        }
        if let Ok(Some(st)) = proc_.child.try_wait() {
            panic!("process exited before serving {}: {st}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never appeared", path.display());
}

/// Start netdevd with `args`, serving QMP on `sock`.
pub fn start_netdevd(sock: &Path, args: &[&str]) -> Proc {
    start_netdevd_in(None, sock, args)
}

/// A command, run inside network namespace `ns` when one is given.
fn command_in(ns: Option<&Netns>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Start netdevd inside `ns` (or here).
pub fn start_netdevd_in(ns: Option<&Netns>, sock: &Path, args: &[&str]) -> Proc {
    start_netdevd_env(ns, sock, args, &[])
}

/// Start netdevd inside `ns` (or here) with extra environment variables.
pub fn start_netdevd_env(
    ns: Option<&Netns>,
    sock: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = command_in(ns, netdevd_bin());
    cmd.envs(env.iter().copied());
    cmd.arg("--qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut p = Proc {
        child: cmd.spawn().expect("netdevd starts"),
    };
    wait_for_socket(sock, &mut p);
    p
}

/// Start QEMU 7.2 as a QMP peer with no guest.
pub fn start_qemu(sock: &Path, extra: &[&str]) -> Proc {
    start_qemu_in(None, sock, extra)
}

/// Start QEMU inside `ns` (or here).
pub fn start_qemu_in(ns: Option<&Netns>, sock: &Path, extra: &[&str]) -> Proc {
    let mut cmd = command_in(ns, "qemu-system-x86_64");
    cmd.args([
        "-machine",
        "none",
        "-nodefaults",
        "-display",
        "none",
        "-qmp",
    ])
    .arg(format!("unix:{},server=on,wait=off", sock.display()))
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut p = Proc {
        child: cmd.spawn().expect(
            "qemu-system-x86_64 must be installed (the test command installs qemu-system-x86)",
        ),
    };
    wait_for_socket(sock, &mut p);
    // The QMP socket exists before QEMU has made its netdevs (chardevs come first); QEMU
    // greets only from its main loop, after all of them: a peer that connects to one of
    // QEMU's listening netdevs must not start before that.
    drop(Qmp::connect(sock));
    p
}

/// A QMP client connection.
pub struct Qmp {
    pub sock: UnixStream,
    buf: Vec<u8>,
    pub greeting: Value,
}

impl Qmp {
    pub fn connect(path: &Path) -> Self {
        let sock = UnixStream::connect(path).expect("connect");
        let mut q = Qmp {
            sock,
            buf: Vec::new(),
            greeting: Value::Null,
        };
        q.greeting = q.read_line(Duration::from_secs(10)).expect("greeting");
        q
    }

    /// Connect and negotiate.
    pub fn negotiated(path: &Path) -> Self {
        let mut q = Self::connect(path);
        let r = q.cmd(&serde_json::json!({"execute": "qmp_capabilities"}));
        assert_eq!(r, serde_json::json!({"return": {}}));
        q
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        self.sock.write_all(data).expect("send");
    }

    pub fn send_with_fd(&mut self, data: &[u8], fd: std::os::fd::BorrowedFd<'_>) {
        netdevd_sys::send_with_fds(self.sock.as_fd(), data, &[fd]).expect("sendmsg");
    }

    /// One reply line (events are skipped), or None on timeout or EOF.
    pub fn read_line(&mut self, timeout: Duration) -> Option<Value> {
        self.read_message(timeout, true)
    }

    /// The next message, events included.
    pub fn read_message(&mut self, timeout: Duration, skip_events: bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let v: Value = serde_json::from_slice(&line[..pos]).expect("reply is JSON");
                if skip_events && v.get("event").is_some() {
                    continue;
                }
                return Some(v);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Raw bytes as they arrive (for checking CR LF framing).
    pub fn raw_pending(&self) -> &[u8] {
        &self.buf
    }

    /// Every reply until the connection has been quiet for `idle`.
    pub fn read_until_idle(&mut self, idle: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.read_line(idle) {
            out.push(v);
        }
        out
    }

    pub fn cmd(&mut self, v: &Value) -> Value {
        self.send_raw(serde_json::to_string(v).unwrap().as_bytes());
        self.read_line(Duration::from_secs(10)).expect("a reply")
    }
}

/// The guest built by `scripts/build-guest`.
pub fn guest_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest");
    assert!(
        d.join("vmlinuz").exists() && d.join("initramfs.cpio.gz").exists(),
        "no guest in {}: run scripts/build-guest (scripts/test does)",
        d.display()
    );
    d
}

/// A cpio archive (newc) of regular files: (path, contents, mode).
pub fn newc_archive(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let mut out = Vec::new();
    let mut entry = |ino: u32, name: &str, data: &[u8], mode: u32| {
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(data);
        pad(&mut out);
    };
    for (i, (name, data, mode)) in files.iter().enumerate() {
        entry(i as u32 + 1, name, data, 0o100000 | mode);
    }
    entry(0, "TRAILER!!!", &[], 0);
    out
}

/// A Linux guest under QEMU (TCG), its serial console read line by line.
pub struct Guest {
    pub proc_: Proc,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
    pub name: String,
}

impl Guest {
    /// Boot the guest with `-netdev NETDEV` (id `n0`) on a virtio-net NIC with `mac`,
    /// running `script` as /test.sh.
    pub fn boot(name: &str, scratch: &Path, netdev: &str, mac: &str, script: &str) -> Guest {
        let net = [
            "-netdev".to_string(),
            netdev.to_string(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}"),
        ];
        Self::boot_with(name, scratch, &net, script)
    }

    /// Boot the guest with `net_args` (its -netdev/-device options) running `script`.
    pub fn boot_with(name: &str, scratch: &Path, net_args: &[String], script: &str) -> Guest {
        Self::boot_with_qemu("qemu-system-x86_64", name, scratch, net_args, script)
    }

    /// As [`Guest::boot_with`], under the QEMU binary `qemu`.
    pub fn boot_with_qemu(
        qemu: &str,
        name: &str,
        scratch: &Path,
        net_args: &[String],
        script: &str,
    ) -> Guest {
        let g = guest_dir();
        let mut initrd = std::fs::read(g.join("initramfs.cpio.gz")).unwrap();
        // The kernel looks for an uncompressed archive only at a 4-byte boundary after the
        // compressed one and skips NULs in between; the .gz length varies from build to build.
        while !initrd.len().is_multiple_of(4) {
            initrd.push(0);
        }
        initrd.extend(newc_archive(&[("test.sh", script.as_bytes(), 0o755)]));
        let initrd_path = scratch.join(format!("{name}.initrd"));
        std::fs::write(&initrd_path, initrd).unwrap();
        let mut child = Command::new(qemu)
            .args([
                "-accel",
                "tcg",
                "-m",
                "256",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(g.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd_path)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(net_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 runs");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Guest {
            proc_: Proc { child },
            lines: rx,
            seen: Vec::new(),
            name: name.to_string(),
        }
    }

    /// Wait for a console line starting with `prefix`; returns it.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    println!("[{}] {l}", self.name);
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{}: no '{prefix}' within {timeout:?}; console:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Python's HTTP server on 127.0.0.1 serving `dir`; returns once it accepts connections.
pub fn http_server(dir: &Path) -> (Proc, u16) {
    http_server_on(dir, "127.0.0.1")
}

/// Python's HTTP server on the loopback address `bind` (`127.0.0.1` or `::1`) serving
/// `dir`, on a free port; returns once it accepts connections.
pub fn http_server_on(dir: &Path, bind: &str) -> (Proc, u16) {
    let ip: std::net::IpAddr = bind.parse().expect("a numeric loopback address");
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Proc {
        child: Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                bind,
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(Instant::now() < deadline, "the HTTP server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port)
}

pub fn ns_python(ns: &Netns, script: &str) -> Proc {
    let mut p = Proc {
        child: Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    };
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(p.child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up", "the namespace server did not start");
    p
}
