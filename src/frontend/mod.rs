//! Front-ends: wire ↔ core conversion. Each maps the one error vocabulary to its own statuses.

pub mod grpc;
pub mod http;

/// Client shared memory is off, as in Triton's newest release without `--allow-client-shm`
/// (behaviour.md E36); this server does not implement it at all yet. Both front-ends answer
/// UNSUPPORTED (gRPC UNIMPLEMENTED, HTTP 501) with this text.
pub const SHM_DISABLED: &str =
    "Client shared memory is disabled: this server does not support client shared memory yet.";
