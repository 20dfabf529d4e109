//! The client connections a proxy serves, counted, and the handoff that
//! spreads them over the workers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One client connection counted, over all workers, until it is dropped:
/// against `limits.max_connections`, on the gauge the admin endpoint shows
/// as `affinity_client_connections_open` (one count for both, so the two
/// never disagree), and against its listener's `max_connections` on that
/// listener's `affinity_listener_connections_open`.
pub(super) struct Admitted {
    total: Gauge,
    listener: Gauge,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// `limits.max_connections` are open.
    Total,
    /// The listener's own `max_connections` are open.
    Listener,
}

impl Refused {
    /// Its `event` label in `affinity_listener_events_total`.
    pub(super) fn event(self) -> &'static str {
        match self {
            Refused::Total => "refused_max_connections",
            Refused::Listener => "refused_listener_max_connections",
        }
    }
}

/// Takes one of `max` places counted on `gauge`, if one is free.
fn take_place(gauge: &Gauge, max: u32) -> bool {
    let max = i64::from(max);
    gauge
        .inner()
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Admitted {
    /// Counts a new connection on `total` and `listener` if fewer than
    /// `max` are open over all listeners and fewer than `listener_max`
    /// (`None`: no limit of its own) on its listener.
    pub(super) fn try_admit(
        total: &Gauge,
        max: u32,
        listener: &Gauge,
        listener_max: Option<u32>,
    ) -> Result<Admitted, Refused> {
        if !take_place(total, max) {
            return Err(Refused::Total);
        }
        if !take_place(listener, listener_max.unwrap_or(u32::MAX)) {
            total.dec();
            return Err(Refused::Listener);
        }
        Ok(Admitted {
            total: total.clone(),
            listener: listener.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.total.dec();
        self.listener.dec();
    }
}

/// One client connection counted as one a worker serves, until it is
/// dropped.
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection as a worker accepted it: the stream, the client's
/// address, its place in `limits.max_connections` and the listener (its
/// place among the running listeners) that accepted it.
pub(super) type Accepted = (TcpStream, SocketAddr, Admitted, usize);

/// The receiving end of a worker's handoff channel: connections, each
/// counted for that worker.
pub(super) type Handed<C> = mpsc::UnboundedReceiver<(C, OpenConnection)>;

/// Every worker's count of the client connections it serves, and the way to
/// hand it one (`C`: an [`Accepted`] connection; anything in tests).
pub(super) struct Workers<C> {
    serving: Vec<Arc<AtomicUsize>>,
    handoff: Vec<mpsc::UnboundedSender<(C, OpenConnection)>>,
}

impl<C> Workers<C> {
    /// Workers for `n` accept loops, and the receiving end of each one's
    /// handoff channel.
    pub(super) fn new(n: usize) -> (Arc<Workers<C>>, Vec<Handed<C>>) {
        let (handoff, receivers) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let serving = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        (Arc::new(Workers { serving, handoff }), receivers)
    }

    /// Sends a connection accepted by worker `me` to the worker serving the
    /// fewest connections if that one serves clearly fewer than `me` (see
    /// [`imbalanced`]) (`None`), or gives it back for `me` to serve, counted
    /// as `me`'s. A connection counts for the worker it goes to from this
    /// moment, so a burst of accepts spreads.
    pub(super) fn hand_over(&self, me: usize, connection: C) -> Option<(C, OpenConnection)> {
        let load = |i: usize| self.serving[i].load(Ordering::Relaxed);
        let least = (0..self.serving.len())
            .min_by_key(|&i| (load(i), i != me))
            .unwrap_or(me);
        if least != me && imbalanced(load(me), load(least)) {
            match self.handoff[least].send((connection, self.serving(least))) {
                Ok(()) => return None,
                // That worker has stopped: served here after all.
                Err(mpsc::error::SendError((connection, _))) => {
                    return Some((connection, self.serving(me)));
                }
            }
        }
        Some((connection, self.serving(me)))
    }

    /// Counts a connection for worker `i` until the guard is dropped.
    fn serving(&self, i: usize) -> OpenConnection {
        let counter = self.serving[i].clone();
        counter.fetch_add(1, Ordering::Relaxed);
        OpenConnection(counter)
    }
}

/// Whether a worker serving `mine` connections should hand a new one to
/// one serving `least`: when it serves more by over an eighth of that (and
/// by at least two). The kernel's spread of new connections is random, so
/// counts that differ by a little differ all the time; handing a connection
/// over costs two `epoll_ctl` calls and a wake-up of the other thread, which
/// short connections would pay at almost every accept for no lasting gain.
/// Long ones still end up within an eighth of each other.
fn imbalanced(mine: usize, least: usize) -> bool {
    mine > least + 1 + least / 8
}

/// Moves a connection that another worker accepted onto this thread's
/// runtime. A socket stays registered with the I/O driver of the runtime that
/// accepted it: left there, every readiness event of the connection would be
/// seen by that worker's thread and passed over to this one (an `eventfd`
/// write and a wake-up of this thread each time), and the connection would
/// stall whenever that thread is busy.
pub(super) fn rehome(stream: TcpStream) -> io::Result<TcpStream> {
    TcpStream::from_std(stream.into_std()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// Feeds `accepts` (the worker the kernel gave each new connection) to
    /// `Workers::hand_over` and returns, per worker, the connections it
    /// ended up serving, and the guards that keep them counted.
    fn spread(workers: usize, accepts: &[usize]) -> (Vec<Vec<u32>>, Vec<OpenConnection>) {
        let (shared, mut handed) = Workers::<u32>::new(workers);
        let mut served = vec![Vec::new(); workers];
        let mut guards = Vec::new();
        for (id, &me) in accepts.iter().enumerate() {
            let id = u32::try_from(id).unwrap();
            if let Some((kept, guard)) = shared.hand_over(me, id) {
                served[me].push(kept);
                guards.push(guard);
            }
        }
        for (worker, receiver) in handed.iter_mut().enumerate() {
            while let Ok((id, guard)) = receiver.try_recv() {
                served[worker].push(id);
                guards.push(guard);
            }
        }
        (served, guards)
    }

    /// Worker A accepts a connection and hands it to worker B, then A's
    /// thread stays busy (its runtime's I/O driver does not turn). B reads
    /// and answers on the connection all the same: it was moved onto B's
    /// runtime, and nothing of it waits on A.
    #[test]
    fn a_handed_connection_does_not_wait_on_the_worker_that_accepted_it() {
        use std::io::{Read, Write};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let current_thread = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (hand, handed) = std::sync::mpsc::channel::<TcpStream>();
        let (release, busy) = std::sync::mpsc::channel::<()>();
        let a = std::thread::spawn(move || {
            current_thread().block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                hand.send(stream).unwrap();
                // Busy until the test ends: this runtime polls nothing.
                let _ = busy.recv_timeout(Duration::from_secs(20));
            });
        });
        let b = std::thread::spawn(move || {
            current_thread().block_on(async move {
                let stream = handed.recv_timeout(Duration::from_secs(5)).unwrap();
                let mut stream = rehome(stream).unwrap();
                let mut requests = Vec::new();
                // Twice: tokio takes a new connection as ready at first, so
                // the second read is the one that waits on a driver's event.
                for _ in 0..2 {
                    let mut request = [0u8; 4];
                    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut request))
                        .await
                        .expect("the handed connection is read within 2 s")
                        .unwrap();
                    stream.write_all(b"pong").await.unwrap();
                    requests.push(request);
                }
                requests
            })
        });
        let mut client = std::net::TcpStream::connect(address).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut answer = [0u8; 4];
            if client.write_all(b"ping").is_err() || client.read_exact(&mut answer).is_err() {
                break;
            }
            answers.push(answer);
        }
        let requests = b.join();
        release.send(()).unwrap();
        a.join().unwrap();
        assert_eq!(requests.expect("worker B answers"), [*b"ping"; 2]);
        assert_eq!(answers, [*b"pong"; 2]);
    }

    #[test]
    fn a_burst_accepted_by_one_worker_spreads_over_all_within_an_eighth() {
        // Kept while it serves at most one more than the other (plus an
        // eighth of that): 1, 2, then every other one goes over.
        let (served, _guards) = spread(2, &[0; 10]);
        assert_eq!((served[0].len(), served[1].len()), (6, 4));
        let (served, _guards) = spread(4, &[2; 13]);
        let counts: Vec<usize> = served.iter().map(Vec::len).collect();
        assert_eq!(counts.iter().sum::<usize>(), 13);
        assert!(counts.iter().all(|&n| (2..=5).contains(&n)), "{counts:?}");
        for workers in [2, 3, 8] {
            let (served, _guards) = spread(workers, &vec![1; 5000]);
            let least = served.iter().map(Vec::len).min().unwrap();
            let most = served.iter().map(Vec::len).max().unwrap();
            assert!(
                most <= least + 2 + least / 8,
                "{workers} workers: {least}..{most}"
            );
            assert!(
                least >= 5000 / workers * 7 / 8,
                "{workers} workers: {least}"
            );
        }
    }

    #[test]
    fn counts_that_differ_by_little_hand_nothing_over() {
        assert!(!imbalanced(1, 0));
        assert!(imbalanced(2, 0));
        assert!(!imbalanced(19, 16));
        assert!(imbalanced(20, 16));
        assert!(!imbalanced(1126, 1000));
        assert!(imbalanced(1127, 1000));
    }

    #[test]
    fn a_balanced_accept_pattern_keeps_every_connection_where_it_landed() {
        let (served, _guards) = spread(2, &[0, 1, 0, 1, 1, 0]);
        assert_eq!(served[0], [0, 2, 5]);
        assert_eq!(served[1], [1, 3, 4]);
    }

    #[test]
    fn a_closed_connection_no_longer_counts_and_a_stopped_worker_gets_none() {
        let (shared, mut handed) = Workers::<u32>::new(2);
        let (_, first) = shared.hand_over(0, 1).unwrap();
        drop(first);
        // Both idle again: kept where accepted.
        let held = shared.hand_over(0, 2);
        assert_eq!(held.as_ref().map(|(id, _)| *id), Some(2));
        // Worker 1 stopped (its receiver gone): worker 0 keeps what it
        // would have handed over, and counts it.
        drop(handed.pop());
        let kept = shared.hand_over(0, 3);
        assert_eq!(kept.as_ref().map(|(id, _)| *id), Some(3));
        assert_eq!(shared.serving[0].load(Ordering::Relaxed), 2);
        assert_eq!(shared.serving[1].load(Ordering::Relaxed), 0);
    }
}

