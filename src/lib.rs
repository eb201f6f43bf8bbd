//! Nereid: a Triton-compatible inference server for ONNX models.
//! The map of the code is `docs/architecture.md`; `unsafe` is allowed only behind the ONNX
//! Runtime and CUDA doors (`backend::ort`, `backend::devices`).
//!
//! Every module is private to the crate (`pub(crate)` by default, `unreachable_pub` warns).
//! The public API is the short list below: what the binary and the integration tests use.
//! `internals` lends a few parsers and pieces to the fuzz targets and the benchmarks; it is not
//! an API.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod backend;
mod cli;
mod core;
mod error;
mod frontend;
mod lifecycle;
mod model;
pub mod pb;
mod preprocess;
mod request;
mod scheduler;
mod server;
mod shm;
mod telemetry;
mod tensor;
mod validate;

#[cfg(feature = "test-backend")]
pub use backend::testing;
pub use backend::{Backend, Runner};
pub use cli::{Cli, ServerConfig};
pub use core::Core;
pub use error::{Code, Error};
pub use frontend::grpc::compression::ResponseCompression;
pub use frontend::restrict::{Api, Group, Restrictions};
pub use frontend::tls::TlsFiles;
pub use lifecycle::manager::ControlMode;
pub use scheduler::QueueLimits;
pub use server::{Listeners, RunningServer, bind};
pub use telemetry::logging::init as init_logging;
pub use telemetry::trace::TraceConfig;

/// Not an API: the pieces the fuzz targets (`fuzz/`) and the benchmarks (`benches/`) drive
/// directly, named here so that the crate's modules can stay private.
#[doc(hidden)]
pub mod internals {
    pub use crate::backend::OrtBackend;
    pub use crate::frontend::grpc::head::{Head, find_head};
    pub use crate::frontend::http::compress::{Encoding, decompress};
    pub use crate::frontend::http::convert::{header_length, infer_request};
    pub use crate::model::ModelSpec;
    pub use crate::model::config::{fill_server_defaults, normalize, parse_pbtxt, read_config};
    pub use crate::model::config_json::to_json;
    pub use crate::model::spec::to_spec;
    pub use crate::model::text::ATTENTION_MASK;
    pub use crate::preprocess::post;
    pub use crate::preprocess::tokenizer::{Encoder, prepare};
    pub use crate::tensor::{DataType, Tensor, bytes_codec};
}
