//! Unit tests of the adaptive concurrency controller, against a simulated
//! endpoint with a fixed capacity.

use super::*;

const FLOOR: Duration = Duration::from_secs(1);
const CEILING: Duration = Duration::from_secs(10);

/// An endpoint that serves `capacity` requests at a time, each in
/// `service` time, and queues the rest (first come, first served), like a
/// server whose worker pool or link is the bottleneck.
struct Endpoint {
    capacity: usize,
    service: Duration,
    /// Per server slot, when it is free again.
    free_at: Vec<Instant>,
    /// Every n-th request takes this long on a slow path of its own,
    /// whatever the load (`None`: no slow path).
    slow_path: Option<(usize, Duration)>,
    requests: usize,
}

impl Endpoint {
    fn new(capacity: usize, service: Duration) -> Self {
        Endpoint { capacity, service, free_at: vec![Instant::now(); capacity], slow_path: None, requests: 0 }
    }

    /// When a request sent at `now` is answered.
    fn answer_at(&mut self, now: Instant) -> Instant {
        self.requests += 1;
        if let Some((every, delay)) = self.slow_path
            && self.requests.is_multiple_of(every)
        {
            return now + delay;
        }
        let slot = (0..self.capacity).min_by_key(|&i| self.free_at[i]).unwrap();
        let done = self.free_at[slot].max(now) + self.service;
        self.free_at[slot] = done;
        done
    }
}

/// Drives a controller against `endpoint` with unlimited demand for
/// `duration` of paused time; returns the limit after each finished
/// request, and whether that request timed out. A timed-out request still holds
/// its server slot, as a real server keeps working on it.
async fn drive(controller: &mut Controller, endpoint: &mut Endpoint, duration: Duration) -> (Vec<usize>, Vec<bool>) {
    let end = Instant::now() + duration;
    // In flight: (finished at, sent at, timed out).
    let mut in_flight: Vec<(Instant, Instant, bool)> = vec![];
    let (mut limits, mut timeouts) = (vec![], vec![]);
    // Bounded: each turn finishes one request.
    for _ in 0..1_000_000 {
        let now = Instant::now();
        if now >= end {
            break;
        }
        while in_flight.len() < controller.limit() {
            let answer = endpoint.answer_at(now);
            let deadline = now + controller.request_timeout();
            in_flight.push((answer.min(deadline), now, deadline < answer));
            controller.on_send();
        }
        let next = (0..in_flight.len()).min_by_key(|&i| in_flight[i].0).unwrap();
        let (at, sent, timed_out) = in_flight.swap_remove(next);
        tokio::time::sleep_until(at).await;
        timeouts.push(timed_out);
        let signal = if timed_out {
            Signal::TimedOut { waited: at - sent }
        } else {
            Signal::Answered { rtt: at - sent, back_pressure: false }
        };
        controller.on_finish(Instant::now(), signal);
        limits.push(controller.limit());
    }
    (limits, timeouts)
}

fn steady<T>(xs: &[T]) -> &[T] {
    &xs[xs.len() / 2..]
}

fn mean(xs: &[usize]) -> f64 {
    xs.iter().sum::<usize>() as f64 / xs.len() as f64
}

#[tokio::test(start_paused = true)]
async fn against_a_one_at_a_time_endpoint_the_limit_stays_near_1() {
    // kinesis-local's case: it applies one request at a time.
    let mut c = Controller::new(24, FLOOR, CEILING, Instant::now());
    let mut e = Endpoint::new(1, Duration::from_millis(600));
    let (limits, _) = drive(&mut c, &mut e, Duration::from_secs(600)).await;
    let m = mean(steady(&limits));
    assert!(m <= 2.0, "mean limit {m} in the second half");
    assert!(c.request_timeout() >= Duration::from_millis(2_400), "{:?}", c.request_timeout());
}

#[tokio::test(start_paused = true)]
async fn from_an_overloading_limit_timeouts_bring_it_down_and_stop() {
    // The field report: 24 requests of 600 ms against an endpoint that
    // serves one at a time, with a 6 s timeout, all time out. Started
    // there, the controller comes down and the timeouts stop.
    let mut c = Controller::new(24, FLOOR, Duration::from_secs(6), Instant::now());
    c.limit = 24;
    let mut e = Endpoint::new(1, Duration::from_millis(600));
    let (limits, timeouts) = drive(&mut c, &mut e, Duration::from_secs(600)).await;
    assert!(timeouts[..50].contains(&true), "the overload shows as timeouts at first");
    assert!(!steady(&timeouts).contains(&true), "no timeout in the second half");
    assert!(mean(steady(&limits)) <= 2.0);
}

