//! What one request carries from attempt to attempt: the backends it tried,
//! how many failed, whether it was sent once more to the same backend, and
//! the decision that follows a failed attempt.
//!
//! Pure: the request path asks it, with plain values, what to do next. The
//! rules (see [Failures](crate::proxy#failures)):
//! * a backend already tried (failed, or skipped because it was full) is
//!   never tried again for the same request;
//! * only failures use up `upstream.retries`; a full backend does not;
//! * an idempotent request that a backend broke off before answering goes
//!   once more to the same backend, on another connection, before anything
//!   else applies;
//! * a connect failure is retried whatever the method (the request never
//!   reached the backend); any other failure only for an idempotent method;
//!   either only if the body can still be taken back (it was never read);
//! * the client's own body failing ends the request, whoever it was sent to.

use crate::proxy::failure::Failure;
use crate::proxy::request_body::BodyTooLarge;

/// The retry state of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// `upstream.retries`.
    retries: usize,
    /// Whether the request means the same sent once or twice.
    idempotent: bool,
    /// Backends not to try again: those that failed, and those skipped
    /// because they were full.
    tried: Vec<usize>,
    failed: usize,
    full: usize,
    /// The request was sent once more to a backend that broke it off.
    resent: bool,
    /// The backend to send it to once more, next.
    again: Option<usize>,
}

/// What may follow a failure of the attempt about to be made. Fixed before
/// the attempt, since the request is kept for another one (its headers
/// copied) only when something may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// A failure could be retried on another backend.
    pub may_retry: bool,
    /// A backend breaking the exchange off could be answered by sending the
    /// request once more to it.
    pub may_resend: bool,
}

impl Plan {
    /// Whether anything may follow a failure, so the request must be kept.
    pub fn keeps_request(self) -> bool {
        self.may_retry || self.may_resend
    }
}

/// What to do after a failed attempt. `B` is the request body, taken back.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<B> {
    /// Send the request once more to the same backend, on another
    /// connection.
    Resend(B),
    /// Send it to the next backend.
    Retry(B),
    /// The backend's failure is the answer: nothing more is tried.
    GiveUp,
    /// Answer the client for another reason: nothing more is tried.
    Stop(Stop),
}

/// Why a request stops without a backend's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Nothing was tried: no backend is routable.
    NoHealthyBackend,
    /// Every backend the request could go to was full; none failed.
    AllFull {
        /// Backends skipped because they were full.
        full: usize,
    },
    /// Every routable backend was tried and failed (or was full).
    AllFailed {
        /// Backends tried.
        tried: usize,
    },
    /// The request body grew past its limit.
    BodyTooLarge(BodyTooLarge),
    /// The client's request body failed.
    BadBody,
}

impl RetryState {
    /// A request with `retries` retries, `idempotent` or not, before its
    /// first attempt.
    pub fn new(retries: u32, idempotent: bool) -> RetryState {
        RetryState {
            retries: usize::try_from(retries).unwrap_or(usize::MAX),
            idempotent,
            tried: Vec::new(),
            failed: 0,
            full: 0,
            resent: false,
            again: None,
        }
    }

    /// The backend to try next: the one to send the request to once more,
    /// or else `pick`'s choice among the backends not tried yet.
    pub fn next(&mut self, pick: impl FnOnce(&[usize]) -> Option<usize>) -> Option<usize> {
        match self.again.take() {
            Some(backend) => Some(backend),
            None => pick(&self.tried),
        }
    }

    /// Whether no backend has been tried (or skipped) yet: the next attempt
    /// is the key's first.
    pub fn is_first(&self) -> bool {
        self.tried.is_empty()
    }

    /// Skips `backend`, which is at its limit of requests in flight: it is
    /// not tried again, and no retry is used up.
    pub fn skip_full(&mut self, backend: usize) {
        self.tried.push(backend);
        self.full += 1;
    }

    /// Why the request stops when [`next`](Self::next) found no backend.
    pub fn exhausted(&self) -> Stop {
        if self.tried.is_empty() {
            Stop::NoHealthyBackend
        } else if self.failed == 0 {
            Stop::AllFull { full: self.full }
        } else {
            Stop::AllFailed {
                tried: self.tried.len(),
            }
        }
    }

