//! A minimal HTTP/1.1 client over `std::net::TcpStream` for the HTTP API
//! tests (`http_api`, `tiles`): one request per connection, `Content-Length`
//! and chunked bodies, and Server-Sent Events read incrementally. Nothing is
//! normalised: the tests see the status, headers and bytes the broker sent.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one whole response may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP response.
#[derive(Clone)]
pub struct Response {
    /// The request target, for messages.
    pub target: String,
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(400)]);
        write!(f, "GET {} -> {} {:?} {body:?}", self.target, self.status, self.headers)
    }
}

impl Response {
    /// The first header of that (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The media type of Content-Type, without parameters, lowercased.
    pub fn media_type(&self) -> String {
        self.header("content-type").unwrap_or_default().split(';').next().unwrap_or_default().trim().to_lowercase()
    }

    /// The body as UTF-8.
    #[track_caller]
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap_or_else(|_| panic!("not UTF-8: {self:?}"))
    }

    /// The body as JSON (any status).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts 200 with the given media type; the response.
    #[track_caller]
    pub fn ok(self, media_type: &str) -> Self {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.media_type(), media_type, "Content-Type of {self:?}");
        self
    }

    /// Asserts 200 `application/json`; the JSON.
    #[track_caller]
    pub fn ok_json(self) -> Value {
        self.ok("application/json").json()
    }

    /// Asserts one of `statuses` (never 500) with a JSON `{"error": "<non-empty>"}` body, as
    /// the contract says every error is; the message.
    #[track_caller]
    pub fn error(&self, statuses: &[u16]) -> String {
        assert!(statuses.contains(&self.status), "expected HTTP {statuses:?}: {self:?}");
        assert_eq!(self.media_type(), "application/json", "an error is JSON: {self:?}");
        let json = self.json();
        let message = json["error"].as_str().unwrap_or_else(|| panic!("no \"error\" string: {self:?}"));
        assert!(!message.trim().is_empty(), "an empty error message: {self:?}");
        message.to_string()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn send_get(stream: &mut TcpStream, addr: SocketAddr, target: &str, extra: &str) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("GET {target}: {e}"));
}

/// Reads from `stream` into `buf` until `deadline`; false on EOF, panics on timeout.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant, what: &str) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: no complete answer within the time allowed (got {} bytes)", buf.len());
        stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The status line and headers of `buf` once they are complete, as a
