//! Locks on the data path that never turn one panic into a panic of every later request.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the data over if a holder panicked: every value behind these locks is
/// valid after any single update (maps, plans, identities), so a poisoned lock is no reason to
/// fail every later request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
