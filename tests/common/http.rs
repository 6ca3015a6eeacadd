//! Plain HTTP/1.1 over `TcpStream` for the end-to-end tests: requests the
//! tests can also cut short, which a client library would not send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP/1.1 GET on a fresh connection: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = get_with_head(addr, path);
    (status, body)
}

/// One HTTP/1.1 GET on a fresh connection: (status, lower-cased head, body).
pub fn get_with_head(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let body = response[split + 4..].to_vec();
    let body = if head.contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    (status, head, body)
}

/// The body of a chunked answer, joined.
pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

/// A connection that sends the start of a request's head and stops, as a
/// slowloris client does.
pub fn half_request(addr: SocketAddr) -> TcpStream {
    sent(addr, b"GET / HTTP/1.1\r\nHost:")
}

/// A connection that has sent `bytes`, to be read with [`fate`].
pub fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

/// What became of a connection the test stopped writing to.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still open, nothing received.
    Open,
    /// The server answered with this status (and, by then, closed or not).
    Answered(u16),
    /// Closed (or reset) without an answer.
    Closed,
}

/// The connection's fate, waiting for it at most `within` (zero: look only).
pub fn fate(stream: &mut TcpStream, within: Duration) -> Fate {
    let mut buf = [0u8; 512];
    let read = if within.is_zero() {
        stream.set_nonblocking(true).unwrap();
        let read = stream.read(&mut buf);
        stream.set_nonblocking(false).unwrap();
        read
    } else {
        stream.set_read_timeout(Some(within)).unwrap();
        stream.read(&mut buf)
    };
    match read {
        Ok(0) => Fate::Closed,
        Ok(n) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            Fate::Answered(head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Fate::Open,
        Err(_) => Fate::Closed,
    }
}
