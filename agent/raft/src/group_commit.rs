//! Group commit: one fsync makes every log append queued before it durable, across shards.
//!
//! Appends are written `Deferred` on the Raft core's task and their callbacks queued here; a
//! thread takes the whole queue, flushes the engine once, and completes every callback it took.
//! A callback is queued only after its write returned, so the flush that completes it began
//! after the write: the append is durable when openraft hears of it. While one fsync runs,
//! the next group gathers, so the rate of durable appends is bounded by fsync latency times
//! the group size rather than by fsyncs per second.

use std::io;
use std::mem;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use openraft::storage::LogFlushed;
use tern_store::Engine;

use crate::TypeConfig;

pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<LogFlushed<TypeConfig>>,
    closed: bool,
}

impl GroupCommit {
    pub(crate) fn start(engine: Arc<dyn Engine>) -> Self {
        let shared = Arc::new(Shared {
            engine,
            queue: Mutex::default(),
            wake: Condvar::new(),
        });
        let thread = thread::Builder::new()
            .name("raft-group-commit".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })
            .expect("spawn the group-commit thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Completes `callback` once everything written to the engine so far is durable.
    pub(crate) fn after_flush(&self, callback: LogFlushed<TypeConfig>) {
        let mut queue = self.shared.lock();
        queue.waiting.push(callback);
        self.shared.wake.notify_one();
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread flushes what is queued, then exits and releases the engine.
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        loop {
            let group = {
                let mut queue = self.lock();
                while queue.waiting.is_empty() && !queue.closed {
                    queue = self
                        .wake
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if queue.waiting.is_empty() {
                    return;
                }
                mem::take(&mut queue.waiting)
            };
            let result = self.engine.flush();
            if let Err(error) = &result {
                tracing::error!(%error, appends = group.len(), "flushing the Raft log failed");
            }
            for callback in group {
                callback.log_io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| io::Error::other(e.to_string())),
                );
            }
        }
    }
}
