//! Blob transfer slots of one upstream host, handed out by size (blobs over
//! [`OWN_CONNECTION`]; smaller ones are a request each and take none).
//!
//! Over a long link a small blob costs a round trip and a big one costs link time. Big blobs
//! (over [`SMALL_BLOB`]) go biggest first, so they overlap with everything else instead of
//! ending the run alone on an otherwise idle link; but they may hold only three quarters of the
//! slots (all of them below four), so the small ones (configs, small layers) and the manifests
//! waiting on them always have slots of their own and are not stuck behind big ones for the
//! whole transfer. Small blobs may use every slot, first come, first served.
//!
//! A slot kept for small blobs does not stay idle while blobs just over the line wait: when no
//! small blob is waiting, a big one up to [`BORROW_MAX`] may take it, the smallest first (it
//! hands the slot back soonest), and the next slot freed goes to a small blob again. Without
//! this, many layers just over [`SMALL_BLOB`] (a busybox-sized image each) waited behind the
//! quota for the bigger ones and started last, each after its own round trips, on a link that
//! had nothing else left to carry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Blobs up to this size are mostly a round trip on a long link (1 MiB crosses 100 Mbit/s in
/// 84 ms), so they are not held back behind big ones.
pub const SMALL_BLOB: u64 = 1024 * 1024;

/// Big blobs up to this size may borrow a slot kept for small ones while no small blob waits:
/// short enough that a small blob arriving meanwhile waits little for a slot to come back (4 MiB
/// cross 100 Mbit/s in a third of a second), long enough for the layers of small images.
pub const BORROW_MAX: u64 = 4 * SMALL_BLOB;

/// Blobs over this size download on connections of their own (see
/// [`crate::registry::RegistryClient::send`]): on one shared HTTP/2 connection they would
/// share a single flow's part of the link with everything else, and a flow's part of a link
/// shared by many is small. Below it are configs and the like, a round trip each: they take
/// no transfer slot (the host's request window bounds them, as it does manifests), and a slot
/// held over each of their round trips starved the layers on a far link.
pub const OWN_CONNECTION: u64 = 64 * 1024;

/// Whether a blob of `size` bytes is a round trip rather than a transfer (up to
/// [`OWN_CONNECTION`]): it takes no transfer slot, and its body is read whole before its upload.
pub fn is_round_trip(size: u64) -> bool {
    size <= OWN_CONNECTION
}

/// `limit` transfers at once.
pub struct TransferSlots {
    state: Arc<Mutex<State>>,
}

struct State {
    free: usize,
    /// Slots big blobs may hold at once: `limit - limit / 4`.
    big_quota: usize,
    running_big: usize,
    /// Everyone waiting, by arrival; the big ones again by (size, arrival).
    waiting: BTreeMap<u64, Waiter>,
    big_by_size: BTreeSet<(u64, u64)>,
    arrivals: u64,
}

struct Waiter {
    size: u64,
    wake: oneshot::Sender<TransferSlot>,
}

/// One transfer slot; dropping it hands it on to a waiting blob (or frees it).
pub struct TransferSlot {
    /// `None` once handed back without being used (see the `Drop`).
    state: Option<Arc<Mutex<State>>>,
    big: bool,
}

impl TransferSlots {
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        TransferSlots {
            state: Arc::new(Mutex::new(State {
                free: limit,
                big_quota: Self::big_limit(limit),
                running_big: 0,
                waiting: BTreeMap::new(),
                big_by_size: BTreeSet::new(),
                arrivals: 0,
            })),
        }
    }

    /// How many of `limit` slots big blobs may hold at once.
    fn big_limit(limit: usize) -> usize {
        let limit = limit.max(1);
        limit - limit / 4
    }

    /// How many slots big blobs may hold at once.
    pub fn big_quota(&self) -> usize {
        lock(&self.state).big_quota
    }

    /// The slot a blob of `size` bytes downloads in: none for a round trip (see
    /// [`is_round_trip`]), else [`TransferSlots::acquire`].
    pub async fn for_blob(&self, size: u64) -> Option<TransferSlot> {
        match is_round_trip(size) {
            true => None,
            false => Some(self.acquire(size).await),
        }
    }

    /// A slot for a blob of `size` bytes, when its turn comes. Cancelling the wait gives up the
    /// place in the queue; a slot handed to a cancelled waiter goes on to the next one.
    pub async fn acquire(&self, size: u64) -> TransferSlot {
        let woken = {
            let mut state = lock(&self.state);
            let (wake, woken) = oneshot::channel();
            state.arrivals += 1;
            let arrival = state.arrivals;
            state.waiting.insert(arrival, Waiter { size, wake });
            if size > SMALL_BLOB {
                state.big_by_size.insert((size, arrival));
            }
            state.dispatch(&self.state);
            woken
        };
        match woken.await {
            Ok(slot) => slot,
            // The sender stays queued until a slot is handed over, and a handed-over slot
            // always arrives: unreachable, but a fresh wait is the safe answer.
            Err(_) => Box::pin(self.acquire(size)).await,
        }
    }
}

