//! The gRPC edge of the error vocabulary (grpc-protocol.md §8).

use tonic::{Code as GrpcCode, Status};

use crate::error::{Code, Error};

pub fn grpc_code(code: Code) -> GrpcCode {
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

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(grpc_code(e.code), e.message)
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
            });
            assert_eq!(status.code(), theirs);
            assert_eq!(status.message(), "m");
        }
    }
}
