//! Interim (1xx) responses on an HTTP/2 server stream, ahead of its final response.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;

use atomic_waker::AtomicWaker;
use http::{Response, StatusCode};

/// Most interim responses one stream sends in its lifetime. HEADERS frames are not flow
/// controlled, so h2 buffers whatever it is given while the peer does not read: the
/// bound is on what is given, not on what waits.
const MAX_PER_STREAM: usize = 16;

/// Sends interim responses, such as `103 Early Hints` (RFC 8297), on an HTTP/2 server
/// stream before its final response.
///
/// hyper's HTTP/2 server puts one in the extensions of every request it hands to the
/// service (but not an extended CONNECT). Responses go out in the order sent, each as
/// its own HEADERS frame, before the final response, so the service must send them
/// before it returns the response. After that, once the stream is gone, or after 16 on
/// one stream, `send` refuses.
///
/// # Example
///
/// ```rust,ignore
/// if let Some(hints) = req.extensions().get::<hyper::ext::InformationalSender>() {
///     let mut early = hyper::Response::new(());
///     *early.status_mut() = hyper::StatusCode::from_u16(103).unwrap();
///     early.headers_mut().insert("link", "</app.css>; rel=preload; as=style".parse().unwrap());
///     let _ = hints.send(early);
/// }
/// ```
#[derive(Clone)]
pub struct InformationalSender {
    shared: Arc<Shared>,
}

impl fmt::Debug for InformationalSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformationalSender").finish()
    }
}

impl InformationalSender {
    /// Queues `response` for the stream and wakes its task. The response is handed back
    /// when its status is not 1xx (or is 101, which HTTP/2 forbids), when the final
    /// response has already been taken or the stream is gone, or when this stream
    /// already sent 16.
    pub fn send(&self, response: Response<()>) -> Result<(), Response<()>> {
        let status = response.status();
        if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(response);
        }
        let mut queue = self.shared.lock();
        if queue.closed || queue.sent >= MAX_PER_STREAM {
            return Err(response);
        }
        queue.sent += 1;
        queue.pending.push_back(response);
        self.shared.queued.store(true, Ordering::Release);
        drop(queue);
        self.shared.waker.wake();
        Ok(())
    }
}

/// The stream's end: drained by the stream's task while the service runs.
pub(crate) struct InformationalReceiver {
    shared: Arc<Shared>,
}

impl InformationalReceiver {
    /// A stream's sender (for the request's extensions) and receiver.
    pub(crate) fn pair() -> (InformationalSender, InformationalReceiver) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                sent: 0,
                closed: false,
            }),
            queued: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        (
            InformationalSender {
                shared: shared.clone(),
            },
            InformationalReceiver { shared },
        )
    }

    /// Takes what is waiting; the next `send` wakes the task of `cx`. Without a waiting
    /// response this is an atomic load, not a lock.
    pub(crate) fn take(&self, cx: &mut Context<'_>) -> VecDeque<Response<()>> {
        self.shared.waker.register(cx.waker());
        if !self.shared.queued.load(Ordering::Acquire) {
            return VecDeque::new();
        }
        let mut queue = self.shared.lock();
        self.shared.queued.store(false, Ordering::Release);
        std::mem::take(&mut queue.pending)
    }

    /// Takes what is waiting, and refuses every later `send`: the final response is next.
    pub(crate) fn close(&self) -> VecDeque<Response<()>> {
        let mut queue = self.shared.lock();
        queue.closed = true;
        // A sender that outlives the stream must not keep its task alive.
        self.shared.waker.take();
        std::mem::take(&mut queue.pending)
    }
}

impl Drop for InformationalReceiver {
    fn drop(&mut self) {
        drop(self.close());
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// `queue.pending` may hold responses (set under the lock by `send`).
    queued: AtomicBool,
    waker: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a consistent queue.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Queue {
    pending: VecDeque<Response<()>>,
    /// Responses accepted so far on this stream.
    sent: usize,
    /// The final response was taken, or the stream is gone.
    closed: bool,
}