impl State {
    /// Hands free slots to waiters: the biggest big blob while big ones are under their quota,
    /// else the longest-waiting small one, else the smallest big one that may borrow a slot.
    fn dispatch(&mut self, shared: &Arc<Mutex<State>>) {
        while self.free > 0 {
            let next = if self.running_big < self.big_quota
                && let Some(&(_, arrival)) = self.biggest()
            {
                arrival
            } else if let Some(arrival) = self.oldest_small() {
                arrival
            } else if let Some(&(_, arrival)) = self.smallest_borrower() {
                arrival
            } else {
                return;
            };
            let Some(waiter) = self.waiting.remove(&next) else {
                return;
            };
            let big = waiter.size > SMALL_BLOB;
            if big {
                self.big_by_size.remove(&(waiter.size, next));
            }
            self.free -= 1;
            self.running_big += usize::from(big);
            let slot = TransferSlot {
                state: Some(Arc::clone(shared)),
                big,
            };
            // A waiter that gave up: take the slot back (without running its drop while the
            // lock is held) and go on to the next one.
            if let Err(mut unused) = waiter.wake.send(slot) {
                unused.state = None;
                self.free += 1;
                self.running_big -= usize::from(big);
            }
        }
    }

    /// The biggest waiting big blob, the earliest among equals.
    fn biggest(&self) -> Option<&(u64, u64)> {
        let size = self.big_by_size.last()?.0;
        self.big_by_size.range((size, 0)..).next()
    }

    /// The smallest waiting big blob if it may borrow a slot kept for small ones.
    fn smallest_borrower(&self) -> Option<&(u64, u64)> {
        self.big_by_size
            .first()
            .filter(|(size, _)| *size <= BORROW_MAX)
    }

    fn oldest_small(&self) -> Option<u64> {
        self.waiting
            .iter()
            .find(|(_, w)| w.size <= SMALL_BLOB)
            .map(|(arrival, _)| *arrival)
    }
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let Some(shared) = self.state.take() else {
            return;
        };
        let mut state = lock(&shared);
        state.free += 1;
        state.running_big -= usize::from(self.big);
        state.dispatch(&shared);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Starts a waiter for `size` that records its turn in `order`, and lets it queue.
    async fn queue(
        slots: &Arc<TransferSlots>,
        size: u64,
        order: &Arc<Mutex<Vec<u64>>>,
    ) -> tokio::task::JoinHandle<()> {
        let before = lock(&slots.state).arrivals;
        let (mine, order) = (Arc::clone(slots), Arc::clone(order));
        let task = tokio::spawn(async move {
            let _slot = mine.acquire(size).await;
            order.lock().unwrap().push(size);
        });
        // Until it is queued.
        while lock(&slots.state).arrivals == before {
            tokio::task::yield_now().await;
        }
        task
    }

    const BIG: u64 = SMALL_BLOB + 1;

    /// A slot for `size` within a second, or the test fails with `why`.
    async fn granted(slots: &TransferSlots, size: u64, why: &str) -> TransferSlot {
        tokio::time::timeout(Duration::from_secs(1), slots.acquire(size))
            .await
            .expect(why)
    }

