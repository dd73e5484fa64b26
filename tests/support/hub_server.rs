//! A tiny stand-in for the Hugging Face hub, for download tests: HTTP/1.1 on 127.0.0.1 with
//! std::net only, one thread per connection, one request per connection. It stops when dropped.
//!
//! It answers the two requests hf-hub makes:
//! - `GET /api/models/{org}/{name}/revision/{rev}` → `{"sha", "siblings": [{"rfilename", "size"}]}`
//! - `GET /{org}/{name}/resolve/{rev}/{file}` → the file, honouring `Range`, with the `etag`,
//!   `x-repo-commit` and `Content-Range` headers hf-hub needs.
//!
//! Knobs: gated repos (401), cutting one download off after N bytes, and a log of what was served.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The file name for `resolve` requests, `None` for listings and unknown paths.
    pub file: Option<String>,
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes sent (fewer than the file when the download was cut off).
    pub bytes: u64,
}

impl Served {
    /// hf-hub asks `bytes=0-0` first, for the headers; everything else is a real download.
    pub fn is_probe(&self) -> bool {
        self.range.as_deref() == Some("bytes=0-0")
    }
}

struct RepoData {
    sha: String,
    files: Vec<(String, Vec<u8>)>,
    gated: bool,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, RepoData>,
    /// Cut the next download of this file after this many body bytes.
    cut: Option<(String, u64)>,
    log: Vec<Served>,
}

pub struct HubServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl HubServer {
    pub fn start() -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test hub");
        let addr = listener.local_addr().expect("test hub address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, state, stop))
        };
        HubServer {
            addr,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The endpoint to give the client, e.g. `http://127.0.0.1:4711`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve every file under `folder` (recursively) as repo `repo_id`; returns its commit sha.
    pub fn add_repo(&self, repo_id: &str, folder: &Path) -> String {
        let mut files = Vec::new();
        read_tree(folder, folder, &mut files);
        files.sort();
        let mut digest = String::new();
        for (name, content) in &files {
            digest.push_str(&format!("{name}:{}/", etag_of(content)));
        }
        // 40 hex digits, like a git commit, derived from the content so that it is stable.
        let sha = format!(
            "{}{}",
            etag_of(digest.as_bytes()),
            etag_of(repo_id.as_bytes())
        );
        let sha = format!("{sha}{}", &etag_of(sha.as_bytes())[..8]);
        let data = RepoData {
            sha: sha.clone(),
            files,
            gated: false,
        };
        self.lock().repos.insert(repo_id.to_string(), data);
        sha
    }

    /// Make `repo_id` answer downloads with 401 and `x-error-code: GatedRepo`, as the hub does for
    /// a gated model whose licence was not accepted. Its listing stays public, as on the hub.
    pub fn gate(&self, repo_id: &str) {
        if let Some(repo) = self.lock().repos.get_mut(repo_id) {
            repo.gated = true;
        }
    }

    /// Cut the next (non-probe) download of `file` off after `bytes` body bytes, once.
    pub fn cut_next_download(&self, file: &str, bytes: u64) {
        self.lock().cut = Some((file.to_string(), bytes));
    }

    /// The etag the server gives `content` (what hf-hub names the blob after).
    pub fn etag(&self, repo_id: &str, file: &str) -> String {
        let state = self.lock();
        let repo = &state.repos[repo_id];
        let (_, content) = repo
            .files
            .iter()
            .find(|(n, _)| n == file)
            .expect("file in repo");
        etag_of(content)
    }

    pub fn log(&self) -> Vec<Served> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Body bytes served for real downloads (not probes) of `file`.
    pub fn downloaded_bytes(&self, file: &str) -> u64 {
        self.log()
            .iter()
            .filter(|s| s.file.as_deref() == Some(file) && !s.is_probe())
            .map(|s| s.bytes)
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// 16 hex digits of FNV-1a over the content: stable and distinct enough for test blobs.
fn etag_of(content: &[u8]) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in content {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3);
    }
    format!("{hash:016x}")
}

fn read_tree(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("read repo folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            files.push((name, std::fs::read(&path).expect("read repo file")));
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        std::thread::spawn(move || handle(stream, &state));
    }
}

/// A parsed request: the path and the `Range` header.
struct Request {
    path: String,
    range: Option<String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        return None;
    }
    let mut range = None;
    for _ in 0..100 {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Some(Request { path, range })
}

/// A response to write: status, extra headers, body, and where to cut the body off.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_after: Option<u64>,
}

