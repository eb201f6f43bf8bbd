//! One error vocabulary for the whole server. Front-ends translate it at the edge
//! (`frontend::grpc::status`), nothing else knows about wire status codes.

use std::fmt;

/// Triton's error codes. Each front-end maps these exhaustively to its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Unknown,
    Internal,
    NotFound,
    InvalidArg,
    Unavailable,
    Unsupported,
    AlreadyExists,
    Cancelled,
}

impl Code {
    /// The text Triton puts before a reason in the repository index ("Invalid argument: ...").
    pub fn text(self) -> &'static str {
        match self {
            Code::Unknown => "Unknown",
            Code::Internal => "Internal",
            Code::NotFound => "Not found",
            Code::InvalidArg => "Invalid argument",
            Code::Unavailable => "Unavailable",
            Code::Unsupported => "Unsupported",
            Code::AlreadyExists => "Already exists",
            Code::Cancelled => "Cancelled",
        }
    }
}

/// Declares a fieldless enum whose values are a metric label's values, with `ALL` (every value,
/// in declaration order), `label()` and `index()` (the position in `ALL`) generated from one
/// list, so that a counter per value can be built by iterating `ALL` and found by `index()`
/// without a second list to keep in step.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];

            /// The metric label value.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// The position of this value in `ALL`.
            pub const fn index(self) -> usize {
                // No explicit discriminants: they count from 0 in declaration order, as `ALL` does.
                self as usize
            }
        }
    };
}
pub(crate) use label_enum;

label_enum! {
    /// Why the server refused a request it never accepted: the one list of refusal reasons.
    /// `Core` counts every refusal once, by this reason (`reason` label of
    /// `nereid_inference_request_rejected_total`, in this order). An overload reason
    /// (`is_overload`) carries a retry hint (`Error::rejected` makes it UNAVAILABLE); the others
    /// keep their error's code and carry none (`Error::refused`).
    pub enum Rejection {
        /// The model's queue (or its priority level's share of it) is full.
        QueueFull => "queue_full",
        /// The request failed validation.
        Invalid => "invalid",
        /// The model's scheduler has stopped taking requests (its version is going away).
        Stopping => "stopping",
        /// The request's deadline cannot be met at the current drain rate.
        DeadlineUnmeetable => "deadline",
        /// Lower priorities are refused while the queue is past its high-water mark.
        ShedByPriority => "shed_priority",
        /// The model has no ready version (loading, unloading, failed).
        ModelNotReady => "model_not_ready",
        /// The server is shutting down.
        ServerDraining => "server_draining",
        /// The server-wide cap on requests (or request bytes) in flight is reached.
        ServerBusy => "server_busy",
        /// Larger than `--max-inflight-bytes`: it could never be admitted.
        TooLarge => "too_large",
    }
}

impl Rejection {
    /// Whether the same request may succeed later (the server is loaded, starting or
    /// stopping): such a refusal is UNAVAILABLE and carries a retry hint. An invalid or
    /// too-large request would be refused again, and a stopped scheduler answers with
    /// Triton's own UNAVAILABLE, which has no hint.
    pub const fn is_overload(self) -> bool {
        match self {
            Rejection::QueueFull
            | Rejection::DeadlineUnmeetable
            | Rejection::ShedByPriority
            | Rejection::ModelNotReady
            | Rejection::ServerDraining
            | Rejection::ServerBusy => true,
            Rejection::Invalid | Rejection::Stopping | Rejection::TooLarge => false,
        }
    }

    /// Whether the time from arrival to this refusal is observed in
    /// `nereid_inference_rejection_duration_seconds`: refusals decided by the server's
    /// admission limits (every overload reason, and a request past the in-flight byte cap).
    pub const fn is_timed(self) -> bool {
        match self {
            Rejection::Invalid | Rejection::Stopping => false,
            Rejection::QueueFull
            | Rejection::DeadlineUnmeetable
            | Rejection::ShedByPriority
            | Rejection::ModelNotReady
            | Rejection::ServerDraining
            | Rejection::ServerBusy
            | Rejection::TooLarge => true,
        }
    }
}

/// A refusal: why, and for an overload reason when a retry may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Rejection,
    /// Set exactly when `reason.is_overload()`.
    pub retry_after: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// Set when the request was refused before being accepted (see `Rejection`).
    pub rejection: Option<Refusal>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

macro_rules! ctor {
    ($($fn_name:ident => $code:ident),* $(,)?) => {
        impl Error {
            $(pub fn $fn_name(message: impl Into<String>) -> Self {
                Error { code: Code::$code, message: message.into(), rejection: None }
            })*
        }
    };
}

ctor! {
    unknown => Unknown,
    internal => Internal,
    not_found => NotFound,
    invalid_arg => InvalidArg,
    unavailable => Unavailable,
    unsupported => Unsupported,
    already_exists => AlreadyExists,
    cancelled => Cancelled,
}

impl Error {
    pub fn code(&self) -> Code {
        self.code
    }

    /// An UNAVAILABLE overload refusal with its reason and retry hint.
    pub fn rejected(
        reason: Rejection,
        retry_after: std::time::Duration,
        message: impl Into<String>,
    ) -> Self {
        Error::unavailable(message).refused(reason, Some(retry_after))
    }

    /// Marks this error as a refusal for `reason`, with a retry hint exactly when the reason is
    /// an overload; code and message stay.
    pub fn refused(self, reason: Rejection, retry_after: Option<std::time::Duration>) -> Self {
        debug_assert_eq!(
            retry_after.is_some(),
            reason.is_overload(),
            "{reason:?}: a retry hint goes with an overload reason, and only with one"
        );
        Error {
            rejection: Some(Refusal {
                reason,
                retry_after,
            }),
            ..self
        }
    }

    /// Why the request was refused, if it was.
    pub fn refusal_reason(&self) -> Option<Rejection> {
        self.rejection.map(|r| r.reason)
    }

    /// An overload refusal's reason and retry hint, for the front-ends.
    pub fn retry_hint(&self) -> Option<(Rejection, std::time::Duration)> {
        let r = self.rejection?;
        Some((r.reason, r.retry_after?))
    }

    /// "<Code text>: <message>", the form Triton uses for load-failure reasons.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.code.text(), self.message)
    }

    /// Prefixes the message with Triton's "[request id: <id>] " marker.
    pub fn with_request_id(mut self, id: &str) -> Self {
        let id = if id.is_empty() { "<id_unknown>" } else { id };
        self.message = format!("[request id: {id}] {}", self.message);
        self
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_rejection_has_its_place_and_a_distinct_label() {
        for (i, r) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = Rejection::ALL.map(Rejection::label).to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Rejection::ALL.len());
    }

    #[test]
    fn only_overload_refusals_carry_a_retry_hint() {
        let busy = Error::rejected(Rejection::ServerBusy, Duration::from_millis(10), "busy");
        assert_eq!(busy.code, Code::Unavailable);
        assert_eq!(
            busy.retry_hint(),
            Some((Rejection::ServerBusy, Duration::from_millis(10)))
        );
        let invalid = Error::invalid_arg("bad").refused(Rejection::Invalid, None);
        assert_eq!(invalid.code, Code::InvalidArg);
        assert_eq!(invalid.refusal_reason(), Some(Rejection::Invalid));
        assert_eq!(invalid.retry_hint(), None);
        assert_eq!(Error::internal("x").refusal_reason(), None);
    }
}
