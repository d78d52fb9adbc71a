//! Adaptive request control per host: how many requests may be in flight to a host (the
//! window) and, once the host has refused us for going too fast, how fast they may start (the
//! rate); both learned from its answers, under the limits an operator configured
//! ([`super::HostLimits`]).
//!
//! A `429 Too Many Requests` or `503 Service Unavailable` shrinks both, once per round trip:
//! answers to requests sent before the last shrink are the same signal, not a new one. Other
//! answers grow them back slowly: the window by one per round trip (doubling per round trip at
//! the start, as TCP's slow start does, but at most once per [`ROUND`]), the rate back to what
//! the host let through within [`RECOVERY`], then by a few percent a second. The window never
//! goes below 1 nor above its ceiling. A `Retry-After` pauses every request to the host until it
//! has passed, not just the one that was refused.
//!
//! Why a rate as well as a window: registries cap requests per second (ECR's per-action TPS
//! quotas, Harbor's and GHCR's limiters, Docker Hub's abuse limiter), and over a short link even
//! one request in flight can exceed such a cap. When the host first refuses, the number of
//! requests it accepted in the last second is the best estimate of its cap; the rate starts just
//! under it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{RegistryClient, parse_retry_after};

/// Requests in flight to a host before its answers have said anything. Over a far link each
/// doubling costs a round trip before the tags' HEADs and manifests are all out (57 tags: two
/// round trips from 24, four from 8); a burst of 24 still fits the token bucket of a registry
/// that allows 25 requests/s (`bench/throttle`: 429 shares as low as with 8; 32 sent up to
/// 7.8%).
const INITIAL_WINDOW: f64 = 24.0;
/// The window doubles at most once per this long while it starts up, so that on a short link
/// it does not reach its ceiling before a throttling host has had time to answer 429.
const ROUND: Duration = Duration::from_millis(100);
/// What the window and the rate are multiplied by when the host refuses.
const BETA: f64 = 0.7;
/// After a refusal the rate starts at this share of what the host accepted in the last second.
const UNDER_ACCEPTED: f64 = 0.9;
/// The rate never goes below this many requests per second.
const MIN_RATE: f64 = 1.0;
/// The time in which the rate grows back to what the host accepted before it refused.
const RECOVERY: Duration = Duration::from_secs(2);
/// Above that, the rate grows by this share of it per second (and by at least 0.5/s) at first,
/// twice as fast every [`PROBE_DOUBLING`] without a refusal: what the host accepted when it
/// refused may have been far under its cap (a refusal in the first moments of a run, when few
/// answers had come back), and a rate that only crept up would stay there for the whole run.
const PROBE: f64 = 0.05;
/// How often the probing growth above the last known rate doubles.
const PROBE_DOUBLING: Duration = Duration::from_secs(2);
/// The probing growth doubles at most this many times.
const PROBE_DOUBLINGS: f64 = 4.0;
/// The span over which accepted requests are counted.
const SECOND: Duration = Duration::from_secs(1);

/// The adaptive window and rate of one host.
pub struct Throttle {
    state: Mutex<State>,
    /// Woken when a slot frees or the window grows.
    changed: Notify,
    ceiling: f64,
    /// The longest pause a `Retry-After` may impose.
    max_pause: Duration,
}

struct State {
    window: f64,
    in_flight: usize,
    /// Before the first refusal: the window doubles per round.
    slow_start: bool,
    round_ends: Instant,
    /// The most the window may reach in this round.
    round_limit: f64,
    /// Requests per second, once the host has refused; `None`: not paced.
    rate: Option<f64>,
    /// What the host accepted per second when it last refused (`None`: nothing).
    accepted_at_cut: Option<f64>,
    /// The rate right after the last refusal.
    cut_to: f64,
    /// When the pacer lets the next request start.
    next_start: Instant,
    /// When a request last had to wait for the pacer (the rate, not the demand, was the limit).
    paced_at: Option<Instant>,
    last_growth: Instant,
    paused_until: Option<Instant>,
    /// Bumped at every shrink; a refusal of a request admitted in an older epoch is not new.
    epoch: u64,
    /// When recent requests were answered without a refusal (the last second's).
    accepted: VecDeque<Instant>,
    /// Since when the rate has been above what the host accepted at its last refusal.
    probe_since: Option<Instant>,
    /// When recent requests started (the last two seconds').
    starts: VecDeque<Instant>,
}

