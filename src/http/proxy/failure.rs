//! Why a gateway call got no answer, as the use's error and the engine's
//! problem.

use super::body::BodyFault;
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
        fault: &BodyFault,
        denied: impl Fn() -> ApiError,
        body_problem: impl Fn(&'static str) -> ApiError,
    ) -> (&'static str, ApiError) {
        let e = match self {
            // The engine's own streamed body fell silent first.
            Failure::Timeout if fault.waiting_for_engine() => {
                return ("body_incomplete", body_problem("body_incomplete"));
            }
            Failure::Timeout => {
                return (
                    "timeout",
                    ApiError::Provider("the service did not answer in time".into()),
                )
            }
            Failure::Sent(e) => e,
        };
        if let Some(error) = fault.error() {
            return (error, body_problem(error));
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
