//! The accept loop out of file descriptors, in a process of its own (this
//! test binary) whose limit it lowers: connections that cannot be taken are
//! closed at once rather than left waiting in the backlog, and accepting
//! resumes as soon as descriptors are free.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sealmq_broker::net::descriptors::Acceptor;

/// The soft limit this process runs the test under.
const LIMIT: u64 = 256;
/// Clients connecting while the process is out of descriptors.
const CLIENTS: usize = 5;

/// Whether the server closed `stream` within `within` (EOF or reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    match stream.read(&mut [0u8; 16]) {
        Ok(0) => true,
        Ok(_) => panic!("the server sent something"),
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_connections_are_closed_at_once_and_accepting_resumes() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, LIMIT.min(hard), hard).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut acceptor = Acceptor::new(listener, "test");

    // Take every descriptor left, then give back just enough for the
    // clients' own sockets: the server's accepts then find none.
    let mut hogs = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        hogs.push(file);
    }
    assert!(hogs.len() > CLIENTS, "the process had only {} descriptors free", hogs.len());
    hogs.truncate(hogs.len() - CLIENTS);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(File::open("/dev/null").is_err(), "the process should be out of descriptors");

    // Serve in the background; what it accepts is kept open, and counted.
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = acceptor.accept().await;
            let _ = accepted_tx.send(stream);
        }
    });
    let started = Instant::now();
    // The clients stay open meanwhile: each would free a descriptor here.
    for (n, client) in clients.iter_mut().enumerate() {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        assert!(closed_within(client, left), "client {n} was left waiting ({:?})", started.elapsed());
    }
    assert!(accepted.try_recv().is_err(), "nothing was accepted while out of descriptors");

    // Descriptors free again: the next client is accepted and kept.
    drop(clients);
    hogs.truncate(hogs.len().saturating_sub(16));
    let mut client = TcpStream::connect(addr).unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(2), accepted.recv()).await;
    assert!(matches!(stream, Ok(Some(_))), "a client was not accepted once descriptors were free");
    assert!(!closed_within(&mut client, Duration::from_millis(200)), "an accepted client was closed");
    server.abort();
}