/// What an answer says about the host's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// Any answer but a refusal for load.
    Accepted,
    /// 429 or 503, with the `Retry-After` it carried.
    Refused(Option<Duration>),
    /// No answer (connection failed): says nothing about the rate.
    Lost,
}

/// One admitted request; gives its slot back when dropped.
pub struct Ticket<'a> {
    throttle: &'a Throttle,
    epoch: u64,
    holds_slot: bool,
    /// When the pacer let it start.
    start: Instant,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.holds_slot {
            let mut s = self.throttle.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            drop(s);
            self.throttle.changed.notify_waiters();
        }
    }
}

impl Throttle {
    /// A host's control, whose window never exceeds `ceiling` (at least 1).
    pub fn new(ceiling: usize, max_pause: Duration) -> Throttle {
        let ceiling = ceiling.max(1) as f64;
        let now = Instant::now();
        Throttle {
            state: Mutex::new(State {
                window: INITIAL_WINDOW.min(ceiling),
                in_flight: 0,
                slow_start: true,
                round_ends: now + ROUND,
                round_limit: (2.0 * INITIAL_WINDOW).min(ceiling),
                rate: None,
                accepted_at_cut: None,
                cut_to: 0.0,
                next_start: now,
                paced_at: None,
                last_growth: now,
                paused_until: None,
                epoch: 0,
                accepted: VecDeque::new(),
                probe_since: None,
                starts: VecDeque::new(),
            }),
            changed: Notify::new(),
            ceiling,
            max_pause,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests allowed in flight now.
    pub fn window(&self) -> usize {
        self.lock().window as usize
    }

    /// Requests per second allowed now; `None` while the host has never refused.
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }

    /// Waits until the host is not paused, a slot in the window is free (when `hold`: a
    /// request whose body streams for as long as a blob transfer takes none, or one big upload
    /// could hold the whole window), and the pacer lets one more request start.
    pub async fn admit(&self, hold: bool) -> Ticket<'_> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut s = self.lock();
                let now = Instant::now();
                match (s.paused_until, s.next_start(now)) {
                    (Some(until), _) if until > now => Some(until),
                    (_, Some(at)) => {
                        s.paced_at = Some(now);
                        Some(at)
                    }
                    _ if hold && s.in_flight >= s.window as usize => None,
                    _ => {
                        s.in_flight += usize::from(hold);
                        s.start(now);
                        return Ticket {
                            throttle: self,
                            epoch: s.epoch,
                            holds_slot: hold,
                            start: now,
                        };
                    }
                }
            };
            // Woken early when the rate or the window changes, so that a wait is never for a
            // pace the host no longer asks for.
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Learns from the answer to `ticket`'s request.
    pub fn answered(&self, ticket: &Ticket<'_>, answer: Answer) {
        let now = Instant::now();
        let mut s = self.lock();
        match answer {
            Answer::Lost => return,
            Answer::Accepted => s.grow(now, self.ceiling),
            Answer::Refused(retry_after) => {
                if let Some(after) = retry_after {
                    let until = now + after.min(self.max_pause);
                    s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
                }
                if ticket.epoch == s.epoch {
                    s.shrink(now, ticket.start);
                    tracing::debug!(
                        window = s.window,
                        rate = s.rate,
                        accepted_last_second = s.accepted_at_cut,
                        retry_after = ?retry_after,
                        "host refused for load: window and rate cut"
                    );
                }
            }
        }
        drop(s);
        self.changed.notify_waiters();
    }
}

impl State {
    /// When the pacer lets the next request start, if later than `now`.
    fn next_start(&self, now: Instant) -> Option<Instant> {
        (self.rate.is_some() && self.next_start > now).then_some(self.next_start)
    }

