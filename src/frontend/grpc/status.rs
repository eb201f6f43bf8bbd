//! The gRPC edge of the error vocabulary (grpc-protocol.md §8).

use tonic::metadata::MetadataValue;
use tonic::{Code as GrpcCode, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Code, Error};

pub(crate) fn grpc_code(code: Code) -> GrpcCode {
    match code {
        Code::Unknown => GrpcCode::Unknown,
        Code::Internal => GrpcCode::Internal,
        Code::NotFound => GrpcCode::NotFound,
        Code::InvalidArg => GrpcCode::InvalidArgument,
        Code::Unavailable => GrpcCode::Unavailable,
        Code::Unsupported => GrpcCode::Unimplemented,
        Code::AlreadyExists => GrpcCode::AlreadyExists,
        Code::Cancelled => GrpcCode::Cancelled,
    }
}

/// Overload rejections keep Triton's UNAVAILABLE and message (clients match on them) and add a
/// `google.rpc.RetryInfo` detail plus the `grpc-retry-pushback-ms` trailer gRPC retry policies read.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = grpc_code(e.code);
        let Some((_, retry)) = e.retry_hint() else {
            return Status::new(code, e.message);
        };
        let mut status =
            Status::with_error_details(code, e.message, ErrorDetails::with_retry_info(Some(retry)));
        if let Ok(v) = MetadataValue::try_from(retry.as_millis().to_string()) {
            status.metadata_mut().insert("grpc-retry-pushback-ms", v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_table() {
        let table = [
            (Code::Unknown, GrpcCode::Unknown),
            (Code::Internal, GrpcCode::Internal),
            (Code::NotFound, GrpcCode::NotFound),
            (Code::InvalidArg, GrpcCode::InvalidArgument),
            (Code::Unavailable, GrpcCode::Unavailable),
            (Code::Unsupported, GrpcCode::Unimplemented),
            (Code::AlreadyExists, GrpcCode::AlreadyExists),
            (Code::Cancelled, GrpcCode::Cancelled),
        ];
        for (ours, theirs) in table {
            let status = Status::from(Error {
                code: ours,
                message: "m".into(),
                rejection: None,
            });
            assert_eq!(status.code(), theirs);
            assert_eq!(status.message(), "m");
        }
    }

    #[test]
    fn rejections_carry_retry_info_and_pushback() {
        let e = Error::rejected(
            crate::error::Rejection::QueueFull,
            std::time::Duration::from_millis(250),
            "Exceeds maximum queue size",
        );
        let status = Status::from(e);
        assert_eq!(status.code(), GrpcCode::Unavailable);
        assert_eq!(status.message(), "Exceeds maximum queue size");
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "250"
        );
        let retry = status.get_details_retry_info().expect("RetryInfo detail");
        assert_eq!(
            retry.retry_delay,
            Some(std::time::Duration::from_millis(250))
        );
    }
}