impl Response {
    fn new(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
            cut_after: None,
        }
    }

    fn error(status: u16, hub_code: &str) -> Response {
        let body = format!(r#"{{"error": "{hub_code}"}}"#).into_bytes();
        Response::new(status, body).header("x-error-code", hub_code)
    }

    /// The body, or its start when this response is cut off.
    fn body_to_send(&self) -> &[u8] {
        let n = self
            .cut_after
            .map_or(self.body.len(), |n| (n as usize).min(self.body.len()));
        &self.body[..n]
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Some(request) = read_request(&stream) else {
        return;
    };
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let (file, response) = route(&mut lock(), &request);
    // Logged before writing, so that a client that has its answer always finds it in the log.
    lock().log.push(Served {
        file,
        range: request.range.clone(),
        status: response.status,
        bytes: response.body_to_send().len() as u64,
    });
    write_response(&stream, &response);
}

fn route(state: &mut State, request: &Request) -> (Option<String>, Response) {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "models", org, name, "revision", rev] => {
            (None, listing(state, &format!("{org}/{name}"), rev))
        }
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => {
            let file = file.join("/");
            let response = resolve(
                state,
                &format!("{org}/{name}"),
                rev,
                &file,
                request.range.as_deref(),
            );
            (Some(file), response)
        }
        _ => (None, Response::error(404, "NotFound")),
    }
}

fn listing(state: &State, repo_id: &str, rev: &str) -> Response {
    let Some(repo) = state.repos.get(repo_id) else {
        return Response::error(404, "RepoNotFound");
    };
    if rev != "main" && rev != repo.sha {
        return Response::error(404, "RevisionNotFound");
    }
    let siblings: Vec<String> = repo
        .files
        .iter()
        .map(|(name, content)| format!(r#"{{"rfilename": "{name}", "size": {}}}"#, content.len()))
        .collect();
    let body = format!(
        r#"{{"id": "{repo_id}", "sha": "{}", "siblings": [{}]}}"#,
        repo.sha,
        siblings.join(", ")
    );
    Response::new(200, body.into_bytes()).header("Content-Type", "application/json")
}

fn resolve(
    state: &mut State,
    repo_id: &str,
    rev: &str,
    file: &str,
    range: Option<&str>,
) -> Response {
    let Some(repo) = state.repos.get(repo_id) else {
        return Response::error(404, "RepoNotFound");
    };
    if repo.gated {
        return Response::error(401, "GatedRepo");
    }
    if rev != "main" && rev != repo.sha {
        return Response::error(404, "RevisionNotFound");
    }
    let Some((_, content)) = repo.files.iter().find(|(n, _)| n == file) else {
        return Response::error(404, "EntryNotFound");
    };
    let total = content.len() as u64;
    let (start, end) = match range.map(parse_range) {
        None => (0, total.saturating_sub(1)),
        Some(Some((start, end))) if start < total => {
            (start, end.unwrap_or(total - 1).min(total - 1))
        }
        Some(_) => {
            return Response::new(416, Vec::new())
                .header("Content-Range", format!("bytes */{total}"));
        }
    };
    let status = if range.is_some() { 206 } else { 200 };
    let mut response = Response::new(status, content[start as usize..=end as usize].to_vec())
        .header("etag", format!("\"{}\"", etag_of(content)))
        .header("x-repo-commit", repo.sha.clone())
        .header("Content-Range", format!("bytes {start}-{end}/{total}"));
    let is_probe = range == Some("bytes=0-0");
    if !is_probe && state.cut.as_ref().is_some_and(|(f, _)| f == file) {
        response.cut_after = state.cut.take().map(|(_, n)| n);
    }
    response
}

/// `bytes=a-b` or `bytes=a-`.
fn parse_range(range: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start.parse().ok()?, end))
}

/// Write the response (the whole body, or up to the cut), then close the connection.
fn write_response(mut stream: &TcpStream, response: &Response) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    // A client that gives up early (a cancelled download) makes these fail; that is fine.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(response.body_to_send());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    }
}