    /// What may follow a failure of the next attempt, with `routable`
    /// backends in the snapshot.
    pub fn plan(&self, routable: usize) -> Plan {
        Plan {
            may_retry: self.failed < self.retries && self.tried.len() + 1 < routable,
            may_resend: !self.resent && self.idempotent,
        }
    }

    /// Records that the attempt at `backend`, made under `plan`, failed as
    /// `failure`, and decides what follows. `take_back` gives the request
    /// body back if it was never read; it is called at most once, and only
    /// when the body would be sent again.
    pub fn after_failure<B>(
        &mut self,
        plan: Plan,
        backend: usize,
        failure: Failure,
        routable: usize,
        take_back: impl FnOnce() -> Option<B>,
    ) -> Step<B> {
        let mut take_back = Some(take_back);
        let mut body = || take_back.take().and_then(|take| take());
        if plan.may_resend
            && failure == Failure::BrokenOff
            && let Some(body) = body()
        {
            self.resent = true;
            self.again = Some(backend);
            return Step::Resend(body);
        }
        match failure {
            Failure::BodyTooLarge(too_large) => return Step::Stop(Stop::BodyTooLarge(too_large)),
            Failure::ClientBody => return Step::Stop(Stop::BadBody),
            Failure::Connect | Failure::BrokenOff | Failure::Other => {}
        }
        self.tried.push(backend);
        self.failed += 1;
        let connect = failure == Failure::Connect;
        if connect && self.tried.len() >= routable {
            return Step::Stop(Stop::AllFailed {
                tried: self.tried.len(),
            });
        }
        // Past a connect failure the backend may have acted on the request:
        // only an idempotent one is sent again, and only if its body was
        // never read (so, in practice, one without a body).
        if plan.may_retry
            && (connect || self.idempotent)
            && let Some(body) = body()
        {
            return Step::Retry(body);
        }
        Step::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that can always be taken back.
    fn back() -> Option<&'static str> {
        Some("body")
    }

