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
/// never disagree).
pub(super) struct Admitted(Gauge);

impl Admitted {
    /// Counts a new connection on `open` if fewer than `max` are open.
    pub(super) fn try_admit(open: &Gauge, max: u32) -> Option<Admitted> {
        let max = i64::from(max);
        open.inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(open.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.dec();
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
    /// fewest connections if that is another one (`None`), or gives it back
    /// for `me` to serve, counted as `me`'s. A connection counts for the
    /// worker it goes to from this moment, so a burst of accepts spreads.
    pub(super) fn hand_over(&self, me: usize, connection: C) -> Option<(C, OpenConnection)> {
        let load = |i: usize| self.serving[i].load(Ordering::Relaxed);
        let least = (0..self.serving.len())
            .min_by_key(|&i| (load(i), i != me))
            .unwrap_or(me);
        if least != me && load(least) < load(me) {
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
    fn a_burst_accepted_by_one_worker_spreads_evenly_over_all() {
        let (served, _guards) = spread(2, &[0; 10]);
        assert_eq!(served[0].len(), 5);
        assert_eq!(served[1].len(), 5);
        let (served, _guards) = spread(4, &[2; 13]);
        let counts: Vec<usize> = served.iter().map(Vec::len).collect();
        assert_eq!(counts.iter().sum::<usize>(), 13);
        assert!(counts.iter().all(|&n| n == 3 || n == 4), "{counts:?}");
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
        let open = Gauge::default();
        let first = Admitted::try_admit(&open, 2);
        let second = Admitted::try_admit(&open, 2);
        assert!(first.is_some() && second.is_some());
        assert!(Admitted::try_admit(&open, 2).is_none());
        assert_eq!(open.get(), 2);
        drop(first);
        assert_eq!(open.get(), 1);
        let third = Admitted::try_admit(&open, 2);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(open.get(), 0);
    }
}
