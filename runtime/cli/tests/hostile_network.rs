//! Clients that hold connections without using them: thousands of idle connections and
//! slowloris clients (a byte of a request head now and then) must not keep the server from
//! answering ordinary requests, must be dropped once the header timeout passes, and must not
//! grow memory without bound; one connection over the cap is refused with a 503.
//!
//! Its own test binary: it measures the process's resident memory.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::{post_completion, start_with_options, tiny_engine};
use serde_json::json;
use server::{ConnLimits, ServeOptions};

const IDLE: usize = 2000;
const SLOWLORIS: usize = 50;
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// Resident memory of this process (server and clients), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn completion() -> serde_json::Value {
    json!({"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0,
           "ignore_eos": true})
}

/// Whether the server has closed `s` (a read sees the end of the stream or an error).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true, // an answer (408 or an error) followed by the close
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_and_slowloris_clients_do_not_starve_ordinary_ones() {
    let opts = ServeOptions {
        grace: Duration::from_secs(2),
        limits: ConnLimits {
            max_connections: IDLE + SLOWLORIS + 64,
            header_timeout: HEADER_TIMEOUT,
            ..ConnLimits::default()
        },
    };
    let (port, _engine, _server) =
        start_with_options(tiny_engine(256, 3), None, "tiny", None, opts);
    let timed = |what: &str| {
        let t = Instant::now();
        let r = post_completion(port, &completion());
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        t.elapsed()
    };
    let before: Vec<Duration> = (0..5).map(|_| timed("before")).collect();
    let rss_before = rss_mib();

    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Connections that sent one whole request and then hold the connection open.
    let mut kept: Vec<TcpStream> = (0..20)
        .map(|_| {
            let body = completion().to_string();
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let head = format!(
                "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            s
        })
        .collect();
    let mut slow: Vec<TcpStream> = (0..SLOWLORIS)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let opened = Instant::now();
    // While they hold their connections (the slowloris ones dripping a byte every 200 ms),
    // ordinary requests are answered.
    let mut during = Vec::new();
    while opened.elapsed() < HEADER_TIMEOUT - Duration::from_millis(500) {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        during.push(timed("during"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_during = rss_mib();
    // Past the header timeout the server has dropped every one of them.
    std::thread::sleep(
        HEADER_TIMEOUT + Duration::from_secs(1) - opened.elapsed().min(HEADER_TIMEOUT),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open_slow = SLOWLORIS;
    while open_slow > 0 && Instant::now() < deadline {
        open_slow = slow.iter_mut().map(closed_by_server).filter(|c| !c).count();
    }
    assert_eq!(
        open_slow, 0,
        "slowloris connections still open after the header timeout"
    );
    let open_idle = idle.iter_mut().map(closed_by_server).filter(|c| !c).count();
    assert_eq!(
        open_idle, 0,
        "idle connections still open after the header timeout"
    );
    // A kept-alive connection drains its reply first; then it is closed too.
    let open_kept = kept
        .iter_mut()
        .map(|s| {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).is_err()
        })
        .filter(|&still_open| still_open)
        .count();
    assert_eq!(
        open_kept, 0,
        "kept-alive connections still open after the header timeout"
    );
    let after: Vec<Duration> = (0..5).map(|_| timed("after")).collect();
    let max_ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).fold(0.0, f64::max);
    eprintln!(
        "{IDLE} idle + {SLOWLORIS} slowloris connections: ordinary requests max {:.1} ms before, \
         {:.1} ms during ({} requests), {:.1} ms after; RSS {rss_before:.0} MiB before, \
         {rss_during:.0} MiB while held",
        max_ms(&before),
        max_ms(&during),
        during.len(),
        max_ms(&after)
    );
    assert!(!during.is_empty());
    // Each held connection costs a task and a small read buffer, not a request's memory.
    assert!(
        rss_during - rss_before < 256.0,
        "RSS grew {:.0} MiB for {} held connections",
        rss_during - rss_before,
        IDLE + SLOWLORIS
    );
}

#[test]
fn a_connection_over_the_cap_is_refused_with_503() {
    let cap = 8;
    let opts = ServeOptions {
        grace: Duration::from_secs(2),
        limits: ConnLimits {
            max_connections: cap,
            ..ConnLimits::default()
        },
    };
    let (port, _engine, _server) = start_with_options(tiny_engine(64, 3), None, "tiny", None, opts);
    let held: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The accept loop takes them in order: give it a moment to have taken all eight.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reply = String::new();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 1"),
        "{reply}"
    );
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_connections");
    // Once the held ones go, requests are served again.
    drop(held);
    let t = Instant::now();
    loop {
        let r = post_completion(port, &completion());
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", r.body);
        std::thread::sleep(Duration::from_millis(50));
    }
}
