//! The latency and connection-rate load of `bench/user-ns`, compiled so that the client's
//! own cost is small next to what it measures.
//!
//!     tcp_rr server [ADDR]          echo server on ADDR (default 127.0.0.1; `::1` for IPv6;
//!                                   port printed on stdout): one thread and epoll, so that a
//!                                   connection costs the server little next to what the NAT
//!                                   under test costs
//!     tcp_rr client HOST PORT RR N  (HOST numeric, either family)
//!                                   RR one-byte round trips on one connection, then N
//!                                   connections one after another (connect, 8 bytes echoed,
//!                                   close; stops after 30 s); prints the median round trip in
//!                                   microseconds and the connections per second
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};

/// Echo every connection on one thread. Sockets stay blocking: a read happens only after
/// epoll reported the socket readable, and the echoes are small.
fn serve(l: TcpListener) -> std::io::Result<()> {
    let ep = epoll::create(CreateFlags::CLOEXEC)?;
    epoll::add(&ep, &l, EventData::new_u64(u64::MAX), EventFlags::IN)?;
    let mut conns: HashMap<u64, TcpStream> = HashMap::new();
    let mut next = 0u64;
    let mut events = Vec::with_capacity(256);
    let mut buf = vec![0u8; 65536];
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in &events {
            let key = ev.data.u64();
            if key == u64::MAX {
                let (c, _) = l.accept()?;
                c.set_nodelay(true)?;
                epoll::add(&ep, &c, EventData::new_u64(next), EventFlags::IN)?;
                conns.insert(next, c);
                next += 1;
                continue;
            }
            let Some(c) = conns.get_mut(&key) else {
                continue;
            };
            let done = match c.read(&mut buf) {
                Ok(0) | Err(_) => true,
                Ok(n) => c.write_all(&buf[..n]).is_err(),
            };
            if done {
                // Closing the socket takes it out of the epoll set.
                conns.remove(&key);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => {
            let ip: IpAddr = args
                .get(1)
                .map_or("127.0.0.1", String::as_str)
                .parse()
                .expect("a numeric address");
            let l = TcpListener::bind((ip, 0)).expect("bind");
            println!("{}", l.local_addr().unwrap().port());
            if let Err(e) = serve(l) {
                eprintln!("tcp_rr server: {e}");
                std::process::exit(1);
            }
        }
        Some("client") if args.len() == 5 => {
            let ip: IpAddr = args[1].parse().expect("a numeric address");
            let port: u16 = args[2].parse().expect("a port");
            let addr = std::net::SocketAddr::new(ip, port);
            let rr: usize = args[3].parse().expect("RR count");
            let conns: usize = args[4].parse().expect("connection count");
            let timeout = Some(Duration::from_secs(10));
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(timeout).unwrap();
            let mut lat = Vec::with_capacity(rr);
            let mut b = [0u8; 8];
            for _ in 0..rr {
                let t = Instant::now();
                s.write_all(b"x").unwrap();
                s.read_exact(&mut b[..1]).unwrap();
                lat.push(t.elapsed());
            }
            drop(s);
            lat.sort();
            let median = lat.get(lat.len() / 2).copied().unwrap_or_default();
            let t = Instant::now();
            let mut done = 0usize;
            for _ in 0..conns {
                let mut c = TcpStream::connect(addr).expect("connect");
                c.set_read_timeout(timeout).unwrap();
                c.write_all(b"12345678").unwrap();
                if c.read_exact(&mut b).is_ok() && &b == b"12345678" {
                    done += 1;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            let cps = done as f64 / t.elapsed().as_secs_f64();
            println!("{:.2} {:.1}", median.as_secs_f64() * 1e6, cps);
        }
        _ => {
            eprintln!("usage: tcp_rr server [ADDR] | tcp_rr client HOST PORT RR N");
            std::process::exit(2);
        }
    }
}