    /// A request starts `now`: the next one may start one interval of the rate later (or of
    /// the time the last one was due, when this one was late by less than an interval: the
    /// pace holds on average, and an idle host gives no burst). Nothing is reserved ahead, so
    /// a cut in the rate applies to every request not yet started.
    fn start(&mut self, now: Instant) {
        self.starts.push_back(now);
        if let Some(rate) = self.rate {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let due = self.next_start;
            let base = if now.duration_since(due) < interval {
                due
            } else {
                now
            };
            self.next_start = base + interval;
        }
    }

    fn accepted_last_second(&mut self, now: Instant) -> usize {
        while self
            .accepted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SECOND)
        {
            self.accepted.pop_front();
        }
        self.accepted.len()
    }

    /// Requests that started in the second before `before` (pruning those too old to matter).
    fn started_in_second_before(&mut self, now: Instant, before: Instant) -> usize {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= 2 * SECOND)
        {
            self.starts.pop_front();
        }
        self.starts
            .iter()
            .filter(|t| **t < before && before.duration_since(**t) < SECOND)
            .count()
    }

    fn grow(&mut self, now: Instant, ceiling: f64) {
        self.accepted.push_back(now);
        self.accepted_last_second(now);
        // Only a window that is full is grown (in use, so the answers say it is fine).
        if self.in_flight >= self.window as usize {
            if self.slow_start {
                if now >= self.round_ends {
                    self.round_ends = now + ROUND;
                    self.round_limit = 2.0 * self.window;
                }
                self.window = (self.window + 1.0).min(self.round_limit);
            } else {
                self.window += 1.0 / self.window;
            }
            self.window = self.window.min(ceiling);
        }
        let elapsed = now.duration_since(self.last_growth).min(SECOND);
        self.last_growth = now;
        let paced = self
            .paced_at
            .is_some_and(|t| now.duration_since(t) < SECOND);
        if let (Some(rate), true) = (self.rate, paced) {
            let per_second = match self.accepted_at_cut {
                // Nothing got through before the refusal: double per second until one does.
                None => rate,
                Some(known) if rate < known => {
                    ((known - self.cut_to) / RECOVERY.as_secs_f64()).max(PROBE * known)
                }
                Some(known) => {
                    let since = *self.probe_since.get_or_insert(now);
                    let doublings = (now.duration_since(since).as_secs_f64()
                        / PROBE_DOUBLING.as_secs_f64())
                    .min(PROBE_DOUBLINGS);
                    (PROBE * known).max(0.5) * doublings.exp2()
                }
            };
            self.rate = Some(rate + per_second * elapsed.as_secs_f64());
        }
    }

    /// Cuts the window and the rate on a refusal, at `now`, of a request that started at
    /// `refused_start`. What the host accepts per second is estimated from the answers accepted
    /// in the last second, or from the requests that started in the second before the refused
    /// one when more: a refusal is answered at once, while requests let through before it may
    /// still be running (early in a run, few have been answered yet).
    fn shrink(&mut self, now: Instant, refused_start: Instant) {
        self.epoch += 1;
        self.slow_start = false;
        self.window = (self.window * BETA).max(1.0);
        self.probe_since = None;
        let accepted = self
            .accepted_last_second(now)
            .max(self.started_in_second_before(now, refused_start)) as f64;
        let current = self.rate.unwrap_or(f64::INFINITY);
        let rate = (current * BETA)
            .min(accepted * UNDER_ACCEPTED)
            .max(MIN_RATE);
        self.rate = Some(rate);
        self.cut_to = rate;
        self.accepted_at_cut = (accepted > 0.0).then_some(accepted);
        // No request starts sooner than one interval of the new rate from now.
        self.next_start = self
            .next_start
            .max(now + Duration::from_secs_f64(1.0 / rate));
    }
}

/// What an answer says about the host's load: a 429 that reports an exhausted pull quota
/// (`ratelimit-remaining: 0`, Docker Hub) is about the quota, not about the pace.
pub fn classify(status: u16, headers: &HeaderMap) -> Answer {
    match status {
        429 if quota_spent(headers) => Answer::Accepted,
        429 | 503 => Answer::Refused(
            headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        ),
        _ => Answer::Accepted,
    }
}