#[tokio::test(start_paused = true)]
async fn the_limit_converges_near_the_endpoint_capacity() {
    let mut c = Controller::new(64, FLOOR, CEILING, Instant::now());
    let mut e = Endpoint::new(8, Duration::from_millis(50));
    let (limits, timeouts) = drive(&mut c, &mut e, Duration::from_secs(600)).await;
    // Every slot stays busy (the limit stays at or above the capacity)
    // while requests queue for at most about one service time.
    let s = steady(&limits);
    let (low, high) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
    assert!(low >= 8 && high <= 16, "limits {low}..={high} for a capacity of 8");
    assert!(!timeouts.contains(&true));
}

#[tokio::test(start_paused = true)]
async fn against_a_fast_endpoint_the_limit_climbs_to_the_ceiling() {
    let mut c = Controller::new(24, FLOOR, CEILING, Instant::now());
    let mut e = Endpoint::new(1000, Duration::from_millis(20));
    let (limits, _) = drive(&mut c, &mut e, Duration::from_secs(60)).await;
    assert_eq!(*limits.last().unwrap(), 24);
    assert_eq!(c.request_timeout(), FLOOR, "80 ms of RTT asks for less than the floor");
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_throttles_cut_the_limit_multiplicatively() {
    let mut c = Controller::new(100, FLOOR, CEILING, Instant::now());
    c.limit = 50;
    let rtt = Duration::from_millis(100);
    c.on_send();
    c.on_finish(Instant::now(), Signal::Answered { rtt, back_pressure: false });
    tokio::time::advance(rtt).await;
    c.on_send();
    // Sent after the answered request (so not overtaken by it).
    let stalled = Signal::TimedOut { waited: rtt / 2 };
    assert_eq!(c.on_finish(Instant::now(), stalled), Some(Change::Decreased(45)));
    // One change per window: a second timeout at once changes nothing.
    c.on_send();
    assert_eq!(c.on_finish(Instant::now(), stalled), None);
    tokio::time::advance(rtt).await;
    c.on_send();
    let throttled = Signal::Answered { rtt, back_pressure: true };
    assert_eq!(c.on_finish(Instant::now(), throttled), Some(Change::Decreased(40)));
    tokio::time::advance(rtt).await;
    c.on_send();
    assert_eq!(c.on_finish(Instant::now(), Signal::Failed), Some(Change::Decreased(36)));
    // Small limits still go down by at least one, and never below 1.
    c.limit = 2;
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        c.on_send();
        c.on_finish(Instant::now(), stalled);
    }
    assert_eq!(c.limit(), 1);
}

#[tokio::test(start_paused = true)]
async fn requests_too_big_for_the_timeout_shrink_until_they_fit_and_grow_back() {
    // kinesis-local on a loaded machine: one request at a time, 30 ms
    // per record, so a full batch of 500 takes 15 s against a 10 s
    // ceiling and every resend of it would time out again.
    let mut c = Controller::new(24, FLOOR, CEILING, Instant::now());
    let per_record = Duration::from_millis(30);
    let (mut timeouts, mut shares) = (vec![], vec![]);
    let end = Instant::now() + Duration::from_secs(1200);
    let mut slow = true;
    while Instant::now() < end {
        if slow && Instant::now() > end - Duration::from_secs(400) {
            slow = false;
        }
        let records = (500.0 * c.batch_share()).ceil() as u32;
        let service = if slow { per_record * records } else { Duration::from_millis(2) * records };
        let timeout = c.request_timeout();
        c.on_send();
        tokio::time::advance(service.min(timeout)).await;
        let signal = if service > timeout {
            Signal::TimedOut { waited: timeout }
        } else {
            Signal::Answered { rtt: service, back_pressure: false }
        };
        c.on_finish(Instant::now(), signal);
        timeouts.push((slow, service > timeout));
        shares.push((slow, c.batch_share()));
    }
    let slow_timeouts: Vec<bool> = timeouts.iter().filter(|(s, _)| *s).map(|(_, t)| *t).collect();
    assert!(slow_timeouts[..3].contains(&true), "the full batch times out at first");
    assert!(!steady(&slow_timeouts).contains(&true), "then requests fit: no timeout in the second half");
    let slow_share = shares.iter().rfind(|(s, _)| *s).unwrap().1;
    assert!(slow_share < 0.7 && slow_share * 500.0 * 0.030 <= 10.0, "share {slow_share} while slow");
    assert_eq!(shares.last().unwrap().1, 1.0, "full batches again once the endpoint is fast");
}

