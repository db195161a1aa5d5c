//! Grouping concurrent commands: a master node commits the commands waiting for it as one log
//! entry (group commit), and a master client sends its concurrent proposals in one call. Both
//! take whatever is queued when a slot frees, so a group's size follows the load.

use std::sync::Arc;

use cairn_engine::state::Outcome;
use cairn_proto::ProposeError;

/// A client command waiting for its group to commit.
pub type Waiting = (
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<Outcome, ProposeError>>,
);

/// Most commands one log entry carries.
const GROUP_COMMANDS_MAX: usize = 1024;
/// Most command bytes one log entry carries.
const GROUP_BYTES_MAX: usize = 4 << 20;
/// Groups being committed at once. While they are in flight, new commands queue up and form
/// the next group, so the group size follows the load. One is best (measured with
/// `cairn-bench raft` and `cairn-bench s3`, BENCHMARKS.md): fewer, larger entries cost fewer
/// appends, fsyncs and apply transactions than overlapping small ones; 2 gave 41K commands/s on
/// one node at 256 clients, 1 gives 55K, and small S3 PUTs went from 4.8K to 6.3K/s.
pub(crate) const GROUPS_IN_FLIGHT: usize = 1;
/// Commands that may wait for a group (worst case ~GROUP_BYTES_MAX × this / GROUP_COMMANDS_MAX).
pub const WAITING_MAX: usize = 16 * 1024;

/// `first` and whatever else is already queued, up to a group's limits.
fn take_group(first: Waiting, queue: &mut tokio::sync::mpsc::Receiver<Waiting>) -> Vec<Waiting> {
    let mut bytes = first.0.len();
    let mut group = vec![first];
    while group.len() < GROUP_COMMANDS_MAX && bytes < GROUP_BYTES_MAX {
        match queue.try_recv() {
            Ok(w) => {
                bytes += w.0.len();
                group.push(w);
            }
            Err(_) => break,
        }
    }
    group
}

/// Runs `handle` on groups taken from `queue`, at most `in_flight` at a time. A slot is taken
/// before the group: commands arriving while all slots are busy join the next group, so group
/// size follows the load. Ends when the queue's senders are gone.
pub async fn run_groups<F, Fut>(
    mut queue: tokio::sync::mpsc::Receiver<Waiting>,
    in_flight: usize,
    handle: F,
) where
    F: Fn(Vec<Waiting>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let work = handle(take_group(first, &mut queue));
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}
