//! Compiles `proto/` with protox (pure Rust, no protoc binary) into tonic server and client code,
//! and writes the descriptor set that `model::config` uses to parse `config.pbtxt` text format.
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/model_config.proto",
    "proto/grpc_service.proto",
    "proto/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Tensor payloads stay `Bytes` so a request's raw data is never copied on decode.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .compile_fds(fds)?;
    Ok(())
}
