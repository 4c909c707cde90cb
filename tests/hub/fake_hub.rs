//! A stand-in for the Hugging Face hub on 127.0.0.1, enough for hf-hub's sync client: the model info API, file
//! downloads with ETag, X-Repo-Commit and Range, a token check, and injected faults (a connection cut halfway
//! through a file). Used by tests/hub.rs; CI has no network.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

use super::{BRANCH, REPO, SHA};

/// How the stand-in hub misbehaves.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    None,
    /// Send half of `file`'s body, then close the connection; with the full Content-Length announced (a dropped
    /// connection) or with none (a close-delimited body that merely looks complete).
    CutOff {
        file: String,
        content_length: bool,
    },
}

pub struct State {
    pub files: BTreeMap<String, Vec<u8>>,
    /// Listed by the info API but answered with 404 on download.
    pub ghosts: Vec<String>,
    pub branches: Vec<String>,
    pub token: Option<String>,
    pub fault: Fault,
    /// "METHOD target range" of every request.
    pub log: Vec<String>,
}

pub struct FakeHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    pub fn start(files: BTreeMap<String, Vec<u8>>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            files,
            ghosts: Vec::new(),
            branches: vec!["main".into(), BRANCH.into()],
            token: None,
            fault: Fault::None,
            log: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &state);
                    });
                }
            })
        };
        FakeHub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("hub state"))
    }

    pub fn log(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    content_length: bool,
    /// Bytes of the body actually sent before closing.
    cut_to: Option<usize>,
}

impl Reply {
    fn new(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
            content_length: true,
            cut_to: None,
        }
    }
    fn json(status: u16, v: serde_json::Value) -> Reply {
        let mut r = Reply::new(status, v.to_string().into_bytes());
        r.headers.push(("Content-Type", "application/json".into()));
        r
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let reply = route(
        method,
        target,
        &headers,
        &mut state.lock().expect("hub state"),
    );
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    for (k, v) in &reply.headers {
        head += &format!("{k}: {v}\r\n");
    }
    if reply.content_length {
        head += &format!("Content-Length: {}\r\n", reply.body.len());
    }
    head += "\r\n";
    out.write_all(head.as_bytes())?;
    out.write_all(&reply.body[..reply.cut_to.unwrap_or(reply.body.len())])?;
    out.flush()?;
    out.shutdown(Shutdown::Both)
}

fn route(method: &str, target: &str, headers: &BTreeMap<String, String>, st: &mut State) -> Reply {
    let range = headers.get("range").cloned().unwrap_or_default();
    st.log.push(format!("{method} {target} {range}"));
    if let Some(token) = &st.token {
        if headers.get("authorization") != Some(&format!("Bearer {token}")) {
            return Reply::json(401, json!({"error": "Invalid credentials"}));
        }
    }
    let knows = |st: &State, rev: &str| rev == SHA || st.branches.iter().any(|b| b == rev);
    let path = target.split('?').next().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, rev)) = rest.split_once("/revision/") else {
            return Reply::json(404, json!({"error": "not found"}));
        };
        if repo != REPO {
            return Reply::json(404, json!({"error": "Repository not found"}));
        }
        if !knows(st, &rev.replace("%2F", "/")) {
            return Reply::json(404, json!({"error": "Revision Not Found"}));
        }
        let siblings: Vec<_> = st
            .files
            .keys()
            .chain(&st.ghosts)
            .map(|f| json!({ "rfilename": f }))
            .collect();
        return Reply::json(200, json!({"id": REPO, "sha": SHA, "siblings": siblings}));
    }
    let Some(rest) = path.strip_prefix(&format!("/{REPO}/resolve/")) else {
        return Reply::json(404, json!({"error": "not found"}));
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return Reply::json(404, json!({"error": "not found"}));
    };
    let Some(data) = st.files.get(file).filter(|_| knows(st, rev)) else {
        let mut r = Reply::json(404, json!({"error": "Entry not found"}));
        r.headers.push(("X-Error-Code", "EntryNotFound".into()));
        return r;
    };
    let total = data.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse::<usize>().unwrap_or(0),
            b.parse::<usize>().map_or(total - 1, |b| b.min(total - 1)),
        ),
        None => (0, total - 1),
    };
    if start > end {
        return Reply::new(416, Vec::new());
    }
    let mut reply = Reply::new(
        if range.is_empty() { 200 } else { 206 },
        data[start..=end].to_vec(),
    );
    reply.headers.extend([
        ("ETag", format!("\"{}\"", etag(data))),
        ("X-Repo-Commit", SHA.to_owned()),
        ("Accept-Ranges", "bytes".to_owned()),
    ]);
    if !range.is_empty() {
        reply
            .headers
            .push(("Content-Range", format!("bytes {start}-{end}/{total}")));
    }
    if let Fault::CutOff {
        file: bad,
        content_length,
    } = &st.fault
    {
        if bad == file && reply.body.len() > 1 {
            reply.cut_to = Some(reply.body.len() / 2);
            reply.content_length = *content_length;
        }
    }
    reply
}

/// A content hash as the hub's ETag (FNV-1a; the hub uses the git or LFS sha).
fn etag(data: &[u8]) -> String {
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}{:08x}", data.len())
}
