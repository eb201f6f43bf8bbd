//! Integration tests: each test starts the real server in-process on 127.0.0.1:0 and talks to it
//! over gRPC with the generated client (ARCHITECTURE.md house rules 5 and 8).

mod autocomplete;
mod batching;
mod common;
mod concurrency;
mod control;
mod datatypes;
mod errors;
mod health_metadata;
mod infer;
mod lifecycle;
mod load_failures;
mod repository;
mod statistics;
mod text;
mod versions;
