//! Front-ends: wire ↔ core conversion. Each maps the one error vocabulary to its own statuses.

pub mod grpc;