/// response with an empty body, and where the body starts.
fn parse_head(buf: &[u8], target: &str) -> Option<(Response, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).unwrap_or_else(|_| panic!("GET {target}: header not UTF-8"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(version.starts_with("HTTP/1."), "GET {target}: bad status line {status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("GET {target}: {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("GET {target}: bad header {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    Some((Response { target: target.to_string(), status, headers, body: Vec::new() }, end + 4))
}

/// Sends `GET target` and reads the response head: the head, and the body bytes already read.
fn request_head(stream: &mut TcpStream, addr: SocketAddr, target: &str, extra: &str) -> (Response, Vec<u8>) {
    let what = format!("GET {target}");
    send_get(stream, addr, target, extra);
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = Vec::new();
    loop {
        if let Some((head, body_start)) = parse_head(&buf, target) {
            return (head, buf.split_off(body_start));
        }
        assert!(read_more(stream, &mut buf, deadline, &what), "{what}: connection closed in the header");
    }
}

/// Decodes as much of a chunked body as is complete: (data, bytes consumed, last chunk seen).
fn dechunk(raw: &[u8], what: &str) -> (Vec<u8>, usize, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = raw[at..].windows(2).position(|w| w == b"\r\n") else { return (out, at, false) };
        let size_text = std::str::from_utf8(&raw[at..at + line_end]).unwrap();
        let size_text = size_text.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_text, 16).unwrap_or_else(|_| panic!("{what}: chunk size {size_text:?}"));
        let data_start = at + line_end + 2;
        if size == 0 {
            return (out, data_start, true);
        }
        if raw.len() < data_start + size + 2 {
            return (out, at, false);
        }
        out.extend_from_slice(&raw[data_start..data_start + size]);
        at = data_start + size + 2;
    }
}

/// `GET target` with extra request header lines (each ending in `\r\n`).
#[track_caller]
pub fn get_with(addr: SocketAddr, target: &str, extra_headers: &str) -> Response {
    let what = format!("GET {target}");
    let mut stream = connect(addr);
    let (mut response, mut raw) = request_head(&mut stream, addr, target, extra_headers);
    let deadline = Instant::now() + TIMEOUT;
    let chunked = response.header("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let length: Option<usize> = response.header("content-length").map(|l| l.parse().unwrap());
    loop {
        if chunked {
            let (data, _, done) = dechunk(&raw, &what);
            if done {
                response.body = data;
                return response;
            }
        } else if let Some(length) = length
            && raw.len() >= length
        {
            raw.truncate(length);
            response.body = raw;
            return response;
        }
        if !read_more(&mut stream, &mut raw, deadline, &what) {
            assert!(!chunked && length.is_none(), "{what}: connection closed before the body's end");
            response.body = raw;
            return response;
        }
    }
}

/// `GET target`.
#[track_caller]
pub fn get(addr: SocketAddr, target: &str) -> Response {
    get_with(addr, target, "")
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (`message` when absent, as in the SSE spec).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An open `text/event-stream` response, read as events arrive.
pub struct EventStream {
    stream: TcpStream,
    /// The response head (body empty).
    pub head: Response,
    chunked: bool,
    raw: Vec<u8>,
    text: Vec<u8>,
    closed: bool,
}

impl EventStream {
    /// Opens `GET target` and reads the response head.
    #[track_caller]
    pub fn open(addr: SocketAddr, target: &str) -> Self {
        let mut stream = connect(addr);
        let (head, raw) = request_head(&mut stream, addr, target, "Accept: text/event-stream\r\n");
        let chunked = head.header("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
        Self { stream, head, chunked, raw, text: Vec::new(), closed: false }
    }

    fn take_event(&mut self) -> Option<Event> {
        // Events end with a blank line; comments (":" lines, keep-alives) and
        // events without data are skipped, as the SSE spec says.
        loop {
            // Bytewise: a read may end inside a multi-byte character (the
            // checkpoint's em dash), which is only decoded once its event is whole.
            let end = self.text.windows(2).position(|w| w == b"\n\n")?;
            let block = String::from_utf8_lossy(&self.text[..end]).into_owned();
            self.text.drain(..end + 2);
            let (mut event, mut data) = (None, Vec::new());
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = Some(value.to_string()),
                    "data" => data.push(value.to_string()),
                    _ => {}
                }
            }
            if !data.is_empty() {
                return Some(Event { event: event.unwrap_or_else(|| "message".into()), data: data.join("\n") });
            }
        }
    }

    /// Moves what has arrived into `text`: de-chunked, line ends as `\n`.
    fn absorb(&mut self) {
        let data = if self.chunked {
            let (data, used, done) = dechunk(&self.raw, &self.head.target);
            self.raw.drain(..used);
            self.closed |= done;
            data
        } else {
            std::mem::take(&mut self.raw)
        };
        self.text.extend_from_slice(&data);
        // A "\r\n" split across two reads is joined here, on the next call.
        let mut normalised = Vec::with_capacity(self.text.len());
        for (i, &b) in self.text.iter().enumerate() {
            if !(b == b'\r' && self.text.get(i + 1) == Some(&b'\n')) {
                normalised.push(b);
            }
        }
        self.text = normalised;
    }

    /// The next event, or `None` if none arrives within `within` or the stream ends.
    pub fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            self.absorb();
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            if self.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(_) => self.closed = true,
            }
        }
    }
}
