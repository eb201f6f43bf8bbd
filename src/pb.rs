//! Generated protobuf and tonic code. Nothing hand-written lives here.
#![allow(clippy::all, missing_docs)]

pub mod inference {
    tonic::include_proto!("inference");
}

pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// Encoded `FileDescriptorSet` of everything in `proto/`, for text-format and JSON reflection.
pub static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
