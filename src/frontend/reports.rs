//! What both front-ends report, encoded once. Model metadata and statistics take their one
//! wire shape, the KServe/Triton protobuf messages: gRPC returns them as they are, HTTP prints
//! them as Triton's JSON (`json`), so the two front-ends cannot report different fields. The
//! log settings become one list of keys both encode. The core's types are destructured
//! without `..`: a field added there fails to compile until it is encoded here.

use crate::core::{self, MemoryUsage, ModelMetadata, ModelStatistics};
use crate::model::config_json;
use crate::pb::inference::{self as pb, model_metadata_response::TensorMetadata};
use crate::telemetry::logging::LogSettings;
use crate::telemetry::stats::{BatchDur, Dur, StatsSnapshot};

/// A report message as Triton's HTTP front-end prints it (`name`: its full protobuf name).
pub(crate) fn json<M: prost::Message>(msg: &M, name: &str) -> serde_json::Value {
    config_json::message_to_json(msg, name)
}

pub(crate) fn model_metadata(m: ModelMetadata) -> pb::ModelMetadataResponse {
    let ModelMetadata {
        name,
        versions,
        platform,
        inputs,
        outputs,
    } = m;
    let tensors = |ts: Vec<core::TensorMetadata>| -> Vec<TensorMetadata> {
        ts.into_iter()
            .map(|t| {
                let core::TensorMetadata {
                    name,
                    datatype,
                    shape,
                } = t;
                TensorMetadata {
                    name,
                    datatype: datatype.to_string(),
                    shape,
                }
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name,
        versions,
        platform,
        inputs: tensors(inputs),
        outputs: tensors(outputs),
    }
}

fn dur(d: Dur) -> Option<pb::StatisticDuration> {
    let Dur { count, ns } = d;
    Some(pb::StatisticDuration { count, ns })
}

pub(crate) fn model_statistics(stats: Vec<ModelStatistics>) -> pb::ModelStatisticsResponse {
    let model_stats = stats
        .into_iter()
        .map(|m| {
            let ModelStatistics {
                name,
                version,
                stats,
                memory_usage,
            } = m;
            let StatsSnapshot {
                last_inference_ms,
                inference_count,
                execution_count,
                success,
                fail,
                queue,
                compute_input,
                compute_infer,
                compute_output,
                batches,
            } = stats;
            pb::ModelStatistics {
                name,
                version: version.to_string(),
                last_inference: last_inference_ms,
                inference_count,
                execution_count,
                inference_stats: Some(pb::InferStatistics {
                    success: dur(success),
                    fail: dur(fail),
                    queue: dur(queue),
                    compute_input: dur(compute_input),
                    compute_infer: dur(compute_infer),
                    compute_output: dur(compute_output),
                    cache_hit: dur(Dur::default()),
                    cache_miss: dur(Dur::default()),
                }),
                batch_stats: batches
                    .into_iter()
                    .map(|(batch_size, b)| {
                        let BatchDur {
                            compute_input,
                            compute_infer,
                            compute_output,
                        } = b;
                        pb::InferBatchStatistics {
                            batch_size,
                            compute_input: dur(compute_input),
                            compute_infer: dur(compute_infer),
                            compute_output: dur(compute_output),
                        }
                    })
                    .collect(),
                memory_usage: memory_usage
                    .into_iter()
                    .map(|u| {
                        let MemoryUsage {
                            kind,
                            id,
                            byte_size,
                        } = u;
                        pb::MemoryUsage {
                            r#type: kind.as_str().to_string(),
                            id,
                            byte_size,
                        }
                    })
                    .collect(),
                response_stats: Default::default(),
            }
        })
        .collect();
    pb::ModelStatisticsResponse { model_stats }
}

/// One log setting's value, as both front-ends report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogValue {
    Bool(bool),
    Uint32(u32),
    Str(String),
}

/// The log settings as Triton reports them: all six keys, always (grpc-protocol.md §4.12,
/// http-protocol.md §9.9).
pub(crate) fn log_settings(s: LogSettings) -> [(&'static str, LogValue); 6] {
    let LogSettings {
        file,
        info,
        warning,
        error,
        verbose_level,
        format,
    } = s;
    [
        ("log_file", LogValue::Str(file)),
        ("log_info", LogValue::Bool(info)),
        ("log_warning", LogValue::Bool(warning)),
        ("log_error", LogValue::Bool(error)),
        ("log_verbose_level", LogValue::Uint32(verbose_level)),
        ("log_format", LogValue::Str(format.as_str().to_string())),
    ]
}
