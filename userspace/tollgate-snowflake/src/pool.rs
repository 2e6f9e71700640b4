//! A bounded pool for the CPU-heavy work of the data path — parsing, masking and re-encoding
//! results — off the async runtime's threads, so that one big result cannot stall the other
//! agents' exchanges. At most `threads` jobs run at once; the others wait their turn without
//! holding a runtime thread.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Why a job did not produce its result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The job panicked (a bug; the result is withheld, fail closed).
    #[error(
        "the result rewrite failed inside Tollgate (a worker panicked); the result was withheld"
    )]
    Panicked,
    /// The pool was shut down.
    #[error("Tollgate is shutting down")]
    Closed,
}

/// A bounded set of blocking workers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlockingPool {
    permits: Arc<Semaphore>,
    threads: usize,
}

impl BlockingPool {
    /// A pool running at most `threads` jobs at once (`0`: one per CPU).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        BlockingPool {
            permits: Arc::new(Semaphore::new(threads)),
            threads,
        }
    }

    /// How many jobs run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on a blocking thread once a slot is free.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| {
            if e.is_panic() {
                PoolError::Panicked
            } else {
                PoolError::Closed
            }
        })
    }
}

/// Runs `job` on the calling thread, a panic turned into [`PoolError::Panicked`] as on the
/// pool: for jobs so small that the hand-off to a blocking thread costs more than they do.
pub fn run_here<T, F>(job: F) -> Result<T, PoolError>
where
    F: FnOnce() -> T,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).map_err(|_| PoolError::Panicked)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_jobs_than_threads_and_panics_are_errors() {
        let pool = BlockingPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // Two jobs meet at the barrier (both run at once); the rest follow.
        let barrier = Arc::new(Barrier::new(2));
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (pool, running, peak, barrier) =
                    (pool.clone(), running.clone(), peak.clone(), barrier.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        if i < 2 {
                            barrier.wait();
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        let r = pool.run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(r, Err(PoolError::Panicked)));
        // The slot of the panicked job is free again.
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
        assert!(matches!(
            run_here(|| -> u8 { panic!("boom") }),
            Err(PoolError::Panicked)
        ));
        assert_eq!(run_here(|| 8).unwrap(), 8);
    }
}