#[tokio::test(start_paused = true)]
async fn scattered_slow_requests_cost_their_own_time_not_the_limit_or_the_batch() {
    // Issue 27 row 7: one request in five takes 6 s on a slow path of
    // its own, past the 2 s timeout floor, while the endpoint answers
    // the others in 50 ms with room for all. Each slow one times out
    // alone; the limit stays near the ceiling and requests stay whole.
    let mut c = Controller::new(24, Duration::from_secs(2), CEILING, Instant::now());
    let mut e = Endpoint::new(100, Duration::from_millis(50));
    e.slow_path = Some((5, Duration::from_secs(6)));
    let (limits, timeouts) = drive(&mut c, &mut e, Duration::from_secs(300)).await;
    let m = mean(steady(&limits));
    assert!(m >= 18.0, "mean limit {m} in the second half, ceiling 24");
    assert_eq!(c.batch_share(), 1.0, "requests keep their size");
    let slow = timeouts.iter().filter(|t| **t).count() as f64 / timeouts.len() as f64;
    assert!((0.15..=0.25).contains(&slow), "only the slow fifth times out: {slow}");
    assert_eq!(c.request_timeout(), Duration::from_secs(2), "the first attempt keeps the floor");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_stops_answering_still_cuts_the_limit() {
    let mut c = Controller::new(24, FLOOR, CEILING, Instant::now());
    c.limit = 20;
    c.on_send();
    c.on_finish(Instant::now(), Signal::Answered { rtt: Duration::from_millis(50), back_pressure: false });
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(100)).await;
        c.on_send();
        // Sent after the one answer: nothing sent later was answered.
        c.on_finish(Instant::now(), Signal::TimedOut { waited: Duration::from_millis(50) });
    }
    assert!(c.limit() <= 12, "every window timed out without an answer: {}", c.limit());
}

#[tokio::test(start_paused = true)]
async fn rising_latency_cuts_the_limit() {
    let mut c = Controller::new(100, FLOOR, CEILING, Instant::now());
    c.limit = 10;
    let fast = Duration::from_millis(100);
    for _ in 0..10 {
        c.on_send();
        c.on_finish(Instant::now(), Signal::Answered { rtt: fast, back_pressure: false });
        tokio::time::advance(fast).await;
    }
    assert_eq!(c.limit(), 10, "steady latency without demand changes nothing");
    c.on_send();
    let slow = Signal::Answered { rtt: fast * 3, back_pressure: false };
    assert_eq!(c.on_finish(Instant::now(), slow), Some(Change::Decreased(9)));
}

#[tokio::test(start_paused = true)]
async fn the_timeout_follows_the_rtt_within_floor_and_ceiling_and_backs_off() {
    let mut c = Controller::new(4, FLOOR, CEILING, Instant::now());
    assert_eq!(c.request_timeout(), CEILING, "no answer yet: the ceiling");
    c.on_send();
    c.on_finish(Instant::now(), Signal::Answered { rtt: Duration::from_millis(500), back_pressure: false });
    assert_eq!(c.request_timeout(), Duration::from_secs(2), "4 × 500 ms");
    let timed_out = Signal::TimedOut { waited: Duration::from_secs(2) };
    c.on_send();
    c.on_finish(Instant::now(), timed_out);
    assert_eq!(c.request_timeout(), Duration::from_secs(4), "doubled after a timeout");
    for _ in 0..5 {
        c.on_send();
        c.on_finish(Instant::now(), timed_out);
    }
    assert_eq!(c.request_timeout(), CEILING);
    c.on_send();
    c.on_finish(Instant::now(), Signal::Answered { rtt: Duration::from_millis(500), back_pressure: false });
    assert_eq!(c.request_timeout(), Duration::from_secs(2), "an answer ends the backoff");
    // A resend after unanswered attempts of its records waits longer.
    assert_eq!(c.request_timeout_for(1), Duration::from_secs(4));
    assert_eq!(c.request_timeout_for(2), Duration::from_secs(8));
    assert_eq!(c.request_timeout_for(3), CEILING);
    let tight = Controller::new(4, Duration::from_secs(5), Duration::from_millis(300), Instant::now());
    assert_eq!(tight.timeout_floor, Duration::from_millis(300), "the floor never exceeds the ceiling");
}
