//! How a worker stops: the signal every connection watches, and how the
//! drain ended.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished within the drain timeout.
    Complete,
    /// The drain timeout passed; the remaining connections were cut off.
    TimedOut,
}

/// The start of the drain, as every connection of a worker watches it.
#[derive(Default)]
pub(super) struct DrainSignal {
    raised: AtomicBool,
    notify: Notify,
}

impl DrainSignal {
    /// Starts the drain: wakes every connection.
    pub(super) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Returns once the drain has started.
    pub(super) async fn started(&self) {
        // Created before the check: a raise in between still wakes it.
        let notified = self.notify.notified();
        if !self.raised.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// Runs `connection` to its end; when the drain starts, asks it (`shutdown`)
/// to finish its current request and close, but not before `started` says
/// it has begun its first request: asked earlier, hyper would close it
/// without reading the request a client had already sent, and the kernel
/// would answer that request with a reset.
///
/// Polled on every wake-up of the connection, so this costs one atomic load
/// then: the drain's wake-up is registered on the first poll only (the
/// connection's task, and so its waker, stays the same).
pub(super) fn drained<'a, C, S, F>(
    connection: C,
    draining: &'a DrainSignal,
    started: S,
    shutdown: F,
) -> Drained<'a, C, S, F>
where
    C: Future,
    S: Fn() -> bool,
    F: FnOnce(Pin<&mut C>),
{
    Drained {
        connection,
        notified: draining.notify.notified(),
        draining,
        registered: false,
        started,
        shutdown: Some(shutdown),
    }
}

pin_project_lite::pin_project! {
    /// The future [`drained`] returns. A named future rather than an
    /// `async fn`: it holds the connection in place, once (an `async` block
    /// given the connection would hold it as captured and again as pinned,
    /// and it is most of an idle connection's task).
    pub(super) struct Drained<'a, C, S, F> {
        #[pin]
        connection: C,
        #[pin]
        notified: Notified<'a>,
        draining: &'a DrainSignal,
        registered: bool,
        started: S,
        shutdown: Option<F>,
    }
}

impl<C, S, F> Future for Drained<'_, C, S, F>
where
    C: Future,
    S: Fn() -> bool,
    F: FnOnce(Pin<&mut C>),
{
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if this.shutdown.is_some() {
            if !*this.registered {
                *this.registered = true;
                let _ = this.notified.as_mut().poll(cx);
            }
            if this.draining.raised.load(Ordering::Acquire)
                && (this.started)()
                && let Some(shutdown) = this.shutdown.take()
            {
                shutdown(this.connection.as_mut());
            }
        }
        this.connection.poll(cx)
    }
}
