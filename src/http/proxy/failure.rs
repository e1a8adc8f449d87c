//! Why a gateway call got no answer, as the use's error and the engine's
//! problem.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::http::error::ApiError;

/// Why a call got no answer.
pub(super) enum Failure {
    Sent(hyper_util::client::legacy::Error),
    /// No answer's head within the first-byte time limit.
    Timeout,
}

impl Failure {
    /// The use's error and the engine's problem.
    pub(super) fn explained(
        self,
        over: &AtomicBool,
        denied: impl Fn() -> ApiError,
        too_large: impl Fn() -> ApiError,
    ) -> (&'static str, ApiError) {
        let e = match self {
            Failure::Timeout => {
                return (
                    "timeout",
                    ApiError::Provider("the service did not answer in time".into()),
                )
            }
            Failure::Sent(e) => e,
        };
        if over.load(Ordering::Relaxed) {
            return ("body_too_large", too_large());
        }
        let mut timed_out = false;
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if s.downcast_ref::<crate::egress::EgressError>().is_some() {
                return ("egress_denied", denied());
            }
            timed_out |= s
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
            source = s.source();
        }
        if timed_out {
            (
                "timeout",
                ApiError::Provider("the service did not answer in time".into()),
            )
        } else {
            (
                "unreachable",
                ApiError::Provider("the service could not be reached".into()),
            )
        }
    }
}
