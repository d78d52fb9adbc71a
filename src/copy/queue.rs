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
//!
//! While the host's small requests (manifests, configs) are out, a transfer also starts only
//! within a byte budget (see [`BUDGET`]), so that over a link queuing first in, first out they
//! do not wait behind every layer asked for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use crate::reference::Digest;
use crate::registry::SmallRequests;

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

/// The bytes transfers may have asked for and not yet received while the host's small requests
/// are out, at first. Once per round trip the budget doubles when none of those requests waited
/// long (up to [`BUDGET_CAP`] or twice what is asked for, whichever is more), and halves when
/// one did (see [`SmallRequests::queued`]), down to [`BUDGET_FLOOR`] or to three times what
/// arrived in the last round trip (the link's bandwidth-delay product, with room for a
/// transfer's own round trips, so the link stays full). Over a link that queues first in,
/// first out, a manifest asked after a layer waits for the layer's bytes: with every layer
/// asked at once, the manifests and configs of the tags resolved later waited for all of them,
/// a second at 80 ms / 200 Mbit/s. Where the bottleneck shares the link fairly they seldom
/// wait long, and the budget soon stops mattering.
const BUDGET: u64 = 4 * 1024 * 1024;
const BUDGET_FLOOR: u64 = 1024 * 1024;
/// Past this, the budget grows only as far as the transfers use it: grown while nobody needed
/// it, it would take many round trips to come back down when a queue forms.
const BUDGET_CAP: u64 = 64 * 1024 * 1024;
/// How often transfers held back by the budget look again.
const HELD_POLL: Duration = Duration::from_millis(5);

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
    limit: usize,
    free: usize,
    /// Slots big blobs may hold at once: `limit - limit / 4`.
    big_quota: usize,
    running_big: usize,
    /// Everyone waiting, by arrival; the big ones again by (size, arrival).
    waiting: BTreeMap<u64, Waiter>,
    big_by_size: BTreeSet<(u64, u64)>,
    arrivals: u64,
    /// The host's small requests, which the transfers must not keep waiting.
    small: Arc<SmallRequests>,
    /// See [`BUDGET`].
    budget: u64,
    /// Bytes asked for by the transfers under way and not received yet, in all and by blob.
    outstanding: u64,
    pending: HashMap<Digest, Pending>,
    /// Bytes received in all, and when the budget was last set with the count then.
    received: u64,
    checked: Option<(Instant, u64)>,
    /// Whether a task looks again for transfers held back by the budget.
    polling: bool,
}

struct Pending {
    left: u64,
    holders: usize,
}

struct Waiter {
    size: u64,
    digest: Option<Digest>,
    wake: oneshot::Sender<TransferSlot>,
}

/// One transfer slot; dropping it hands it on to a waiting blob (or frees it).
pub struct TransferSlot {
    /// `None` once handed back without being used (see the `Drop`).
    state: Option<Arc<Mutex<State>>>,
    big: bool,
    digest: Option<Digest>,
}

