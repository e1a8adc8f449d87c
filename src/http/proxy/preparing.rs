//! A call's preparation (its use written), driven by its request, and
//! finished on a task of its own when the request goes away first: a use
//! recorded never lacks its outcome.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use axum::http::Method;

use super::AppState;
use crate::gateway::Call;
use crate::group_commit::OutcomeLog;
use crate::ids::CredentialId;
use crate::model::Principal;
use crate::store::{Usage, UseOutcome};

/// What preparing a call ends with.
type Prepared = Result<Call, crate::error::Error>;

/// A call being prepared (its use written), driven by its request. Dropped
/// before it is done (the engine went away), it is driven to its end on a
/// task of its own, and a use it records gets its outcome, `abandoned`:
/// the call never leaves, and a use without an outcome would read as one
/// that went through.
pub(super) struct Preparing {
    future: Option<Pin<Box<dyn Future<Output = Prepared> + Send>>>,
    outcomes: OutcomeLog,
}

impl Preparing {
    pub(super) fn new(
        state: &AppState,
        principal: Principal,
        credential: CredentialId,
        usage: Usage,
        (method, path, query): (&Method, &str, Option<&str>),
    ) -> Self {
        let ctx = state.clone();
        let asked = (method.as_str().to_owned(), path.to_owned(), query.map(str::to_owned));
        Self {
            future: Some(Box::pin(async move {
                let (method, path, query) = asked;
                crate::gateway::prepare(
                    &ctx,
                    &principal,
                    &credential,
                    &usage,
                    (&method, &path, query.as_deref()),
                )
                .await
            })),
            outcomes: state.outcomes.clone(),
        }
    }
}

impl Future for Preparing {
    type Output = Prepared;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let future = self.future.as_mut().expect("not polled after it is done");
        let done = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(done)
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        // A stopping server waits for the outcome promised here.
        let promised = self.outcomes.promise();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(call) = future.await {
                    let abandoned = crate::gateway::use_outcome(&call.resolved, None, Some("abandoned"));
                    promised.enqueue(abandoned).await;
                }
            });
        }
    }
}

/// The outcome still to come of `call`'s use.
pub(super) fn pending(call: &Call) -> UseOutcome {
    crate::gateway::use_outcome(&call.resolved, None, None)
}
