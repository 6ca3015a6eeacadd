//! Accepting client connections: each listener's loop, and binding.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::gateway::{Shared, Slot};
use crate::net::descriptors::Acceptor;
use crate::net::transport::Listener;
use crate::session::Sessions;

/// Accepts connections of one listener until shutdown; each runs in its
/// own task, so one client's trouble never stops another's. Past
/// `limits.max_connections` (over all listeners), or past what the
/// descriptor limit fits (connections and parked sessions:
/// [`crate::net::descriptors::Budget`]), a connection is answered with a
/// refusing CONNACK, or closed when too many are being refused. Out of
/// descriptors all the same, connections are closed at once ([`Acceptor`]).
pub async fn accept_loop(shared: Arc<Shared>, sessions: Arc<Sessions>, listener: TcpListener, kind: Listener) {
    let mut shutdown = shared.shutdown.clone();
    let mut connections = tokio::task::JoinSet::new();
    let mut acceptor = Acceptor::new(listener, kind.scheme());
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept() => {
                let shared_for_task = Arc::clone(&shared);
                match Slot::take(&shared) {
                    Some(slot) => {
                        connections.spawn(crate::session::serve(shared_for_task, Arc::clone(&sessions), stream, peer, kind, slot));
                    }
                    None => match Arc::clone(&shared.refusal_slots).try_acquire_owned() {
                        Ok(permit) => {
                            tracing::warn!(%peer, "connection limit reached; refusing");
                            connections.spawn(async move {
                                crate::session::refuse_busy(shared_for_task, stream, peer, kind).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "connection limit reached; closing");
                            drop(stream);
                        }
                    },
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = crate::session::stopped(&mut shutdown) => break,
        }
    }
    // Stop accepting; let every connection finish its in-flight appends.
    drop(acceptor);
    while connections.join_next().await.is_some() {}
}

/// Binds the MQTT listener with a backlog fit for thousands of devices
/// reconnecting at once (the default of 128 drops handshakes, which the
/// kernel then retries a second later).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
