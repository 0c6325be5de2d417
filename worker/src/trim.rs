//! Gives memory freed after a burst back to the system. glibc keeps freed heap memory in
//! its arenas (one per thread that allocated), so after an attack or a peak of slow
//! clients a worker's RSS stays near its peak although the memory is free. Every
//! [`EVERY`], when the arenas hold more than [`THRESHOLD`] free bytes, `malloc_trim(0)`
//! releases their free pages (Python's freed `malloc` memory included). Measured against
//! mimalloc and jemalloc in docs/ARCHITECTURE.md ("Memory returned").

use std::time::Duration;

/// How often the arenas are looked at.
pub const EVERY: Duration = Duration::from_secs(5);

/// Free bytes in the arenas worth a trim.
pub const THRESHOLD: usize = 8 << 20;

/// Trims now if the arenas hold more than [`THRESHOLD`] free bytes; returns whether it did.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_if_worth() -> bool {
    // SAFETY: mallinfo reads allocator statistics and has no preconditions; its int fields
    // wrap past 2 GiB, which the cast to u32 undoes for up to 4 GiB.
    #[allow(deprecated)]
    let free = unsafe { libc::mallinfo() }.fordblks as u32 as usize;
    if free < THRESHOLD {
        return false;
    }
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    true
}

/// Not glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_if_worth() -> bool {
    false
}

/// Looks every [`EVERY`], on a blocking thread (a trim walks the arenas), when `is_idle`
/// says no request is in flight. Both `mallinfo` and `malloc_trim` hold each arena's lock
/// while they walk it, so under load they stalled the I/O and Python threads' allocations
/// (futex waits of milliseconds seen with strace); memory freed under a steady load is
/// reused anyway, and the trim comes at the first quiet check after the load ends.
pub async fn run(is_idle: impl Fn() -> bool) {
    loop {
        tokio::time::sleep(EVERY).await;
        if !is_idle() {
            continue;
        }
        if let Ok(true) = tokio::task::spawn_blocking(trim_if_worth).await {
            tracing::debug!("returned free heap memory to the system (malloc_trim)");
        }
    }
}
