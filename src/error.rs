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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub code: Code,
    pub message: String,
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
                Error { code: Code::$code, message: message.into() }
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
