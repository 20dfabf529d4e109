//! A [`Load`] for tests: per-backend figures in atomics, set by the test.

use std::sync::atomic::{AtomicU64, Ordering};

use super::load::Load;

/// Stands for "no EWMA sample yet".
const NO_SAMPLE: u64 = u64::MAX;

/// Load figures for `n` backends, all idle and unmeasured until set.
pub(crate) struct TestLoad {
    in_flight: Vec<AtomicU64>,
    ewma_ns: Vec<AtomicU64>,
}

impl TestLoad {
    pub(crate) fn new(n: usize) -> Self {
        TestLoad {
            in_flight: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ewma_ns: (0..n).map(|_| AtomicU64::new(NO_SAMPLE)).collect(),
        }
    }

    pub(crate) fn set_in_flight(&self, backend: usize, requests: u64) {
        self.in_flight[backend].store(requests, Ordering::Relaxed);
    }

    pub(crate) fn set_ewma(&self, backend: usize, ewma_ns: Option<u64>) {
        self.ewma_ns[backend].store(ewma_ns.unwrap_or(NO_SAMPLE), Ordering::Relaxed);
    }
}

impl Load for TestLoad {
    fn in_flight(&self, backend: usize) -> u64 {
        self.in_flight[backend].load(Ordering::Relaxed)
    }

    fn latency_ewma_ns(&self, backend: usize) -> Option<u64> {
        match self.ewma_ns[backend].load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            ns => Some(ns),
        }
    }
}
