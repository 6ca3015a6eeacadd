//! File descriptors: the process's limit, how many MQTT clients fit in it,
//! and accepting connections when the process runs out anyway.
//!
//! Every socket is a descriptor, and so is every SQLite file. A process out
//! of descriptors cannot accept, so a client past that point would wait in
//! the listen backlog for a CONNACK that never comes. The broker therefore
//! sizes its connection limit to what fits ([`Budget`]), so that clients
//! past it are answered "server busy" while there are still descriptors to
//! answer with, and its listeners ([`Acceptor`]) close what they cannot
//! take rather than leave it waiting.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Limits;

/// Descriptors one connected MQTT client costs: its socket. Routing is in
/// process (an external router is reached through a few shared
/// connections, counted in the reserve), and a session kept for a
/// disconnected client holds none.
pub const PER_CLIENT: u64 = 1;

/// Descriptors the broker holds besides its clients, HTTP connections,
/// refusals and spares: standard streams, the runtime's epoll and eventfds,
/// the listeners (up to four for MQTT, the router's) and the system link,
/// and SQLite's pools (up to ten connections, each with the database and
/// its WAL open, plus the lock and shared-memory files, and temporary files
/// for large sorts). An idle broker measured 30; this leaves room for the
/// pools to fill and for a closed link's router end that is not yet closed.
const BASE: u64 = 96;

/// Backoff after an accept error that a retry would only repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The descriptor limit leaves no room for a single MQTT client.
#[derive(Debug, thiserror::Error)]
#[error(
    "the file descriptor limit ({limit}) leaves no room for MQTT clients: the broker needs {reserve} for itself \
     (HTTP connections, SQLite, listeners) and {PER_CLIENT} per client; raise it (ulimit -n, systemd \
     LimitNOFILE=) or lower limits.http_max_connections"
)]
pub struct TooFewDescriptors {
    /// The soft RLIMIT_NOFILE.
    pub limit: u64,
    /// What the broker needs before any client.
    pub reserve: u64,
}

/// How the process's descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft RLIMIT_NOFILE, `None` when there is none.
    pub limit: Option<u64>,
    /// Descriptors kept for everything but MQTT clients.
    pub reserve: u64,
    /// MQTT clients admitted at once: `limits.max_connections`, or fewer
    /// when that many would not fit.
    pub clients: usize,
}

impl Budget {
    /// The budget for `limits` with `listeners` client listeners under
    /// `limit`. `refusals` is how many connections past the limit may be
    /// holding a descriptor while they are told so (MQTT and HTTP).
    pub fn plan(
        limit: Option<u64>,
        limits: &Limits,
        listeners: usize,
        refusals: usize,
    ) -> Result<Self, TooFewDescriptors> {
        // One spare per accepting listener, HTTP's included (see Acceptor).
        let spares = listeners as u64 + 1;
        let reserve = BASE + limits.http_max_connections as u64 + refusals as u64 + spares;
        let configured = limits.max_connections;
        let Some(limit) = limit else { return Ok(Self { limit, reserve, clients: configured }) };
        let fit = limit.saturating_sub(reserve) / PER_CLIENT;
        if fit == 0 {
            return Err(TooFewDescriptors { limit, reserve });
        }
        let clients = usize::try_from(fit).map_or(configured, |fit| fit.min(configured));
        Ok(Self { limit: Some(limit), reserve, clients })
    }

    /// Descriptors needed to admit `clients` at once.
    pub fn needed(&self, clients: usize) -> u64 {
        self.reserve + clients as u64 * PER_CLIENT
    }

