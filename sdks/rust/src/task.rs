//! Durable tasks: the futures an orchestrator awaits, and their combinators.
//!
//! A [`DurableTask`] stands for work recorded in the history (an activity, a timer, a
//! sub-orchestration, an external event). Its action is scheduled the moment the task is
//! created, not when it is first polled, so action ids follow code order. It completes when the
//! replay engine delivers the matching history event to its *slot*.
//!
//! Slots register real wakers, so any future combinator works inside an orchestrator
//! (`futures::future::select`, `join!`, …) in addition to [`when_all`] and [`when_any`]. This
//! module must not touch the history or the action list; that is the replay engine's job.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;

use crate::error::{FailureDetails, TaskError, TaskKind};
use crate::payload;

/// What a history event delivers to a slot: the raw JSON result, or a failure.
pub(crate) type Outcome = Result<Option<String>, FailureDetails>;

/// The completion cell shared by a pending task and the replay engine.
#[derive(Default)]
pub(crate) struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    done: bool,
}

pub(crate) type SlotRef = Rc<RefCell<Slot>>;

pub(crate) fn new_slot() -> SlotRef {
    Rc::new(RefCell::new(Slot::default()))
}

/// A slot that is already complete (e.g. a buffered external event).
pub(crate) fn ready_slot(outcome: Outcome) -> SlotRef {
    Rc::new(RefCell::new(Slot { outcome: Some(outcome), waker: None, done: true }))
}

/// Completes a slot and wakes its task. Returns `false` if it was already complete (a
/// duplicate or late result, which is ignored).
pub(crate) fn complete(slot: &SlotRef, outcome: Outcome) -> bool {
    let waker = {
        let mut s = slot.borrow_mut();
        if s.done {
            return false;
        }
        s.done = true;
        s.outcome = Some(outcome);
        s.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
    true
}

pub(crate) fn is_complete(slot: &SlotRef) -> bool {
    slot.borrow().done
}

/// Future over a slot.
pub(crate) struct SlotFuture(pub(crate) SlotRef);

impl Future for SlotFuture {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut s = self.0.borrow_mut();
        match s.outcome.take() {
            Some(o) => Poll::Ready(o),
            None if s.done => Poll::Pending, // already taken: polled after completion
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Decodes a slot's outcome into a typed task result.
pub(crate) fn decode_outcome<T: DeserializeOwned>(
    outcome: Outcome,
    kind: TaskKind,
    name: &str,
) -> Result<T, TaskError> {
    match outcome {
        Ok(raw) => payload::decode(raw.as_deref())
            .map_err(|e| TaskError::Deserialize { name: name.to_string(), message: e.to_string() }),
        Err(details) => Err(TaskError::Failed { kind, name: name.to_string(), details }),
    }
}

/// A durable operation started by an orchestrator: await it for its result.
///
/// Created by the [`OrchestrationContext`](crate::OrchestrationContext) methods. The work is
/// already recorded when you hold the task; awaiting only waits for the result, so starting
/// several tasks before awaiting any runs them in parallel.
///
/// ```no_run
/// # use duro_sdk::{OrchestrationContext, DurableTask, Failure};
/// # async fn orchestrator(ctx: OrchestrationContext) -> Result<u32, Failure> {
/// let a: DurableTask<u32> = ctx.call_activity("Count", "a");
/// let b: DurableTask<u32> = ctx.call_activity("Count", "b"); // runs concurrently with `a`
/// Ok(a.await? + b.await?)
/// # }
/// ```
#[must_use = "a durable task does nothing useful unless awaited"]
pub struct DurableTask<T> {
    inner: LocalBoxFuture<'static, Result<T, TaskError>>,
}

impl<T: 'static> DurableTask<T> {
    pub(crate) fn new(fut: impl Future<Output = Result<T, TaskError>> + 'static) -> Self {
        DurableTask { inner: Box::pin(fut) }
    }

    pub(crate) fn ready(result: Result<T, TaskError>) -> Self {
        DurableTask::new(std::future::ready(result))
    }

    pub(crate) fn from_slot(slot: SlotRef, kind: TaskKind, name: String) -> Self
    where
        T: DeserializeOwned,
    {
        DurableTask::new(async move { decode_outcome(SlotFuture(slot).await, kind, &name) })
    }

    /// Transforms the successful result (e.g. to race tasks of different types with
    /// [`when_any`]).
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure};
    /// # use std::time::Duration;
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<bool, Failure> {
    /// let work = ctx.call_activity::<String>("Slow", ()).map(|_| true);
    /// let deadline = ctx.create_timer(Duration::from_secs(60)).map(|_| false);
    /// let (_, finished_in_time) = ctx.when_any(vec![work, deadline]).await;
    /// Ok(finished_in_time?)
    /// # }
    /// ```
    pub fn map<U: 'static>(self, f: impl FnOnce(T) -> U + 'static) -> DurableTask<U> {
        DurableTask::new(async move { self.await.map(f) })
    }
}

impl<T> Future for DurableTask<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for DurableTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DurableTask")
    }
}

/// Waits for all tasks; resolves to their results in the order given, or to the first
/// failure (in completion order) as soon as one fails.
///
/// ```no_run
/// # use duro_sdk::{OrchestrationContext, Failure, when_all};
/// # async fn orchestrator(ctx: OrchestrationContext) -> Result<u32, Failure> {
/// let tasks = (0..10).map(|i| ctx.call_activity::<u32>("Square", i)).collect::<Vec<_>>();
/// let squares = when_all(tasks).await?;
/// Ok(squares.iter().sum())
/// # }
/// ```
pub fn when_all<T: 'static>(tasks: impl IntoIterator<Item = DurableTask<T>>) -> DurableTask<Vec<T>> {
    let mut set = FuturesUnordered::new();
    let mut n = 0usize;
    for (i, t) in tasks.into_iter().enumerate() {
        set.push(async move { (i, t.await) });
        n += 1;
    }
    DurableTask::new(async move {
        let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
        while let Some((i, r)) = set.next().await {
            results[i] = Some(r?);
        }
        Ok(results.into_iter().flatten().collect())
    })
}

/// The future returned by [`when_any`]: resolves to the index of the first task to finish
/// and that task's result.
#[must_use = "futures do nothing unless awaited"]
pub struct WhenAny<T> {
    inner: LocalBoxFuture<'static, (usize, Result<T, TaskError>)>,
}

impl<T> Future for WhenAny<T> {
    type Output = (usize, Result<T, TaskError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// Waits for the first task to finish (successfully or not) and returns its index and result.
/// The other tasks keep their recorded actions; their results are ignored. An empty list
/// never finishes.
///
/// ```no_run
/// # use duro_sdk::{OrchestrationContext, Failure, when_any};
/// # use std::time::Duration;
/// # async fn orchestrator(ctx: OrchestrationContext) -> Result<String, Failure> {
/// let approval = ctx.wait_for_external_event::<String>("Approval");
/// let timeout = ctx.create_timer(Duration::from_secs(3600)).map(|()| "timed out".to_string());
/// let (winner, result) = when_any(vec![approval, timeout]).await;
/// Ok(format!("winner {winner}: {}", result?))
/// # }
/// ```
pub fn when_any<T: 'static>(tasks: impl IntoIterator<Item = DurableTask<T>>) -> WhenAny<T> {
    let mut set = FuturesUnordered::new();
    for (i, t) in tasks.into_iter().enumerate() {
        set.push(async move { (i, t.await) });
    }
    WhenAny {
        inner: Box::pin(async move {
            match set.next().await {
                Some(first) => first,
                None => std::future::pending().await,
            }
        }),
    }
}
