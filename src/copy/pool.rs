//! The worker pool of a run: tags start in priority order as slots free up, copies take their
//! slots in that order too ([`Turns`]), and a stop request ends the starting; running tags get
//! the grace period (or none, on a stop "now"), then they are abandoned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Engine;
use crate::config::SyncItem;
use crate::signals::RunControl;

impl Engine {
    /// Runs `work` for each item on the runtime's threads, starting them in `order` (positions
    /// in `items`; `work` sees position `k` of `order`, the result is filed per item, in the order
    /// of `items`, so no caller has to sort a copy of it back) as one of
    /// `limit` slots frees up; `work` gets its slot and may give it back before it ends. Items
    /// not started when a stop is requested give `None`; items still running a grace period
    /// after the stop are abandoned and give `None` too.
    pub(super) async fn for_each_item<F, Fut, T>(
        self: &Arc<Self>,
        items: &[SyncItem],
        order: &[usize],
        control: &RunControl,
        limit: usize,
        work: F,
    ) -> Vec<Option<Result<T, String>>>
    where
        F: Fn(Arc<Engine>, SyncItem, usize, OwnedSemaphorePermit) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let limit = Arc::new(Semaphore::new(limit.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = HashMap::new();
        let mut out: Vec<Option<Result<T, String>>> = (0..items.len()).map(|_| None).collect();
        // Permits are taken here, in list order, so work starts in priority order however the
        // runtime schedules tasks; a stop ends the starting. Finished tasks are reaped while
        // starting: a task's memory (sized for its whole future) is freed only when it is
        // joined, so a list of 10,000 tags would otherwise hold 10,000 finished tasks.
        for (k, &i) in order.iter().enumerate() {
            let permit = loop {
                tokio::select! {
                    biased;
                    Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                        take_joined(joined, &mut ids, &mut out);
                    }
                    _ = control.stop.cancelled() => break None,
                    permit = Arc::clone(&limit).acquire_owned() => break permit.ok(),
                }
            };
            let Some(permit) = permit else {
                break;
            };
            let fut = work(Arc::clone(self), items[i].clone(), k, permit);
            let handle = tasks.spawn(async move { (i, Some(fut.await)) });
            ids.insert(handle.id(), i);
        }
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut abandoned = false;
        loop {
            let next = match deadline {
                None => tokio::select! {
                    joined = tasks.join_next_with_id() => joined,
                    _ = control.stop.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + control.grace);
                        continue;
                    }
                },
                Some(at) => tokio::select! {
                    joined = tasks.join_next_with_id() => joined,
                    _ = tokio::time::sleep_until(at) => {
                        tracing::warn!(running = tasks.len(), "grace period over; abandoning running tags");
                        tasks.abort_all();
                        deadline = Some(at + Duration::from_secs(3600));
                        continue;
                    }
                    _ = control.now.cancelled(), if !abandoned => {
                        tasks.abort_all();
                        abandoned = true;
                        continue;
                    }
                },
            };
            match next {
                None => break,
                Some(joined) => take_joined(joined, &mut ids, &mut out),
            }
        }
        out
    }
}

/// Files a joined task's value under its position: its output, nothing when it was cancelled
/// (abandoned), or an internal error when it panicked.
fn take_joined<T>(
    joined: Result<(tokio::task::Id, (usize, Option<T>)), tokio::task::JoinError>,
    ids: &mut HashMap<tokio::task::Id, usize>,
    out: &mut [Option<Result<T, String>>],
) {
    match joined {
        Ok((id, (k, value))) => {
            ids.remove(&id);
            out[k] = value.map(Ok);
        }
        Err(e) if e.is_cancelled() => {}
        Err(e) => {
            tracing::error!(error = %e, "a sync task panicked");
            if let Some(k) = ids.remove(&e.id()) {
                out[k] = Some(Err(format!("internal error: {e}")));
            }
        }
    }
}

/// The order in which changed tags take copy slots: position `k` may take one once every
/// position before it has passed (taken its slot, needed none, or ended), so copies start in
/// priority order however the inspections before them finish.
#[derive(Default)]
pub(super) struct Turns {
    state: std::sync::Mutex<TurnState>,
}

#[derive(Default)]
struct TurnState {
    /// The first position not passed yet.
    first: usize,
    /// Positions after `first` that have passed.
    passed: std::collections::BTreeSet<usize>,
    /// Who waits for which position's turn: woken one by one as `first` reaches them, so a pass
    /// costs the positions it releases, not one wake-up of every waiting tag.
    waiting: std::collections::BTreeMap<usize, tokio::sync::oneshot::Sender<()>>,
}

/// Position `k`'s turn; dropping it passes it.
pub(super) struct Turn {
    turns: Arc<Turns>,
    k: usize,
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Turn {
    pub(super) fn new(turns: Arc<Turns>, k: usize) -> Self {
        Turn { turns, k }
    }

    /// Waits until every position before this one has passed.
    pub(super) async fn wait(&self) {
        let woken = {
            let mut state = self.turns.lock();
            if state.first >= self.k {
                return;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            state.waiting.insert(self.k, tx);
            rx
        };
        let _ = woken.await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self.turns.lock();
        let state = &mut *state;
        state.waiting.remove(&self.k);
        state.passed.insert(self.k);
        while state.passed.remove(&state.first) {
            state.first += 1;
        }
        let later = state.waiting.split_off(&(state.first + 1));
        for (_, tx) in std::mem::replace(&mut state.waiting, later) {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_turn_comes_when_every_earlier_position_has_passed_in_any_order() {
        let turns = Arc::new(Turns::default());
        let mut held: Vec<Option<Turn>> = (0..4)
            .map(|k| Some(Turn::new(Arc::clone(&turns), k)))
            .collect();
        let third = held[3].take().unwrap();
        let waiting = tokio::spawn(async move {
            third.wait().await;
        });
        // Positions 2, 0 and 1 pass out of order; 3 may go only after all three.
        for k in [2, 0] {
            held[k].take();
            tokio::task::yield_now().await;
            assert!(
                !waiting.is_finished(),
                "turn 3 came after only some earlier positions passed"
            );
        }
        held[1].take();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("turn 3 never came")
            .unwrap();
    }
}
