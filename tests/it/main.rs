//! Integration tests: each test starts the real server in-process on 127.0.0.1:0 and talks to it
//! over gRPC with the generated client and over HTTP with reqwest (ARCHITECTURE.md house rules 5
//! and 8). A test loads only the models it uses; scheduling tests that must hold an instance
//! busy run the server on the fake backend (`nereid::testing`, the `test-backend`
//! feature) and wait on what the server shows, never on the clock.

mod autocomplete;
mod batching;
mod common;
mod compression;
mod concurrency;
mod config_paths;
mod connections;
mod control;
mod datatypes;
mod drain;
mod early_refusal;
mod errors;
mod exit_timeout;
mod external_data;
mod fake;
mod health_metadata;
mod hostile;
mod hostile_configs;
mod http;
mod http_errors;
mod infer;
mod lifecycle;
mod load_cancel;
mod load_failures;
mod load_ratio;
mod metrics;
mod ort_threads;
mod overload;
mod ownership;
mod parity;
mod process;
mod repository;
mod rest;
mod restricted;
mod sequence;
mod sequence_drain;
mod sequence_errors;
mod sequence_state;
mod sequence_stream;
mod settings;
mod shm;
mod shm_client_asserts;
mod shm_leak;
mod statistics;
mod streaming;
mod text;
mod tls;
mod tracing;
mod versions;
