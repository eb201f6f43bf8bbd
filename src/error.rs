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

/// Why the server refused a request it could not take (overload control). Each is counted
/// separately and carries a retry hint to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The model's queue (or its priority level's share of it) is full.
    QueueFull,
    /// The request's deadline cannot be met at the current drain rate.
    DeadlineUnmeetable,
    /// Lower priorities are refused while the queue is past its high-water mark.
    ShedByPriority,
    /// The model has no ready version (loading, unloading, failed).
    ModelNotReady,
    /// The server is shutting down.
    ServerDraining,
    /// The server-wide cap on requests (or request bytes) in flight is reached.
    ServerBusy,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::QueueFull,
        Rejection::DeadlineUnmeetable,
        Rejection::ShedByPriority,
        Rejection::ModelNotReady,
        Rejection::ServerDraining,
        Rejection::ServerBusy,
    ];

    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::DeadlineUnmeetable => "deadline",
            Rejection::ShedByPriority => "shed_priority",
            Rejection::ModelNotReady => "model_not_ready",
            Rejection::ServerDraining => "server_draining",
            Rejection::ServerBusy => "server_busy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// Set for overload rejections: why, and when a retry may succeed.
    pub rejection: Option<(Rejection, std::time::Duration)>,
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

    /// An UNAVAILABLE overload rejection with its reason and retry hint.
    pub fn rejected(
        reason: Rejection,
        retry_after: std::time::Duration,
        message: impl Into<String>,
    ) -> Self {
        Error {
            code: Code::Unavailable,
            message: message.into(),
            rejection: Some((reason, retry_after)),
        }
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
