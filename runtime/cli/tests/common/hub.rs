//! A stand-in for the Hugging Face Hub on 127.0.0.1: the two endpoints `hf-hub` uses (the
//! repository's file list, and files by revision with `Range` support, `ETag`,
//! `X-Repo-Commit`), a token check, and the faults the download code must survive (a file
//! the index names but the Hub lacks, a connection cut half-way through a file, a file
//! whose bytes do not match its ETag). Plain `std::net`, one thread per connection, every
//! answer `Connection: close`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// One file of the repository.
#[derive(Clone)]
pub struct HubFile {
    pub bytes: Vec<u8>,
    /// LFS files (weights) have a SHA-256 ETag, the others a Git blob hash.
    pub lfs: bool,
}

/// What the fake Hub gets wrong on purpose.
#[derive(Clone, Default)]
pub struct Faults {
    /// Listed, but every download of it is a 404.
    pub missing: Option<String>,
    /// The first download of it stops half-way (the connection closes).
    pub cut_once: Option<String>,
    /// Its ETag is that of other bytes.
    pub wrong_etag: Option<String>,
}

pub struct FakeHub {
    pub port: u16,
    /// `METHOD PATH RANGE` of every request, in order.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn etag(f: &HubFile) -> String {
    if f.lfs {
        hex(&sha2::Sha256::digest(&f.bytes))
    } else {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", f.bytes.len()).as_bytes());
        h.update(&f.bytes);
        hex(&h.finalize())
    }
}

struct State {
    repo: String,
    files: HashMap<String, HubFile>,
    token: Option<String>,
    faults: Faults,
    cut_done: bool,
}

/// Serves `files` as repository `repo` (any revision is commit [`COMMIT`]); with `token`, only
/// to requests that send it.
pub fn serve(
    repo: &str,
    files: HashMap<String, HubFile>,
    token: Option<&str>,
    faults: Faults,
) -> FakeHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(vec![]));
    let state = Arc::new(Mutex::new(State {
        repo: repo.to_string(),
        files,
        token: token.map(str::to_string),
        faults,
        cut_done: false,
    }));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (state, log) = (state.clone(), l2.clone());
            std::thread::spawn(move || {
                let _ = handle(conn, &state, &log);
            });
        }
    });
    FakeHub { port, log }
}

fn handle(
    mut conn: TcpStream,
    state: &Mutex<State>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    log.lock().unwrap().push(format!("{method} {path} {range}"));
    let mut st = state.lock().unwrap();
    let reply = |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body)
    };
    if let Some(t) = &st.token {
        if headers.get("authorization") != Some(&format!("Bearer {t}")) {
            return reply(
                &mut conn,
                "401 Unauthorized",
                "",
                b"{\"error\": \"unauthorized\"}",
            );
        }
    }
    let info_prefix = format!("/api/models/{}/revision/", st.repo);
    if path.starts_with(&info_prefix) {
        let siblings: Vec<serde_json::Value> = st
            .files
            .keys()
            .map(|k| serde_json::json!({"rfilename": k}))
            .collect();
        let body =
            serde_json::json!({"id": st.repo, "sha": COMMIT, "siblings": siblings}).to_string();
        return reply(
            &mut conn,
            "200 OK",
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        );
    }
    let file_prefix = format!("/{}/resolve/", st.repo);
    let Some(rest) = path.strip_prefix(&file_prefix) else {
        return reply(&mut conn, "404 Not Found", "", b"not found");
    };
    let name = rest.split_once('/').map_or("", |(_, f)| f).to_string();
    let file = match st.files.get(&name) {
        Some(f) if st.faults.missing.as_deref() != Some(name.as_str()) => f.clone(),
        _ => {
            return reply(
                &mut conn,
                "404 Not Found",
                "X-Error-Code: EntryNotFound\r\n",
                b"missing",
            )
        }
    };
    let tag = if st.faults.wrong_etag.as_deref() == Some(name.as_str()) {
        etag(&HubFile {
            bytes: b"other bytes".to_vec(),
            lfs: file.lfs,
        })
    } else {
        etag(&file)
    };
    let len = file.bytes.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse().unwrap_or(0),
            b.parse::<usize>().map_or(len - 1, |e| e.min(len - 1)),
        ),
        None => (0, len - 1),
    };
    let mut extra = format!("ETag: \"{tag}\"\r\nX-Repo-Commit: {COMMIT}\r\n");
    if file.lfs {
        extra.push_str(&format!(
            "X-Linked-Etag: \"{tag}\"\r\nX-Linked-Size: {len}\r\n"
        ));
    }
    let probe = range == "bytes=0-0";
    let body = &file.bytes[start..=end];
    if !range.is_empty() {
        extra.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
    }
    let status = if range.is_empty() {
        "200 OK"
    } else {
        "206 Partial Content"
    };
    if !probe && !st.cut_done && st.faults.cut_once.as_deref() == Some(name.as_str()) {
        // Promise the whole body, send half, hang up.
        st.cut_done = true;
        drop(st);
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(&body[..body.len() / 2])?;
        conn.flush()?;
        return conn.shutdown(std::net::Shutdown::Both);
    }
    drop(st);
    reply(&mut conn, status, &extra, body)
}
