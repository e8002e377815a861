//! The mover's database on a thread of its own. SQLite with `synchronous=FULL` waits for the disk on every
//! commit; run inside an async task it would stall every other task on that worker, so each read and write of
//! the [`Store`] is a closure sent to one dedicated thread, and the async caller awaits its answer. One
//! thread per database also serialises the writes, which SQLite would do anyway.

use std::panic::AssertUnwindSafe;

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::store::{Store, StoreResult};

/// Calls that may wait for the store thread; a caller beyond them waits to send (back-pressure).
pub const STORE_QUEUE: usize = 256;

type Call = Box<dyn FnOnce(&Store) + Send>;

/// Why a call to the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused the statement, or a record could not be read.
    #[error("mover database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The call was lost: the store thread has stopped, or the call panicked.
    #[error("mover database: the call did not complete (the store thread stopped or the call panicked)")]
    Lost,
}

/// A handle to the thread that owns the [`Store`]; cheap to clone. The thread ends when every handle is
/// dropped.
#[derive(Clone)]
pub struct StoreThread {
    calls: mpsc::Sender<Call>,
}

impl StoreThread {
    /// Moves `store` to a new thread (`tern-mover-store`).
    pub fn spawn(store: Store) -> std::io::Result<StoreThread> {
        let (calls, mut queue) = mpsc::channel::<Call>(STORE_QUEUE);
        std::thread::Builder::new()
            .name("tern-mover-store".into())
            .spawn(move || {
                while let Some(call) = queue.blocking_recv() {
                    // A panicking call loses its answer (its caller sees `Lost`); the thread goes on.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| call(&store))).is_err() {
                        error!("a mover database call panicked");
                    }
                }
            })?;
        Ok(StoreThread { calls })
    }

    /// Runs `work` on the store thread and returns its result.
    pub async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> StoreResult<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let call: Call = Box::new(move |store| {
            let _ = answer.send(work(store));
        });
        self.calls.send(call).await.map_err(|_| StoreError::Lost)?;
        Ok(answered.await.map_err(|_| StoreError::Lost)??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_on_the_store_thread_and_a_panic_loses_only_its_own_answer() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let thread = StoreThread::spawn(store).expect("spawn");
        let name = thread
            .call(|_| Ok(std::thread::current().name().map(str::to_string)))
            .await
            .expect("call");
        assert_eq!(name.as_deref(), Some("tern-mover-store"));
        let lost = thread.call(|_| -> StoreResult<()> { panic!("a bug") }).await;
        assert!(matches!(lost, Err(StoreError::Lost)), "{lost:?}");
        let nodes = thread.call(|store| store.nodes()).await.expect("still serving");
        assert!(nodes.is_empty());
    }
}