    /// A body that was read and cannot be taken back.
    fn gone() -> Option<&'static str> {
        None
    }

    /// Picks the lowest backend of `0..n` not tried.
    fn lowest(n: usize) -> impl FnOnce(&[usize]) -> Option<usize> {
        move |tried| (0..n).find(|b| !tried.contains(b))
    }

    #[test]
    fn a_fresh_request_may_retry_and_resend_and_its_first_pick_is_the_first() {
        let mut state = RetryState::new(1, true);
        assert!(state.is_first());
        assert_eq!(
            state.plan(3),
            Plan {
                may_retry: true,
                may_resend: true
            }
        );
        assert_eq!(state.next(lowest(3)), Some(0));
    }

    #[test]
    fn a_connect_failure_is_retried_on_an_untried_backend_whatever_the_method() {
        let mut state = RetryState::new(2, false);
        let plan = state.plan(3);
        assert!(plan.may_retry && !plan.may_resend);
        assert_eq!(
            state.after_failure(plan, 0, Failure::Connect, 3, back),
            Step::Retry("body")
        );
        assert!(!state.is_first());
        assert_eq!(state.next(lowest(3)), Some(1));
    }

    #[test]
    fn retries_are_used_up_by_failures_and_then_the_failure_stops_the_request() {
        let mut state = RetryState::new(1, true);
        let plan = state.plan(5);
        assert_eq!(
            state.after_failure(plan, 0, Failure::Connect, 5, back),
            Step::Retry("body")
        );
        let plan = state.plan(5);
        assert!(!plan.may_retry, "one retry, used");
        assert_eq!(
            state.after_failure(plan, 1, Failure::Connect, 5, back),
            Step::GiveUp
        );
        let plan = state.plan(5);
        assert_eq!(
            state.after_failure(plan, 2, Failure::Other, 5, back),
            Step::GiveUp
        );
    }

    #[test]
    fn no_retry_is_planned_when_no_untried_backend_would_be_left() {
        let mut state = RetryState::new(5, true);
        assert!(!state.plan(1).may_retry, "a single backend");
        let plan = state.plan(2);
        assert!(plan.may_retry);
        assert_eq!(
            state.after_failure(plan, 0, Failure::Other, 2, back),
            Step::Retry("body")
        );
        assert!(!state.plan(2).may_retry, "the only other backend is next");
    }

    #[test]
    fn when_every_routable_backend_refused_the_connection_all_failed() {
        let mut state = RetryState::new(5, true);
        let plan = state.plan(2);
        assert_eq!(
            state.after_failure(plan, 0, Failure::Connect, 2, back),
            Step::Retry("body")
        );
        let plan = state.plan(2);
        assert_eq!(
            state.after_failure(plan, 1, Failure::Connect, 2, back),
            Step::Stop(Stop::AllFailed { tried: 2 })
        );
    }

    #[test]
    fn a_non_idempotent_request_is_not_sent_again_after_the_backend_accepted_it() {
        for failure in [Failure::BrokenOff, Failure::Other] {
            let mut state = RetryState::new(3, false);
            let plan = state.plan(3);
            assert_eq!(
                state.after_failure(plan, 0, failure, 3, back),
                Step::GiveUp,
                "{failure:?}"
            );
        }
    }

    #[test]
    fn an_idempotent_request_broken_off_goes_once_more_to_the_same_backend() {
        let mut state = RetryState::new(0, true);
        let plan = state.plan(3);
        assert_eq!(
            state.after_failure(plan, 2, Failure::BrokenOff, 3, back),
            Step::Resend("body")
        );
        assert!(state.is_first(), "a resend tries nothing new");
        assert_eq!(state.next(|_| panic!("the resend comes first")), Some(2));
        let plan = state.plan(3);
        assert!(!plan.may_resend, "only once");
        assert_eq!(
            state.after_failure(plan, 2, Failure::BrokenOff, 3, back),
            Step::GiveUp,
            "no retries configured"
        );
    }

    #[test]
    fn a_body_that_was_read_is_never_sent_again() {
        let mut state = RetryState::new(3, true);
        let plan = state.plan(3);
        assert_eq!(
            state.after_failure(plan, 0, Failure::BrokenOff, 3, gone),
            Step::GiveUp
        );
        let mut state = RetryState::new(3, true);
        let plan = state.plan(3);
        assert_eq!(
            state.after_failure(plan, 0, Failure::Connect, 3, gone),
            Step::GiveUp
        );
    }

    #[test]
    fn the_body_is_taken_back_at_most_once() {
        let mut calls = 0;
        let mut state = RetryState::new(3, true);
        let plan = state.plan(3);
        let step = state.after_failure(plan, 0, Failure::BrokenOff, 3, || {
            calls += 1;
            None::<&str>
        });
        assert_eq!(step, Step::GiveUp);
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_clients_body_failing_stops_the_request_without_counting_a_failure() {
        let too_large = BodyTooLarge { limit: 10 };
        for (failure, stop) in [
            (
                Failure::BodyTooLarge(too_large),
                Stop::BodyTooLarge(too_large),
            ),
            (Failure::ClientBody, Stop::BadBody),
        ] {
            let mut state = RetryState::new(3, true);
            let plan = state.plan(3);
            assert_eq!(
                state.after_failure(plan, 0, failure, 3, back),
                Step::Stop(stop)
            );
            assert!(state.is_first(), "nothing counted as tried");
        }
    }

    #[test]
    fn full_backends_are_skipped_without_using_up_retries() {
        let mut state = RetryState::new(0, true);
        state.skip_full(0);
        state.skip_full(1);
        assert_eq!(state.next(lowest(3)), Some(2));
        assert_eq!(state.exhausted(), Stop::AllFull { full: 2 });
    }

    #[test]
    fn with_nothing_left_the_stop_says_why() {
        assert_eq!(RetryState::new(1, true).exhausted(), Stop::NoHealthyBackend);
        let mut state = RetryState::new(1, true);
        let plan = state.plan(3);
        let _ = state.after_failure(plan, 0, Failure::Other, 3, back);
        state.skip_full(1);
        assert_eq!(state.exhausted(), Stop::AllFailed { tried: 2 });
    }

    #[test]
    fn a_backend_tried_once_is_never_picked_again() {
        let mut state = RetryState::new(4, true);
        let mut order = Vec::new();
        while let Some(b) = state.next(lowest(4)) {
            order.push(b);
            let plan = state.plan(4);
            if !matches!(
                state.after_failure(plan, b, Failure::Other, 4, back),
                Step::Retry(_)
            ) {
                break;
            }
        }
        assert_eq!(order, [0, 1, 2, 3]);
    }
}
