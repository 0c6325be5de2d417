//! Locking that ignores poisoning: the one helper every crate of the workspace uses.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning. Callers keep their data valid at every point a panic
/// could leave a critical section, so a panicked holder leaves nothing worse than a value
/// that is still consistent.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
