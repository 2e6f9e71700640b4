//! The memory budget of the result chunks being filtered: a process-wide bound on the bytes
//! they hold at once, whatever the number of agents and of the chunks each fetches in
//! parallel (see [`crate::chunks`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A process-wide bound on the bytes held by the result chunks being filtered at once.
/// Cheap to clone; reservations are served in order.
#[derive(Debug, Clone)]
pub struct ChunkBudget {
    permits: Arc<Semaphore>,
    /// The whole budget, in KiB.
    total_kib: u32,
}

impl ChunkBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib =
            (bytes >> 10).clamp(1, (Semaphore::MAX_PERMITS as u64).min(u32::MAX as u64)) as u32;
        ChunkBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits until `bytes` fit beside what the other chunks hold (a reservation bigger than
    /// the whole budget waits for all of it) and holds them until the reservation is dropped.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let kib = bytes.div_ceil(1024).clamp(1, u64::from(self.total_kib)) as u32;
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the chunk budget is never closed");
        Reservation { _permit: permit }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * 1024
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total_kib) * 1024
    }
}

/// A chunk's share of the [`ChunkBudget`], released when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_an_oversized_one_runs_alone() {
        let budget = ChunkBudget::new(4 << 20);
        assert_eq!(budget.total(), 4 << 20);
        let a = budget.reserve(1 << 20).await;
        let b = budget.reserve(2 << 20).await;
        assert_eq!(budget.available(), 1 << 20);
        // 2 MiB do not fit beside 3: the reservation waits until one is released.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(2 << 20).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(b);
        let c = waiting.await.unwrap();
        assert_eq!(budget.available(), 1 << 20);
        drop((a, c));
        // Bigger than the whole budget: it takes all of it, so nothing else runs beside it.
        let big = budget.reserve(64 << 20).await;
        assert_eq!(budget.available(), 0);
        let small = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(1).await })
        };
        tokio::task::yield_now().await;
        assert!(!small.is_finished());
        drop(big);
        drop(small.await.unwrap());
        assert_eq!(budget.available(), 4 << 20);
    }
}