#[cfg(test)]
mod admitted_tests {
    use super::*;

    #[test]
    fn admission_stops_at_the_limit_and_a_closed_connection_makes_room() {
        let (open, listener) = (Gauge::default(), Gauge::default());
        let admit = || Admitted::try_admit(&open, 2, &listener, None);
        let first = admit();
        let second = admit();
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(admit().err(), Some(Refused::Total));
        assert_eq!((open.get(), listener.get()), (2, 2));
        drop(first);
        assert_eq!((open.get(), listener.get()), (1, 1));
        let third = admit();
        assert!(third.is_ok());
        drop((second, third));
        assert_eq!((open.get(), listener.get()), (0, 0));
    }

    #[test]
    fn a_listener_limit_refuses_without_taking_a_place_over_all_listeners() {
        let open = Gauge::default();
        let (web, redis) = (Gauge::default(), Gauge::default());
        let on_redis = Admitted::try_admit(&open, 10, &redis, Some(1)).ok();
        assert!(on_redis.is_some());
        let refused = Admitted::try_admit(&open, 10, &redis, Some(1));
        assert_eq!(refused.err(), Some(Refused::Listener));
        assert_eq!((open.get(), redis.get()), (1, 1));
        // Another listener still has room.
        let on_web = Admitted::try_admit(&open, 10, &web, Some(1));
        assert!(on_web.is_ok());
        assert_eq!((open.get(), web.get()), (2, 1));
        drop(on_redis);
        assert!(Admitted::try_admit(&open, 10, &redis, Some(1)).is_ok());
    }
}
