//! The session table: which connection (or parked session) holds each
//! client id, and how a new connection asks it to hand the session over.
//!
//! Owned by the server and handed to each connection, not kept in
//! `Shared`: its entries lead to sessions, which hold `Shared`, so keeping
//! it there would make the shared state depend on the sessions it serves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Parked;

/// Asks the holder of a client id's session (a live connection or a parked
/// session) to hand it over to a new connection: it answers with the
/// session when it is persistent.
pub(crate) type TakeRequest = oneshot::Sender<Option<Box<Parked>>>;

/// A client id's current holder.
struct Entry {
    /// Distinguishes this holder from a later one with the same id.
    generation: u64,
    /// Where to ask it to hand the session over.
    take: oneshot::Sender<TakeRequest>,
}

/// Every client id's holder.
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    next_generation: AtomicU64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// Where a session's holder hears that another connection takes its
/// client id over. A holder is asked at most once: the table hands its
/// sender to exactly one successor. A oneshot (about 100 bytes), not an
/// mpsc channel, whose first block and padded halves cost every connection
/// most of a KiB.
pub(crate) struct Takes(Option<oneshot::Receiver<TakeRequest>>);

impl Takes {
    /// The next take-over request; `None` (at once, from then on) once no
    /// successor can ask any more.
    pub(crate) async fn recv(&mut self) -> Option<TakeRequest> {
        // A oneshot must not be polled again once it has answered.
        let receiver = self.0.as_mut()?;
        let answer = receiver.await.ok();
        self.0 = None;
        answer
    }
}

impl Sessions {
    /// Registers a new connection as the holder of `client_id`. Returns its
    /// generation, where it hears of a take-over, and where to ask the
    /// previous holder (live or parked), if any, for the session.
    pub(crate) fn claim(&self, client_id: &str) -> (u64, Takes, Option<oneshot::Sender<TakeRequest>>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (take, takes) = oneshot::channel();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let previous = entries.insert(client_id.to_string(), Entry { generation, take });
        (generation, Takes(Some(takes)), previous.map(|entry| entry.take))
    }

    /// Forgets a holder, unless a newer one has taken its id.
    pub(crate) fn release(&self, client_id: &str, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(client_id).is_some_and(|e| e.generation == generation) {
            entries.remove(client_id);
        }
    }
}

/// Asks a client id's previous holder for its session; a holder that does
/// not answer in time loses it.
pub(super) async fn request_session(take: oneshot::Sender<TakeRequest>) -> Option<Box<Parked>> {
    let (reply, answer) = oneshot::channel();
    take.send(reply).ok()?;
    tokio::time::timeout(Duration::from_secs(5), answer).await.ok()?.ok()?
}
