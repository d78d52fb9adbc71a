//! How long a host takes to answer its small requests (manifests, configs, pings: those that
//! hold a slot in the request window): the shortest answer seen, which is the round trip with
//! nothing queued on the way, and how long the oldest one still out has waited. Over a link
//! whose bottleneck queues first in, first out, a manifest asked after big downloads waits for
//! every byte they queued; the blob transfer slots read this to hold those back
//! (`copy::queue`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// The small requests of one host.
#[derive(Default)]
pub struct SmallRequests {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// When each request still out was sent, by a number that grows with time: the first
    /// entry is the oldest.
    out: BTreeMap<u64, Instant>,
    shortest: Option<Duration>,
}

/// One small request on its way; forgotten when dropped.
pub struct Out<'a> {
    owner: &'a SmallRequests,
    id: u64,
    sent: Instant,
}

impl SmallRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A small request is sent now.
    pub fn sent(&self) -> Out<'_> {
        let sent = Instant::now();
        let mut s = self.lock();
        let id = s.next;
        s.next += 1;
        s.out.insert(id, sent);
        Out {
            owner: self,
            id,
            sent,
        }
    }

    /// The shortest time a small request took to be answered, once one was.
    pub fn shortest(&self) -> Option<Duration> {
        self.lock().shortest
    }

    /// Whether a small request still out has waited more than three times the shortest answer:
    /// there is a queue on the way (or the host is slow now). The slack covers a request that
    /// first had to open its connection (a round trip more) and a host busy for a moment.
    pub fn queued(&self, now: Instant) -> bool {
        let s = self.lock();
        match (s.shortest, s.out.values().next()) {
            (Some(shortest), Some(oldest)) => now.duration_since(*oldest) > 3 * shortest,
            _ => false,
        }
    }

    /// Whether any small request is out now.
    pub fn any_out(&self) -> bool {
        !self.lock().out.is_empty()
    }
}

impl Out<'_> {
    /// Its answer came back now.
    pub fn answered(self) {
        let took = self.sent.elapsed();
        let mut s = self.owner.lock();
        s.shortest = Some(s.shortest.map_or(took, |t| t.min(took)));
    }
}

impl Drop for Out<'_> {
    fn drop(&mut self) {
        self.owner.lock().out.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_out_three_times_the_shortest_answer_means_a_queue() {
        let small = SmallRequests::default();
        assert!(!small.queued(Instant::now()), "nothing known yet");
        let first = small.sent();
        tokio::time::advance(Duration::from_millis(80)).await;
        first.answered();
        assert_eq!(small.shortest(), Some(Duration::from_millis(80)));
        let waiting = small.sent();
        let later = small.sent();
        tokio::time::advance(Duration::from_millis(230)).await;
        assert!(!small.queued(Instant::now()), "230 ms is within 3 x 80 ms");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(small.queued(Instant::now()), "the oldest has waited 250 ms");
        // The oldest answered: the next one out is judged.
        waiting.answered();
        assert!(small.queued(Instant::now()));
        assert_eq!(small.shortest(), Some(Duration::from_millis(80)));
        drop(later);
        assert!(!small.any_out());
        assert!(!small.queued(Instant::now()));
    }
}
