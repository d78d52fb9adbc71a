//! The worker pool of a run: tags run `concurrency` at a time, started in priority order, and a
//! stop request ends the starting; running tags get the grace period (or none, on a stop
//! "now"), then they are abandoned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::Engine;
use crate::config::SyncItem;
use crate::signals::RunControl;

impl Engine {
    /// Runs `work` for each item, `concurrency` at a time, on the runtime's threads. Items not
    /// started when a stop is requested give `None`; items still running a grace period after
    /// the stop are abandoned and give `None` too.
    pub(super) async fn for_each_item<F, Fut, T>(
        self: &Arc<Self>,
        items: &[SyncItem],
        control: &RunControl,
        work: F,
    ) -> Vec<Option<Result<T, String>>>
    where
        F: Fn(Arc<Engine>, SyncItem, usize) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let limit = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = HashMap::new();
        // Permits are taken here, in list order, so work starts in priority order however the
        // runtime schedules tasks; a stop ends the starting.
        for (k, item) in items.iter().enumerate() {
            let permit = tokio::select! {
                permit = Arc::clone(&limit).acquire_owned() => permit.ok(),
                _ = control.stop.cancelled() => None,
            };
            let Some(permit) = permit else {
                break;
            };
            let fut = work(Arc::clone(self), item.clone(), k);
            let handle = tasks.spawn(async move {
                let _permit = permit;
                (k, Some(fut.await))
            });
            ids.insert(handle.id(), k);
        }
        let mut out: Vec<Option<Result<T, String>>> = (0..items.len()).map(|_| None).collect();
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut abandoned = false;
        loop {
            let next = match deadline {
                None => tokio::select! {
                    joined = tasks.join_next() => joined,
                    _ = control.stop.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + control.grace);
                        continue;
                    }
                },
                Some(at) => tokio::select! {
                    joined = tasks.join_next() => joined,
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
                Some(Ok((k, value))) => out[k] = value.map(Ok),
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a sync task panicked");
                    if let Some(k) = ids.get(&e.id()) {
                        out[*k] = Some(Err(format!("internal error: {e}")));
                    }
                }
            }
        }
        out
    }
}
