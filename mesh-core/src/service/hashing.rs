//! Password hashing off the async runtime, on a pool of its own.
//!
//! argon2id is meant to be slow: ~16 ms of CPU and 19 MiB per hash. Run on
//! the async threads it would stall every connection they serve; run on
//! tokio's blocking pool it competes with the async threads for the cores
//! on equal terms, and a login storm then delays unrelated requests by a
//! scheduler time slice at a time. So hashes run here: one OS thread per
//! core (more would only make each hash slower and leave a malloc arena of
//! hash buffers behind per extra thread), each at a lower scheduling
//! priority (nice 9 on Linux), so the OS runs the async threads first
//! whenever they have work, and hashing gets every cycle they leave. Jobs
//! queue in order; the threads start with the first job and end when the
//! pool is dropped.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of low-priority threads for CPU-heavy jobs, started on
/// the first job (a service whose authenticator never hashes starts none).
#[derive(Debug)]
pub(crate) struct HashPool {
    jobs: OnceLock<mpsc::Sender<Job>>,
    threads: usize,
}

impl HashPool {
    /// `threads` threads named `mesh-hash-N`.
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            jobs: OnceLock::new(),
            threads: threads.max(1),
        }
    }

    /// One thread per core.
    pub(crate) fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn start(threads: usize) -> mpsc::Sender<Job> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mesh-hash-{i}"))
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                // Fewer threads only means fewer hashes at once; with none
                // at all, `run` reports the error.
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        tx
    }

    /// Runs `f` on the pool and waits for its result without blocking the
    /// async thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .get_or_init(|| Self::start(self.threads))
            .send(job)
            .map_err(|_| Error::Internal("the password hashing threads are gone".into()))?;
        rx.await.map_err(|e| {
            Error::Internal(crate::Failure::caused_by(
                "a password hashing job failed",
                e,
            ))
        })
    }
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        // Hold the lock only to take a job, never while running it.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else {
            return; // The pool was dropped.
        };
        // A panicking job drops its result sender: the caller gets an
        // error, and this thread keeps serving.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Nice 9 on Linux (a quarter of thread-priority's 0–99 scale); the
/// equivalent elsewhere. Failing leaves the default priority: slower
/// unrelated requests during a login storm, nothing worse.
fn lower_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};
    let result = ThreadPriorityValue::try_from(25u8)
        .map_err(|e| format!("{e:?}"))
        .and_then(|v| {
            set_current_thread_priority(ThreadPriority::Crossplatform(v))
                .map_err(|e| format!("{e:?}"))
        });
    if let Err(e) = result {
        tracing::debug!(error = %e, "cannot lower the password hashing thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_threads_and_return_their_results() {
        let pool = HashPool::new(2);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .expect("ran");
        assert!(
            name.as_deref().is_some_and(|n| n.starts_with("mesh-hash-")),
            "{name:?}"
        );
        let results =
            futures_util::future::join_all((0..16u64).map(|i| pool.run(move || i * i))).await;
        let results: Vec<u64> = results.into_iter().map(|r| r.expect("ran")).collect();
        assert_eq!(results, (0..16u64).map(|i| i * i).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_pool_goes_on() {
        let pool = HashPool::new(1);
        let failed = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
        assert_eq!(pool.run(|| 7).await.expect("still serving"), 7);
    }

    /// The point of the pool: its threads yield the cores to the runtime.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_threads_run_at_a_lower_priority() {
        let pool = HashPool::new(1);
        let stat = pool
            .run(|| std::fs::read_to_string("/proc/thread-self/stat"))
            .await
            .expect("ran")
            .expect("/proc/thread-self/stat");
        // Field 19 is the nice value; the name (field 2) is in parentheses.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let nice: i32 = after_name
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("a nice value");
        assert!(nice > 0, "nice {nice}");
    }
}
