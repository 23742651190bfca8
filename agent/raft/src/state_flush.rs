//! Periodic flush of a state engine that has no log beside it.
//!
//! On its own engine the state machine writes only `Deferred`, so its writes would become
//! durable only at the next snapshot. Nothing is lost by that (the log replays them), but a
//! crash would replay a long tail, and redb reuses the pages a non-durable commit freed only
//! after a durable one. So a thread flushes the engine about once per [`INTERVAL`] when it was
//! written since the last flush.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tern_store::Engine;

/// How often the state engine is made durable when it was written. Applies go to the
/// buffered overlay and do not wait for a flush; the interval bounds the memory the overlay
/// holds and the log tail a crash replays.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// The flush thread; it stops (after a last flush) when this is dropped, i.e. with the last
/// [`crate::Storage`] and [`crate::StateMachine`] of the engine.
pub(crate) struct StateFlush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    /// Set after every write; the thread flushes only when it was set.
    dirty: AtomicBool,
    closed: Mutex<bool>,
    wake: Condvar,
}

impl StateFlush {
    pub(crate) fn start(engine: Arc<dyn Engine>) -> Self {
        let shared = Arc::new(Shared {
            engine,
            dirty: AtomicBool::new(false),
            closed: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread = thread::Builder::new()
            .name("raft-state-flush".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })
            .expect("spawn the state flush thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Notes a `Deferred` write that has returned: the next flush covers it.
    pub(crate) fn wrote(&self) {
        self.shared.dirty.store(true, Ordering::SeqCst);
    }
}

impl Drop for StateFlush {
    fn drop(&mut self) {
        *self
            .shared
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let closed = {
                let closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
                let (closed, _) = self
                    .wake
                    .wait_timeout_while(closed, INTERVAL, |closed| !*closed)
                    .unwrap_or_else(PoisonError::into_inner);
                *closed
            };
            // Cleared before the flush: a write returning during it sets it again.
            if self.dirty.swap(false, Ordering::SeqCst)
                && let Err(error) = self.engine.flush()
            {
                tracing::error!(%error, "flushing the state machine failed");
                self.dirty.store(true, Ordering::SeqCst);
            }
            if closed {
                return;
            }
        }
    }
}
