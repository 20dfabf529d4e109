//! How a worker stops: the signal every connection watches, and how the
//! drain ended.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

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
pub(super) async fn drained<C, T>(
    mut connection: std::pin::Pin<&mut C>,
    draining: &DrainSignal,
    started: impl Fn() -> bool,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> T
where
    C: std::future::Future<Output = T>,
{
    let notified = draining.notify.notified();
    tokio::pin!(notified);
    let mut registered = false;
    let mut shutdown = Some(shutdown);
    std::future::poll_fn(move |cx| {
        if shutdown.is_some() {
            if !registered {
                registered = true;
                let _ = notified.as_mut().poll(cx);
            }
            if draining.raised.load(Ordering::Acquire)
                && started()
                && let Some(shutdown) = shutdown.take()
            {
                shutdown(connection.as_mut());
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}