fn quota_spent(headers: &HeaderMap) -> bool {
    headers
        .get("ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim() == "0")
}

/// Whether a request's body is a stream (a blob upload), which holds no slot in the window.
pub fn streams(request: &reqwest::Request) -> bool {
    request.body().is_some_and(|b| b.as_bytes().is_none())
}

impl RegistryClient {
    /// Tells the host's throttle how `ticket`'s request was answered, and the metrics what its
    /// window and rate are now.
    pub(super) fn throttle_answered(
        &self,
        ticket: Ticket<'_>,
        sent: &Result<reqwest::Response, reqwest::Error>,
    ) {
        let answer = match sent {
            Ok(response) => classify(response.status().as_u16(), response.headers()),
            Err(_) => Answer::Lost,
        };
        self.throttle.answered(&ticket, answer);
        drop(ticket);
        if let Some(observer) = &self.observer {
            observer.request_window(&self.label, self.throttle.window(), self.throttle.rate());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn throttle(ceiling: usize) -> Throttle {
        Throttle::new(ceiling, Duration::from_millis(200))
    }

    /// `n` answers accepted at `now` with the window full.
    fn accept(s: &mut State, now: Instant, n: usize, ceiling: f64) {
        for _ in 0..n {
            s.in_flight = s.window as usize;
            s.grow(now, ceiling);
        }
        s.in_flight = 0;
    }

    #[tokio::test]
    async fn shrinks_once_per_round_trip_and_never_below_one() {
        let t = throttle(64);
        assert_eq!(t.window(), 24);
        // Every request in flight refused: one signal, one shrink.
        let tickets: Vec<_> = futures_util::future::join_all((0..24).map(|_| t.admit(true))).await;
        for ticket in &tickets {
            t.answered(ticket, Answer::Refused(None));
        }
        assert_eq!(t.window(), 16, "24 x 0.7, once");
        drop(tickets);
        let mut s = t.lock();
        let now = Instant::now();
        for _ in 0..20 {
            s.shrink(now, now);
        }
        assert_eq!(s.window, 1.0);
        assert_eq!(s.rate, Some(MIN_RATE));
    }

    #[test]
    fn the_first_refusal_paces_just_under_what_was_accepted() {
        let t = throttle(64);
        let mut s = t.lock();
        let now = Instant::now();
        accept(&mut s, now, 30, 64.0);
        s.shrink(now, now);
        assert_eq!(s.rate, Some(27.0));
        // The pacer lets requests start 1/27 s apart.
        let interval = Duration::from_secs_f64(1.0 / 27.0);
        let first = s.next_start(now).unwrap();
        assert_eq!(first, now + interval);
        s.start(first);
        assert_eq!(s.next_start(first), Some(first + interval));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_in_the_rate_applies_to_requests_already_waiting() {
        let t = Arc::new(throttle(64));
        {
            let mut s = t.lock();
            let now = Instant::now();
            accept(&mut s, now, 25, 64.0);
            s.shrink(now, now);
        }
        // Forty requests wait for the pacer at 22.5 per second.
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiters: Vec<_> = (0..40)
            .map(|_| {
                let (t, started) = (t.clone(), started.clone());
                tokio::spawn(async move {
                    let _ticket = t.admit(false).await;
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = started.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (10..=12).contains(&before),
            "{before} started in 0.5 s at 22.5/s"
        );
        // The host refuses again: cut to 15.75 per second, for the waiting ones too.
        {
            let mut s = t.lock();
            let now = Instant::now();
            s.shrink(now, now);
        }
        t.changed.notify_waiters();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = started.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert!(
            (14..=16).contains(&after),
            "{after} started in the next 1 s at 15.75/s"
        );
        for w in waiters {
            w.abort();
        }
    }

    #[test]
    fn a_refusal_early_in_the_run_counts_the_requests_let_through_before_it() {
        let t = throttle(64);
        let mut s = t.lock();
        let start = Instant::now();
        // 30 requests start in the first 0.1 s; 10 have been answered when the 31st, started
        // after them, is refused at once.
        for i in 0..30 {
            s.start(start + Duration::from_millis(3 * i));
        }
        let refused_start = start + Duration::from_millis(100);
        s.start(refused_start);
        let refused_at = start + Duration::from_millis(101);
        accept(&mut s, refused_at, 10, 64.0);
        s.shrink(refused_at, refused_start);
        // The host let 30 through in that second, not 10: paced at 27, not 9.
        let rate = s.rate.unwrap();
        assert!((rate - 27.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn grows_back_slowly_and_never_above_the_ceiling() {
        let t = throttle(10);
        let mut s = t.lock();
        let start = Instant::now();
        // Slow start: at most a doubling per round.
        accept(&mut s, start, 100, 10.0);
        assert_eq!(s.window, 10.0, "the ceiling");
        let t2 = throttle(256);
        let mut s2 = t2.lock();
        accept(&mut s2, start, 100, 256.0);
        assert_eq!(s2.window, 48.0, "one round: 24 doubled once");
        // A refusal with 25 accepted in the last second: paced at 22.5, back to 25 within
        // RECOVERY, then a few percent a second.
        let mut s = State {
            ..fresh_state(start)
        };
        accept(&mut s, start, 25, 64.0);
        s.shrink(start, start);
        assert_eq!(s.rate, Some(22.5));
        let mut now = start;
        for _ in 0..40 {
            now += Duration::from_millis(50);
            s.paced_at = Some(now);
            s.grow(now, 64.0);
        }
        let rate = s.rate.unwrap();
        assert!((25.0..27.0).contains(&rate), "after 2 s: {rate}");
        for _ in 0..20 {
            now += Duration::from_millis(50);
            s.paced_at = Some(now);
            s.grow(now, 64.0);
        }
        let rate = s.rate.unwrap();
        assert!(rate < 30.0, "1 s above it: {rate}, probing gently");
        for _ in 0..120 {
            now += Duration::from_millis(50);
            s.paced_at = Some(now);
            s.grow(now, 64.0);
        }
        let rate = s.rate.unwrap();
        assert!(
            rate > 45.0,
            "7 s above it without a refusal: {rate}, probing faster"
        );
        // Not paced (the demand, not the rate, was the limit): no growth.
        let before = s.rate;
        s.paced_at = None;
        s.grow(now + Duration::from_secs(5), 64.0);
        assert_eq!(s.rate, before);
    }

    fn fresh_state(now: Instant) -> State {
        State {
            window: INITIAL_WINDOW,
            in_flight: 0,
            slow_start: true,
            round_ends: now + ROUND,
            round_limit: 2.0 * INITIAL_WINDOW,
            rate: None,
            accepted_at_cut: None,
            cut_to: 0.0,
            next_start: now,
            paced_at: None,
            last_growth: now,
            paused_until: None,
            epoch: 0,
            accepted: VecDeque::new(),
            probe_since: None,
            starts: VecDeque::new(),
        }
    }

    #[tokio::test]
    async fn retry_after_pauses_the_whole_host() {
        let t = throttle(8);
        let ticket = t.admit(true).await;
        // Capped to the 200 ms the throttle allows.
        t.answered(&ticket, Answer::Refused(Some(Duration::from_secs(5))));
        drop(ticket);
        let start = Instant::now();
        let _other = t.admit(true).await;
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_full_window_waits_for_a_slot_and_streams_take_none() {
        let t = throttle(1);
        let held = t.admit(true).await;
        let _stream = t.admit(false).await;
        let waiting = tokio::time::timeout(Duration::from_millis(20), t.admit(true)).await;
        assert!(waiting.is_err(), "a second request got into a window of 1");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), t.admit(true))
            .await
            .expect("the freed slot was not handed on");
    }

    #[test]
    fn a_spent_pull_quota_is_not_a_pace_signal() {
        let mut headers = HeaderMap::new();
        assert_eq!(classify(429, &headers), Answer::Refused(None));
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(
            classify(503, &headers),
            Answer::Refused(Some(Duration::from_secs(3)))
        );
        headers.insert("ratelimit-remaining", "0;w=21600".parse().unwrap());
        assert_eq!(classify(429, &headers), Answer::Accepted);
        assert_eq!(classify(404, &HeaderMap::new()), Answer::Accepted);
    }
}