impl TransferSlots {
    /// `small`: the host's small requests (see [`BUDGET`]).
    pub fn new(limit: usize, small: Arc<SmallRequests>) -> Self {
        let limit = limit.max(1);
        TransferSlots {
            state: Arc::new(Mutex::new(State {
                limit,
                free: limit,
                big_quota: Self::big_limit(limit),
                running_big: 0,
                waiting: BTreeMap::new(),
                big_by_size: BTreeSet::new(),
                arrivals: 0,
                small,
                budget: BUDGET,
                outstanding: 0,
                pending: HashMap::new(),
                received: 0,
                checked: None,
                polling: false,
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
    pub async fn for_blob(&self, size: u64, digest: &Digest) -> Option<TransferSlot> {
        match is_round_trip(size) {
            true => None,
            false => Some(self.acquire(size, Some(digest)).await),
        }
    }

    /// `n` more bytes of blob `digest` arrived.
    pub fn received(&self, digest: &Digest, n: u64) {
        let mut state = lock(&self.state);
        state.received = state.received.saturating_add(n);
        if let Some(pending) = state.pending.get_mut(digest) {
            let counted = n.min(pending.left);
            pending.left -= counted;
            state.outstanding = state.outstanding.saturating_sub(counted);
        }
    }

    /// A slot for a blob of `size` bytes, when its turn comes. Cancelling the wait gives up the
    /// place in the queue; a slot handed to a cancelled waiter goes on to the next one.
    pub async fn acquire(&self, size: u64, digest: Option<&Digest>) -> TransferSlot {
        let woken = {
            let mut state = lock(&self.state);
            let (wake, woken) = oneshot::channel();
            state.arrivals += 1;
            let arrival = state.arrivals;
            let digest = digest.cloned();
            state.waiting.insert(arrival, Waiter { size, digest, wake });
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
            Err(_) => Box::pin(self.acquire(size, digest)).await,
        }
    }
}

impl State {
    /// Hands free slots to waiters: the biggest big blob while big ones are under their quota,
    /// else the longest-waiting small one, else the smallest big one that may borrow a slot.
    fn dispatch(&mut self, shared: &Arc<Mutex<State>>) {
        while self.free > 0 && !self.waiting.is_empty() {
            if !self.may_start() {
                self.poll_later(shared);
                return;
            }
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
            if let Some(digest) = &waiter.digest {
                self.asked(digest, waiter.size);
            }
            let slot = TransferSlot {
                state: Some(Arc::clone(shared)),
                big,
                digest: waiter.digest,
            };
            // A waiter that gave up: take the slot back (without running its drop while the
            // lock is held) and go on to the next one.
            if let Err(mut unused) = waiter.wake.send(slot) {
                unused.state = None;
                self.free += 1;
                self.running_big -= usize::from(big);
                if let Some(digest) = unused.digest.take() {
                    self.finished(&digest);
                }
            }
        }
    }

    /// Whether one more transfer may start now (see [`BUDGET`]): always when none is
    /// under way or no small request is out; otherwise while the bytes asked for and not yet
    /// received stay under the budget.
    fn may_start(&mut self) -> bool {
        if self.free == self.limit || !self.small.any_out() {
            return true;
        }
        self.set_budget(Instant::now());
        self.outstanding < self.budget
    }

    /// Once per round trip of the host's shortest answer: the budget doubled when no small
    /// request waited long, halved (down to the floor) when one did.
    fn set_budget(&mut self, now: Instant) {
        let Some(round_trip) = self.small.shortest() else {
            return;
        };
        let Some((at, mark)) = self.checked else {
            self.checked = Some((now, self.received));
            return;
        };
        if now.duration_since(at) < round_trip {
            return;
        }
        let arrived = self.received.saturating_sub(mark);
        self.checked = Some((now, self.received));
        self.budget = if self.small.queued(now) {
            (self.budget / 2)
                .max(arrived.saturating_mul(3))
                .max(BUDGET_FLOOR)
        } else {
            let cap = BUDGET_CAP.max(self.outstanding.saturating_mul(2));
            self.budget.saturating_mul(2).min(cap.max(self.budget))
        };
    }

    /// A transfer of `size` bytes of `digest` starts.
    fn asked(&mut self, digest: &Digest, size: u64) {
        let pending = self.pending.entry(digest.clone()).or_insert(Pending {
            left: 0,
            holders: 0,
        });
        pending.left = pending.left.saturating_add(size);
        pending.holders += 1;
        self.outstanding = self.outstanding.saturating_add(size);
    }

    /// A transfer of `digest` ended: what it did not receive is no longer asked for.
    fn finished(&mut self, digest: &Digest) {
        if let Some(pending) = self.pending.get_mut(digest) {
            pending.holders -= 1;
            if pending.holders == 0 {
                self.outstanding = self.outstanding.saturating_sub(pending.left);
                self.pending.remove(digest);
            }
        }
    }

    /// Transfers are held back by the budget: a task looks again in [`HELD_POLL`] (a received
    /// chunk or a shorter wait opens the way, and neither calls here), and so on while they are.
    fn poll_later(&mut self, shared: &Arc<Mutex<State>>) {
        if self.polling {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.polling = true;
        let shared = Arc::clone(shared);
        runtime.spawn(async move {
            tokio::time::sleep(HELD_POLL).await;
            let mut state = lock(&shared);
            state.polling = false;
            state.dispatch(&shared);
        });
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
        if let Some(digest) = self.digest.take() {
            state.finished(&digest);
        }
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
            let _slot = mine.acquire(size, None).await;
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
        tokio::time::timeout(Duration::from_secs(1), slots.acquire(size, None))
            .await
            .expect(why)
    }

    /// Whether a request for `size` is still waiting after 20 ms (and gives up).
    async fn kept_waiting(slots: &TransferSlots, size: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(20), slots.acquire(size, None))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn big_blobs_go_biggest_first_small_ones_in_arrival_order() {
        let slots = Arc::new(TransferSlots::new(1, Arc::default()));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = slots.acquire(1, None).await;
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
        let slots = Arc::new(TransferSlots::new(8, Arc::default()));
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
        let slots = Arc::new(TransferSlots::new(4, Arc::default()));
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
        let slots = Arc::new(TransferSlots::new(4, Arc::default()));
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
        let slots = Arc::new(TransferSlots::new(2, Arc::default()));
        let a = slots.acquire(1, None).await;
        let b = slots.acquire(1, None).await;
        // Gives up while queued.
        assert!(kept_waiting(&slots, 99).await);
        drop(a);
        drop(b);
        // Both slots are free again: two acquisitions succeed at once, a third waits.
        let _c = granted(&slots, 1, "slot lost to a cancelled waiter").await;
        let _d = granted(&slots, 1, "slot lost to a cancelled waiter").await;
        assert!(kept_waiting(&slots, 1).await, "more than the limit at once");
    }

    fn digest(name: &str) -> Digest {
        crate::manifest::digest_of(name.as_bytes())
    }

    const MIB: u64 = 1024 * 1024;

    #[tokio::test]
    async fn while_a_small_request_is_out_transfers_stay_within_the_budget() {
        let small = Arc::new(SmallRequests::default());
        let slots = TransferSlots::new(8, Arc::clone(&small));
        let (a, b, c, d) = (digest("a"), digest("b"), digest("c"), digest("d"));
        let manifest = small.sent();
        let _a = slots.acquire(3 * MIB, Some(&a)).await;
        let _b = tokio::time::timeout(Duration::from_secs(1), slots.acquire(3 * MIB, Some(&b)))
            .await
            .expect("3 MiB asked is under the 4 MiB budget");
        let third = slots.acquire(3 * MIB, Some(&c));
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "6 MiB asked and a manifest out: a third transfer started"
        );
        // Half of what was asked arrives: 3 MiB left, under the budget.
        slots.received(&a, 3 * MIB);
        let _c = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("the transfer held back never started once bytes arrived");
        // No small request out: nothing to keep from waiting.
        drop(manifest);
        tokio::time::timeout(Duration::from_secs(1), slots.acquire(3 * MIB, Some(&d)))
            .await
            .expect("held back with no small request out");
    }

    /// A host whose shortest answer took 80 ms, and its transfer slots.
    async fn answered_in_80_ms() -> (Arc<SmallRequests>, TransferSlots) {
        let small = Arc::new(SmallRequests::default());
        let first = small.sent();
        tokio::time::advance(Duration::from_millis(80)).await;
        first.answered();
        let slots = TransferSlots::new(8, Arc::clone(&small));
        (small, slots)
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_halves_while_a_small_request_waits_long_and_doubles_otherwise() {
        let (small, slots) = answered_in_80_ms().await;
        let _manifest = small.sent();
        let budget = |arrive: u64| {
            let mut state = lock(&slots.state);
            state.set_budget(Instant::now());
            state.received += arrive;
            state.budget / MIB
        };
        assert_eq!(budget(0), 4, "starts at 4 MiB");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(0), 8, "the manifest out 100 ms (< 3 x 80): doubled");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(0), 16);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(0), 8, "out 300 ms: halved");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(0), 4);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(3 * MIB), 2);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            budget(0),
            9,
            "never under 3 x what arrived in the last round trip (3 MiB)"
        );
        for _ in 0..4 {
            tokio::time::advance(Duration::from_millis(100)).await;
            budget(0);
        }
        assert_eq!(budget(0), 1, "nor under 1 MiB");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_grows_past_64_mib_only_as_far_as_it_is_used() {
        let (small, slots) = answered_in_80_ms().await;
        let budget = || {
            let mut state = lock(&slots.state);
            state.set_budget(Instant::now());
            state.budget / MIB
        };
        budget();
        for _ in 0..10 {
            // Answered at once: no small request waits.
            small.sent().answered();
            tokio::time::advance(Duration::from_millis(100)).await;
            budget();
        }
        assert_eq!(budget(), 64, "unused, it stops at 64 MiB");
        lock(&slots.state).asked(&digest("a"), 100 * MIB);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(), 128, "100 MiB asked for: twice the budget");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget(), 200, "then twice what is asked for");
    }
}
