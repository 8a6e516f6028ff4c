//! Throughput through a hub between two socket clients: netdevd against QEMU 7.2 doing the
//! same job (`-machine none`, two `socket,listen=` netdevs on hub 0), in the same run.
//!
//! The bench connects to both listeners, sends length-prefixed frames on one connection as
//! fast as the daemon takes them for a fixed time, and counts what arrives on the other.
//! Runs alternate between the daemons; the best of `--rounds` is reported, with the ratio.
//!
//! usage: socket_hub_bench NETDEVD_BIN [--seconds S] [--rounds N] [--sizes 64,1514,65000]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Daemon {
    name: &'static str,
    child: Child,
    ports: (u16, u16),
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn netdevs(p: (u16, u16), dash: &str) -> Vec<String> {
    [
        format!("socket,id=a,listen=127.0.0.1:{}", p.0),
        "hubport,id=ha,hubid=0,netdev=a".into(),
        format!("socket,id=b,listen=127.0.0.1:{}", p.1),
        "hubport,id=hb,hubid=0,netdev=b".into(),
    ]
    .into_iter()
    .flat_map(|n| [dash.to_string(), n])
    .collect()
}

fn start(name: &'static str, bin: &str) -> Daemon {
    let ports = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("netdevd-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = if name == "qemu" {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "none", "-nodefaults", "-display", "none"]);
        c.args(netdevs(ports, "-netdev"));
        c
    } else {
        let mut c = Command::new(bin);
        c.arg("--qmp").arg(format!("unix:{}/q.sock", dir.display()));
        c.args(netdevs(ports, "--netdev"));
        c.env("NETDEVD_LOG", "warn");
        c
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    let d = Daemon { name, child, ports };
    // Wait for both listeners.
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in [ports.0, ports.1] {
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", p))
                .map(|_| ())
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "{name} did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Those probe connections were accepted and closed; give the listeners a moment to
    // accept again.
    std::thread::sleep(Duration::from_millis(300));
    d
}

/// One timed run: (frames/s, Gbit/s of frame bytes) received.
fn run(d: &Daemon, size: usize, secs: f64) -> (f64, f64) {
    let mut tx = TcpStream::connect(("127.0.0.1", d.ports.0)).unwrap();
    let mut rx = TcpStream::connect(("127.0.0.1", d.ports.1)).unwrap();
    tx.set_nodelay(true).unwrap();
    // Let the daemon accept both (link up) before timing.
    std::thread::sleep(Duration::from_millis(300));
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5]);
    frame.resize(size, 0xab);
    let mut batch = Vec::new();
    while batch.len() < 256 * 1024 {
        batch.extend_from_slice(&(size as u32).to_be_bytes());
        batch.extend_from_slice(&frame);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let sender = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            if tx.write_all(&batch).is_err() {
                break;
            }
        }
    });
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: usize = 0; // bytes still to skip of the current frame
    let mut hdr = Vec::with_capacity(4);
    let (mut frames, mut bytes) = (0u64, 0u64);
    let warm = Instant::now() + Duration::from_millis(500);
    let mut start: Option<(Instant, u64, u64)> = None;
    let end = warm + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let n = match rx.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => continue,
        };
        let mut i = 0;
        while i < n {
            if pending > 0 {
                let take = pending.min(n - i);
                pending -= take;
                i += take;
                if pending == 0 {
                    frames += 1;
                }
                continue;
            }
            hdr.push(buf[i]);
            i += 1;
            if hdr.len() == 4 {
                let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
                bytes += len as u64;
                pending = len;
                hdr.clear();
            }
        }
        if start.is_none() && Instant::now() >= warm {
            start = Some((Instant::now(), frames, bytes));
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = sender.join();
    let (t0, f0, b0) = start.unwrap_or((warm, 0, 0));
    let dt = t0.elapsed().as_secs_f64().max(1e-9);
    let fps = (frames - f0) as f64 / dt;
    let gbps = (bytes - b0) as f64 * 8.0 / dt / 1e9;
    // Reconnecting needs the old connections gone from the daemon.
    std::thread::sleep(Duration::from_millis(300));
    (fps, gbps)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/netdevd".into());
    let mut secs = 3.0;
    let mut rounds = 3;
    let mut sizes = vec![64usize, 1514, 65000];
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "--seconds" => secs = args[i + 1].parse().unwrap(),
            "--rounds" => rounds = args[i + 1].parse().unwrap(),
            "--sizes" => sizes = args[i + 1].split(',').map(|s| s.parse().unwrap()).collect(),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    println!("socket hub throughput, {secs} s per run, best of {rounds}; netdevd vs QEMU 7.2 in the same run");
    println!(
        "{:>7} | {:>14} {:>9} | {:>14} {:>9} | {:>7}",
        "size", "netdevd fr/s", "Gbit/s", "qemu fr/s", "Gbit/s", "ratio"
    );
    for &size in &sizes {
        let mut best = [(0.0f64, 0.0f64); 2];
        for _ in 0..rounds {
            for (k, name) in ["netdevd", "qemu"].into_iter().enumerate() {
                let d = start(name, &bin);
                let r = run(&d, size, secs);
                if r.0 > best[k].0 {
                    best[k] = r;
                }
                let _ = d.name;
            }
        }
        let ratio = if best[1].0 > 0.0 {
            best[0].0 / best[1].0
        } else {
            f64::INFINITY
        };
        println!(
            "{size:>7} | {:>14.0} {:>9.3} | {:>14.0} {:>9.3} | {:>6.2}x",
            best[0].0, best[0].1, best[1].0, best[1].1, ratio
        );
    }
}