    /// Says once, at start, what fits; warns when it is less than configured.
    pub fn report(&self, configured: usize) {
        let Some(limit) = self.limit else { return };
        if self.clients < configured {
            tracing::warn!(
                limit,
                max_connections = configured,
                admitted = self.clients,
                "the file descriptor limit ({limit}) fits only {} MQTT clients ({PER_CLIENT} descriptors each, \
                 sessions kept for disconnected clients included; {} kept for HTTP, SQLite and listeners): \
                 clients past that are refused as busy. To serve limits.max_connections = {configured}, raise \
                 the limit to {} (ulimit -n, systemd LimitNOFILE=)",
                self.clients,
                self.reserve,
                self.needed(configured),
            );
        } else {
            tracing::info!(limit, max_connections = configured, "file descriptors: room for every client");
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (many systems start
/// processes at 1024 whatever the hard limit) and returns it; `None` when
/// there is no limit to respect.
#[cfg(unix)]
pub fn raise_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < rlimit::INFINITY => Some(limit),
        Ok(_) => None,
        Err(e) => {
            // Keep the current limit: the budget then only admits fewer clients.
            let current = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
            tracing::warn!(error = %e, "cannot raise the file descriptor limit");
            current.ok().filter(|&soft| soft < rlimit::INFINITY)
        }
    }
}

/// No RLIMIT_NOFILE off Unix.
#[cfg(not(unix))]
pub fn raise_limit() -> Option<u64> {
    None
}

/// A listener that keeps working when the process is out of descriptors.
///
/// An accept that fails with EMFILE or ENFILE leaves the connection in the
/// backlog, where its client waits, and the listener stays readable, so a
/// plain retry spins. The acceptor keeps one descriptor open in reserve:
/// out of descriptors, it closes the spare, accepts the waiting connection
/// if there is one, closes it at once (the client sees the connection
/// closed rather than waiting) and opens the spare again. It warns once per
/// such episode.
pub struct Acceptor {
    listener: TcpListener,
    spare: Option<std::fs::File>,
    /// For logs: which listener.
    name: &'static str,
    shed: Episode,
}

impl Acceptor {
    /// Accepts on `listener`; `name` says which in logs.
    pub fn new(listener: TcpListener, name: &'static str) -> Self {
        Self { listener, spare: spare_descriptor(), name, shed: Episode::default() }
    }

    /// The next connection. Cancel-safe: a connection being closed for want
    /// of descriptors is closed anyway, and the spare is reopened next time.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            if self.spare.is_none() {
                self.spare = spare_descriptor();
            }
            let error = match self.listener.accept().await {
                Ok(accepted) => {
                    if self.spare.is_some()
                        && let Some((lasted, closed)) = self.shed.end()
                    {
                        tracing::info!(
                            listener = self.name,
                            closed,
                            lasted_ms = lasted.as_millis(),
                            "file descriptors available again; connections are accepted"
                        );
                    }
                    return accepted;
                }
                Err(e) => e,
            };
            if out_of_descriptors(&error) {
                self.shed_one(&error).await;
            } else if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
            ) {
                // The client gave up before it was accepted.
                continue;
            } else {
                tracing::warn!(listener = self.name, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }

    /// Closes the connection waiting in the backlog, with the spare
    /// descriptor's room; without a spare, waits for descriptors to free.
    async fn shed_one(&mut self, error: &std::io::Error) {
        if self.shed.begin() {
            tracing::warn!(
                listener = self.name,
                %error,
                "out of file descriptors: new connections are closed at once until some are free \
                 (raise the limit, or lower limits.max_connections)"
            );
        }
        match self.spare.take() {
            Some(spare) => {
                drop(spare);
                // Only a connection already waiting: Linux fails accept with
                // EMFILE before it looks at the backlog, so the error does
                // not say one is there, and waiting for the next one here
                // would close it even if descriptors were free by then.
                if let Some(Ok((stream, _))) = self.listener.accept().now_or_never() {
                    drop(stream);
                    self.shed.count();
                }
            }
            None => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// A descriptor to give back when the process is out of them.
fn spare_descriptor() -> Option<std::fs::File> {
    #[cfg(unix)]
    return std::fs::File::open("/dev/null").ok();
    #[cfg(not(unix))]
    return None;
}

/// EMFILE (this process) or ENFILE (the whole system).
fn out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A spell of refusing or closing connections at some limit: logged when it
/// begins and when it ends, not per connection.
#[derive(Debug, Default)]
pub(crate) struct Episode {
    since: Option<Instant>,
    count: u64,
}

impl Episode {
    /// Marks the episode as under way; true if it has just begun.
    pub(crate) fn begin(&mut self) -> bool {
        let began = self.since.is_none();
        self.since.get_or_insert_with(Instant::now);
        began
    }

    /// Counts one connection refused or closed in it.
    pub(crate) fn count(&mut self) {
        self.count += 1;
    }

    /// Ends it; how long it lasted and what it counted, if one was under way.
    pub(crate) fn end(&mut self) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        Some((since.elapsed(), std::mem::take(&mut self.count)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, http: usize) -> Limits {
        Limits { max_connections, http_max_connections: http, ..Limits::default() }
    }

    #[test]
    fn the_connection_limit_is_lowered_to_what_fits() {
        let budget = Budget::plan(Some(1024), &limits(10_000, 128), 1, 80).unwrap();
        assert_eq!(budget.reserve, BASE + 128 + 80 + 2);
        assert_eq!(budget.clients, ((1024 - budget.reserve) / PER_CLIENT) as usize);
        assert!(budget.needed(budget.clients) <= 1024);
        assert!(budget.needed(budget.clients + 1) > 1024);
        assert_eq!(budget.needed(10_000), budget.reserve + 10_000 * PER_CLIENT);
    }

    #[test]
    fn a_limit_with_room_keeps_the_configured_one() {
        let budget = Budget::plan(Some(1 << 20), &limits(10_000, 128), 4, 80).unwrap();
        assert_eq!(budget.clients, 10_000);
        assert_eq!(Budget::plan(None, &limits(7, 128), 1, 80).unwrap().clients, 7);
    }

    #[test]
    fn a_limit_without_room_for_one_client_is_an_error() {
        let err = Budget::plan(Some(200), &limits(10, 128), 1, 80).unwrap_err();
        assert_eq!(err.limit, 200);
        assert!(err.to_string().contains("http_max_connections"), "{err}");
    }

    #[test]
    fn an_episode_is_reported_once_with_its_count() {
        let mut episode = Episode::default();
        assert_eq!(episode.end(), None);
        assert!(episode.begin());
        episode.count();
        assert!(!episode.begin());
        episode.count();
        assert_eq!(episode.end().map(|(_, count)| count), Some(2));
        assert_eq!(episode.end(), None);
    }
}
