//! WAL checkpoints off the append path.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses
//! `wal_autocheckpoint` pages: that append then also copies the WAL into
//! the database file and fsyncs it. Measured on the sequencer, those
//! commits took 3–8 ms instead of 0.25 ms (the tail of publish → PUBACK
//! latency), and with 1 MiB payloads the copy was a fifth of the
//! sequencer's time. So the write connection has automatic checkpoints
//! off (`wal_autocheckpoint = 0`) and this task, on a connection (and so a
//! thread) of its own, checkpoints after commits instead. A PASSIVE
//! checkpoint takes no lock an append waits for; durability is the WAL's,
//! as before (each append's COMMIT is fsynced with `synchronous = FULL`
//! before it is acknowledged).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::mpsc;

use super::StoreError;

/// Pause after each checkpoint. Small commits rewrite the same few pages
/// (the right edges of the tables and indexes) again and again, and a
/// checkpoint copies each page once however often the WAL holds it: a
/// checkpoint every 50 ms writes a fraction of what one per commit would,
/// and its fsyncs of the database file compete less with the appends'
/// fsyncs of the WAL (at 5 ms, p50 publish → delivery was 0.2 ms worse).
const PAUSE: Duration = Duration::from_millis(50);
/// WAL frames (pages) past which the sequencer finishes a checkpoint
/// itself (see [`Checkpointer::restart_due`]): 64 MiB of 4 KiB pages.
const RESTART_FRAMES: i64 = 16 * 1024;
/// …provided no more than this many frames are left to copy, so that the
/// append path never copies more than a few MiB (4 MiB of 4 KiB pages).
const RESTART_BEHIND: i64 = 1024;
/// After a failed checkpoint, wait this long before the next.
const RETRY: Duration = Duration::from_secs(1);

/// The sequencer's side of the checkpointer: kicks after commits. Dropping
/// it stops the task (SQLite checkpoints once more when the last connection
/// closes).
#[derive(Debug)]
pub(super) struct Checkpointer {
    kicks: mpsc::Sender<()>,
    /// The WAL as the last checkpoint left it: frames in it, frames not yet
    /// copied into the database.
    wal: Arc<WalState>,
}

#[derive(Debug, Default)]
struct WalState {
    frames: AtomicI64,
    behind: AtomicI64,
}

impl Checkpointer {
    /// Opens the checkpointer's connection and starts its task.
    pub(super) async fn start(
        options: &SqliteConnectOptions,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let conn = SqliteConnection::connect_with(options).await?;
        // One kick waiting is enough: every commit before it is covered.
        let (kicks, rx) = mpsc::channel(1);
        let wal = Arc::new(WalState::default());
        Ok((Self { kicks, wal: Arc::clone(&wal) }, tokio::spawn(run(conn, rx, wal))))
    }

    /// Whether the sequencer should run a PASSIVE checkpoint on its own
    /// connection now, between appends. SQLite starts the WAL over only
    /// when a write transaction begins with every frame copied; under a
    /// steady stream of commits the checkpointer rarely finishes between
    /// two of them, and the WAL would grow without bound. The sequencer's
    /// checkpoint cannot race its own commits, so its next append starts
    /// the WAL over. Due when the WAL is large and the checkpointer has
    /// left little to copy (so this stays short).
    pub(super) fn restart_due(&self) -> bool {
        let frames = self.wal.frames.load(Ordering::Relaxed);
        let behind = self.wal.behind.load(Ordering::Relaxed);
        if frames > RESTART_FRAMES && behind <= RESTART_BEHIND {
            // Not again until the checkpointer has looked at the WAL anew.
            self.wal.frames.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Something was committed: checkpoint soon.
    pub(super) fn kick(&self) {
        let _ = self.kicks.try_send(());
    }
}

async fn run(mut conn: SqliteConnection, mut kicks: mpsc::Receiver<()>, wal: Arc<WalState>) {
    while kicks.recv().await.is_some() {
        match checkpoint(&mut conn).await {
            Ok((frames, copied)) => {
                wal.behind.store(frames - copied, Ordering::Relaxed);
                wal.frames.store(frames, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying later");
                tokio::time::sleep(RETRY).await;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the checkpointer's connection");
    }
}

/// Runs one PASSIVE checkpoint; returns the frames in the WAL and those
/// copied into the database. (Busy, another checkpoint running, is no
/// error: the figures are then those the other leaves.)
pub(super) async fn checkpoint(conn: &mut SqliteConnection) -> Result<(i64, i64), StoreError> {
    let (_busy, frames, copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *conn).await?;
    Ok((frames, copied))
}

/// The pragmas the write connection needs for this to work.
pub(super) fn writer_options(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options
        .pragma("wal_autocheckpoint", "0")
        // After the WAL restarts, its file is cut back to this size, so a
        // burst of large payloads leaves no gigabyte-sized WAL behind.
        .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
}
