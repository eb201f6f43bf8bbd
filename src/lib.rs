//! Nereid: a Triton-compatible inference server for ONNX models.
//! The module map and its rules are in ARCHITECTURE.md (shared/); `unsafe` is allowed only
//! behind the ONNX Runtime door (`backend::ort`).
#![deny(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod core;
pub mod error;
pub mod frontend;
pub mod lifecycle;
pub mod model;
pub mod pb;
pub mod preprocess;
pub mod request;
pub mod scheduler;
pub mod server;
pub mod telemetry;
pub mod tensor;
pub mod validate;