    /// Whether a request for `size` is still waiting after 20 ms (and gives up).
    async fn kept_waiting(slots: &TransferSlots, size: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(20), slots.acquire(size))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn big_blobs_go_biggest_first_small_ones_in_arrival_order() {
        let slots = Arc::new(TransferSlots::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = slots.acquire(1).await;
        let mut tasks = Vec::new();
        for size in [10, BIG, 700, 5 * BIG, 42, 5 * BIG] {
            tasks.push(queue(&slots, size, &order).await);
        }
        drop(held);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("a waiter never got its slot")
                .unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![5 * BIG, 5 * BIG, BIG, 10, 700, 42]
        );
    }

    /// Too big to borrow a slot kept for small blobs.
    const HUGE: u64 = BORROW_MAX + 1;

    #[tokio::test]
    async fn big_blobs_leave_a_quarter_of_the_slots_to_small_ones() {
        let slots = Arc::new(TransferSlots::new(8));
        let mut big = Vec::new();
        for _ in 0..6 {
            big.push(granted(&slots, HUGE, "big blobs get three quarters of the slots").await);
        }
        assert!(
            kept_waiting(&slots, HUGE).await,
            "a seventh big blob took a slot kept for small ones"
        );
        let _small = granted(&slots, 10, "the slots kept for small blobs were taken").await;
        let _small2 = granted(&slots, 10, "the slots kept for small blobs were taken").await;
        assert!(
            kept_waiting(&slots, 10).await,
            "more than the limit at once"
        );
        // A big one finishing frees a slot for the next big one.
        big.pop();
        granted(&slots, HUGE, "a freed big slot was not handed on").await;
    }

    #[tokio::test]
    async fn blobs_just_over_the_line_borrow_idle_small_slots_smallest_first() {
        let slots = Arc::new(TransferSlots::new(4));
        // Three big slots, held by huge blobs.
        let mut huge = Vec::new();
        for _ in 0..3 {
            huge.push(granted(&slots, HUGE, "the big quota was not given").await);
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = granted(&slots, 1, "the slot kept for small blobs was not given").await;
        let mut tasks = Vec::new();
        for size in [HUGE, 3 * BIG, BIG, 2 * BIG] {
            tasks.push(queue(&slots, size, &order).await);
        }
        // The small slot freed with no small blob waiting: the smallest that may borrow takes it,
        // and each one after it on its release; the huge one waits for a big slot.
        drop(held);
        for task in tasks.drain(1..) {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("a blob just over the line never got the idle slot")
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![BIG, 2 * BIG, 3 * BIG]);
        assert!(!tasks[0].is_finished(), "a huge blob borrowed a small slot");
        huge.pop();
        tokio::time::timeout(Duration::from_secs(5), tasks.pop().unwrap())
            .await
            .expect("the huge blob never got the freed big slot")
            .unwrap();
    }

    #[tokio::test]
    async fn a_borrowed_slot_goes_back_to_a_small_blob_first() {
        let slots = Arc::new(TransferSlots::new(4));
        let mut big = Vec::new();
        for _ in 0..4 {
            // Three within the quota, the fourth borrowing the small slot.
            big.push(granted(&slots, BIG, "an idle slot was left unused").await);
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiting_big = queue(&slots, 5 * BIG, &order).await;
        let waiting_small = queue(&slots, 10, &order).await;
        // Over the quota: the freed slot goes to the small blob, though a bigger one waited longer.
        big.pop();
        tokio::time::timeout(Duration::from_secs(5), waiting_small)
            .await
            .expect("the small blob did not get the slot back")
            .unwrap();
        assert_eq!(*order.lock().unwrap(), vec![10]);
        big.pop();
        tokio::time::timeout(Duration::from_secs(5), waiting_big)
            .await
            .expect("the big blob never got its slot")
            .unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_wait_neither_loses_nor_keeps_a_slot() {
        let slots = Arc::new(TransferSlots::new(2));
        let a = slots.acquire(1).await;
        let b = slots.acquire(1).await;
        // Gives up while queued.
        assert!(kept_waiting(&slots, 99).await);
        drop(a);
        drop(b);
        // Both slots are free again: two acquisitions succeed at once, a third waits.
        let _c = granted(&slots, 1, "slot lost to a cancelled waiter").await;
        let _d = granted(&slots, 1, "slot lost to a cancelled waiter").await;
        assert!(kept_waiting(&slots, 1).await, "more than the limit at once");
    }
}
