//! Gathering a group commit: the appends one transaction takes.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Command, Entry, GROUP_MAX_RECORDS, Reply};

/// How long a group waits, at most, for an append its last one announced
/// (`more`), counted from the group's first submission: a window of 64
/// signed publishes takes at most about 2.6 ms to check on one core (41 µs
/// each on the AMD EPYC VM with AVX2, 23 µs with AVX-512 IFMA). Tokio's
/// timers round it up to the next millisecond tick; the whole wait is
/// spent only when an announced append does not come (its check failed,
/// or its client went away).
const FOLLOW_WAIT: Duration = Duration::from_millis(3);

/// Takes `first` and every append already queued behind it, and, while the
/// last one taken announced another and the group is smaller than it asked
/// for (`more`), waits for that one too (until [`FOLLOW_WAIT`] after the
/// first was submitted). A command that is not an
/// append ends the group and is left in `stash`, to run after it.
///
/// Why wait: a connection submits each publish as soon as it is decided,
/// and signed publishes are decided as their verdicts come back from the
/// check threads, eight at a time; the sequencer, taking what was queued,
/// committed about 16 records a group, each commit 14 page writes and an
/// fsync. Measured on the 2-core AMD EPYC VM, broker pinned to one core,
/// the binaries before and after run alternately (`sealmq-bench -p 1 -s 1
/// --qos 1 --payload 64`, 8 s): unsigned, where a read's publishes are
/// decided in one turn and a sequencer on another worker took the first
/// alone, 59,682–62,856/s at 13.6–14.2 µs of broker CPU per publish before,
/// 72,208–73,040/s at 11.2–11.5 µs waiting for the whole read. What a
/// signed publish asks for is in the broker (`session::publish`).
pub(super) async fn gather(
    first: (Vec<Entry>, Reply),
    submitted: Instant,
    mut more: usize,
    commands: &mut mpsc::Receiver<Command>,
    stash: &mut Option<Command>,
) -> (Vec<(Vec<Entry>, Reply)>, Vec<Instant>) {
    let deadline = submitted + FOLLOW_WAIT;
    let mut count = first.0.len();
    let mut group = vec![first];
    let mut times = vec![submitted];
    while count < GROUP_MAX_RECORDS {
        let next = match commands.try_recv() {
            Ok(command) => Some(command),
            Err(_) if count < more => tokio::time::timeout_at(deadline, commands.recv()).await.ok().flatten(),
            Err(_) => None,
        };
        match next {
            Some(Command::Append { entries, reply, submitted, more: announced }) => {
                count += entries.len();
                group.push((entries, reply));
                times.push(submitted);
                more = announced;
            }
            Some(other) => {
                *stash = Some(other);
                break;
            }
            None => break,
        }
    }
    (group, times)
}
