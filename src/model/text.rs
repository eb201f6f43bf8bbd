//! The text settings of a text model: a config that names a `tokenizer` in its `parameters`
//! takes UTF-8 texts and the server tokenizes them (`preprocess`). `TextSpec` is those settings,
//! checked against the config's inputs/outputs and, at load, against the model file's
//! declared inputs/outputs (`ModelIo`).

use std::path::PathBuf;

use super::config::ModelConfig;
use super::io::ModelIo;
use crate::error::{Error, Result};
use crate::tensor::{DataType, shape_string};

pub(crate) const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub(crate) const TOKEN_TYPE_IDS: &str = "token_type_ids";

/// Used when neither the config (`max_length`) nor the tokenizer file sets a length.
pub(crate) const DEFAULT_MAX_LENGTH: usize = 512;
/// Longest text accepted before tokenizing, in bytes, unless `max_text_bytes` says otherwise.
pub(crate) const DEFAULT_MAX_TEXT_BYTES: usize = 1 << 20;

/// Every parameter key this module reads; any of them without `tokenizer` is a config error.
const KEYS: &[&str] = &[
    "tokenizer",
    "max_length",
    "truncation",
    "padding",
    "pooling",
    "normalize",
    "max_batch_tokens",
    "max_padding_ratio",
    "max_text_bytes",
    "tokenizer_threads",
    "model_output",
];

/// What happens to a text with more tokens than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Keep the first `max_length` tokens (special tokens included), as HF pipelines do.
    Truncate,
    /// Refuse the request, naming the text and its token count.
    Reject,
}

/// How far rows are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest row of the batch (requests of different lengths batch together).
    Longest,
    /// Always to `max_length` (for graphs with a fixed sequence dimension).
    MaxLength,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The graph's token output as is, trimmed to each request's own token length.
    None,
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    None,
    /// Each output vector (the last dimension) scaled to unit Euclidean length.
    L2,
}

/// A text model's settings. Parsed from the config by `from_config`; the fields marked "at load"
/// are filled by `tokenizer::prepare` from the tokenizer file and the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    /// The BYTES config input: one UTF-8 text per batch row (dims `[1]`).
    pub input: String,
    /// The config output clients receive.
    pub output: String,
    /// The tokenizer.json file (in the model folder).
    pub tokenizer: PathBuf,
    /// Most tokens per text, special tokens included. 0 in the config = the tokenizer file's own
    /// truncation length, else `DEFAULT_MAX_LENGTH` (resolved at load).
    pub max_length: usize,
    pub truncation: Truncation,
    pub padding: Padding,
    pub pooling: Pooling,
    pub normalize: Normalize,
    /// Most padded tokens (rows × longest row) in one batch; 0 = only `max_batch_size` limits.
    pub max_batch_tokens: usize,
    /// Most padded tokens per real token when requests join a batch (≥ 1); 0 = no limit.
    pub max_padding_ratio: f64,
    pub max_text_bytes: usize,
    /// Tokenizer threads; 0 = a quarter of the cores, 1 to 4.
    pub threads: usize,
    /// The graph output that post-processing reads (at load, when the config does not name it).
    pub graph_output: String,
    /// Whether the graph takes `token_type_ids` (at load).
    pub token_type_ids: bool,
    /// Padding values for `input_ids` and `token_type_ids`, from the tokenizer file (at load).
    pub pad_id: i64,
    pub pad_type_id: i64,
}

impl TextSpec {
    /// `None` when the config names no tokenizer. Checks the parameters and the config's own
    /// inputs and outputs; the graph is checked at load by `bind_graph`.
    pub fn from_config(cfg: &ModelConfig, model_dir: &std::path::Path) -> Result<Option<TextSpec>> {
        let model = &cfg.name;
        let param = |key: &str| {
            cfg.parameters
                .get(key)
                .map(|p| p.string_value.trim().to_string())
        };
        let Some(tokenizer) = param("tokenizer") else {
            if let Some(key) = KEYS.iter().find(|k| cfg.parameters.contains_key(**k)) {
                return Err(Error::invalid_arg(format!(
                    "model '{model}' sets parameter '{key}' but no 'tokenizer'; text preprocessing needs parameters {{ key: \"tokenizer\" value: {{ string_value: \"tokenizer.json\" }} }}"
                )));
            }
            return Ok(None);
        };
        let bad = |key: &str, want: &str, got: &str| {
            Error::invalid_arg(format!(
                "parameter '{key}' of model '{model}' must be {want}, got '{got}'"
            ))
        };
        let choice = |key: &str, options: &[&str]| -> Result<Option<usize>> {
            match param(key) {
                None => Ok(None),
                Some(v) => options
                    .iter()
                    .position(|o| v.eq_ignore_ascii_case(o))
                    .map(Some)
                    .ok_or_else(|| bad(key, &format!("one of {}", options.join(", ")), &v)),
            }
        };
        let number = |key: &str, default: usize, min: usize| -> Result<usize> {
            match param(key) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= min)
                    .ok_or_else(|| bad(key, &format!("an integer >= {min}"), &v)),
            }
        };
        if tokenizer.is_empty() {
            return Err(bad("tokenizer", "a file name in the model folder", ""));
        }
        let truncation = match choice("truncation", &["truncate", "reject"])? {
            Some(1) => Truncation::Reject,
            _ => Truncation::Truncate,
        };
        let padding = match choice("padding", &["longest", "max_length"])? {
            Some(1) => Padding::MaxLength,
            _ => Padding::Longest,
        };
        let pooling = match choice("pooling", &["none", "mean", "cls"])? {
            Some(1) => Pooling::Mean,
            Some(2) => Pooling::Cls,
            _ => Pooling::None,
        };
        let normalize = match choice("normalize", &["none", "l2"])? {
            Some(1) => Normalize::L2,
            _ => Normalize::None,
        };
        let spec = TextSpec {
            input: String::new(),
            output: String::new(),
            tokenizer: super::paths::inside(model_dir, model, "tokenizer", &tokenizer)?,
            max_length: number("max_length", 0, 2)?,
            truncation,
            padding,
            pooling,
            normalize,
            max_batch_tokens: number("max_batch_tokens", 0, 1)?,
            max_padding_ratio: match param("max_padding_ratio") {
                None => 0.0,
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|r| *r == 0.0 || (*r >= 1.0 && r.is_finite()))
                    .ok_or_else(|| {
                        bad("max_padding_ratio", "0 (no limit) or a number >= 1.0", &v)
                    })?,
            },
            max_text_bytes: number("max_text_bytes", DEFAULT_MAX_TEXT_BYTES, 1)?,
            threads: number("tokenizer_threads", 0, 1)?,
            graph_output: param("model_output").unwrap_or_default(),
            token_type_ids: false,
            pad_id: 0,
            pad_type_id: 0,
        };
        spec.with_config_io(cfg).map(Some)
    }

    /// The config side: a batching model with one TYPE_STRING input of dims [1] and one FP32
    /// output of dims [H] (pooled) or [-1, H] (per token).
    fn with_config_io(mut self, cfg: &ModelConfig) -> Result<TextSpec> {
        let model = &cfg.name;
        if cfg.max_batch_size <= 0 {
            return Err(Error::invalid_arg(format!(
                "text model '{model}' must batch (max_batch_size > 0): each text is one batch row"
            )));
        }
        let [input] = cfg.input.as_slice() else {
            return Err(Error::invalid_arg(format!(
                "text model '{model}' must list exactly one input (the TYPE_STRING texts), it lists {}",
                cfg.input.len()
            )));
        };
        if input.data_type != DataType::Bytes.config_value()
            || input.dims != [1]
            || input.reshape.is_some()
        {
            return Err(Error::invalid_arg(format!(
                "text model '{model}' input '{}' must be data_type: TYPE_STRING with dims: [ 1 ] and no reshape (one text per batch row)",
                input.name
            )));
        }
        let [output] = cfg.output.as_slice() else {
            return Err(Error::invalid_arg(format!(
                "text model '{model}' must list exactly one output, it lists {}",
                cfg.output.len()
            )));
        };
        let want_rank = if self.pooling == Pooling::None { 2 } else { 1 };
        let dims_ok = output.dims.len() == want_rank
            && (want_rank == 1 || output.dims[0] == -1)
            && output.reshape.is_none();
        if output.data_type != DataType::Fp32.config_value() || !dims_ok {
            let want = if want_rank == 1 {
                "[ H ] (one vector per text, pooling is set)"
            } else {
                "[ -1, H ] (one vector per token, pooling is none)"
            };
            return Err(Error::invalid_arg(format!(
                "text model '{model}' output '{}' must be data_type: TYPE_FP32 with dims: {want} and no reshape",
                output.name
            )));
        }
        self.input = input.name.clone();
        self.output = output.name.clone();
        Ok(self)
    }

    /// The hidden size the config promises (the output's last dim; -1 = any).
    fn hidden(&self, cfg_dims: &[i64]) -> i64 {
        cfg_dims.last().copied().unwrap_or(-1)
    }

    /// The graph side, at load: token inputs `input_ids` and `attention_mask` (and optionally
    /// `token_type_ids`) INT64 [-1, -1] (or [-1, max_length] with `padding: max_length`), and a
    /// FP32 [-1, -1, H] token output. Fills `graph_output` and `token_type_ids`.
    pub fn bind_graph(&mut self, model: &str, output_dims: &[i64], io: &ModelIo) -> Result<()> {
        let seq_ok =
            |d: i64| d == -1 || (self.padding == Padding::MaxLength && d == self.max_length as i64);
        let names: Vec<&str> = io.inputs.iter().map(|d| d.name.as_str()).collect();
        for d in &io.inputs {
            if ![INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS].contains(&d.name.as_str()) {
                return Err(Error::invalid_arg(format!(
                    "text model '{model}': the graph has input '{}', but the server feeds only {INPUT_IDS}, {ATTENTION_MASK} and {TOKEN_TYPE_IDS}",
                    d.name
                )));
            }
            if d.dtype != Ok(DataType::Int64)
                || d.shape.len() != 2
                || d.shape[0] != -1
                || !seq_ok(d.shape[1])
            {
                return Err(Error::invalid_arg(format!(
                    "text model '{model}': graph input '{}' must be INT64 [-1,-1] (batch, sequence), it is {} {}",
                    d.name,
                    d.dtype
                        .as_ref()
                        .map_or_else(|t| t.clone(), |t| t.as_str().to_string()),
                    shape_string(&d.shape)
                )));
            }
        }
        for required in [INPUT_IDS, ATTENTION_MASK] {
            if !names.contains(&required) {
                return Err(Error::invalid_arg(format!(
                    "text model '{model}': the graph has no input '{required}' (it has {})",
                    names.join(", ")
                )));
            }
        }
        self.token_type_ids = names.contains(&TOKEN_TYPE_IDS);
        let outputs: Vec<&str> = io.outputs.iter().map(|d| d.name.as_str()).collect();
        if self.graph_output.is_empty() {
            self.graph_output = match outputs.as_slice() {
                [only] => only.to_string(),
                _ if outputs.contains(&"last_hidden_state") => "last_hidden_state".into(),
                _ => {
                    return Err(Error::invalid_arg(format!(
                        "text model '{model}': the graph has outputs {}; name the one to use with parameter 'model_output'",
                        outputs.join(", ")
                    )));
                }
            };
        }
        let Some(out) = io.outputs.iter().find(|d| d.name == self.graph_output) else {
            return Err(Error::invalid_arg(format!(
                "text model '{model}': model_output '{}' is not a graph output (it has {})",
                self.graph_output,
                outputs.join(", ")
            )));
        };
        let hidden = self.hidden(output_dims);
        let shape_ok = out.shape.len() == 3
            && out.shape[0] == -1
            && seq_ok(out.shape[1])
            && (out.shape[2] == -1 || hidden == -1 || out.shape[2] == hidden);
        if out.dtype != Ok(DataType::Fp32) || !shape_ok {
            return Err(Error::invalid_arg(format!(
                "text model '{model}': graph output '{}' must be FP32 [-1,-1,{hidden}] (batch, sequence, hidden), it is {} {}",
                out.name,
                out.dtype
                    .as_ref()
                    .map_or_else(|t| t.clone(), |t| t.as_str().to_string()),
                shape_string(&out.shape)
            )));
        }
        Ok(())
    }

    /// The value a token input is padded with.
    pub fn pad_value(&self, input: &str) -> i64 {
        match input {
            INPUT_IDS => self.pad_id,
            TOKEN_TYPE_IDS => self.pad_type_id,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse_pbtxt;
    use crate::model::io::IoDesc;
    use std::path::Path;

    const IO: &str = r#"name: "t" max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "EMB" data_type: TYPE_FP32 dims: [ 4 ] } ]
"#;

    fn param(k: &str, v: &str) -> String {
        format!("parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n")
    }

    fn spec(text: &str) -> Result<Option<TextSpec>> {
        let cfg = parse_pbtxt(Path::new("c"), text).unwrap();
        TextSpec::from_config(&cfg, Path::new("/m"))
    }

    #[test]
    fn parses_settings_with_defaults() {
        assert_eq!(spec(IO).unwrap(), None);
        let per_token = IO.replace("dims: [ 4 ]", "dims: [ -1, 4 ]");
        let s = spec(&format!("{per_token}{}", param("tokenizer", "tok.json")))
            .unwrap()
            .unwrap();
        assert_eq!(s.tokenizer, Path::new("/m/tok.json"));
        assert_eq!((s.input.as_str(), s.output.as_str()), ("TEXT", "EMB"));
        assert_eq!(
            (
                s.max_length,
                s.truncation,
                s.padding,
                s.pooling,
                s.normalize
            ),
            (
                0,
                Truncation::Truncate,
                Padding::Longest,
                Pooling::None,
                Normalize::None
            )
        );
        let s = spec(&format!(
            "{IO}{}{}{}{}{}{}{}{}",
            param("tokenizer", "t.json"),
            param("pooling", "mean"),
            param("max_length", "64"),
            param("truncation", "reject"),
            param("padding", "MAX_LENGTH"),
            param("normalize", "l2"),
            param("max_batch_tokens", "1024"),
            param("max_padding_ratio", "1.5")
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                s.max_length,
                s.truncation,
                s.padding,
                s.normalize,
                s.max_batch_tokens
            ),
            (
                64,
                Truncation::Reject,
                Padding::MaxLength,
                Normalize::L2,
                1024
            )
        );
        assert_eq!(s.max_padding_ratio, 1.5);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let tok = param("tokenizer", "t.json") + &param("pooling", "mean");
        let cases = [
            (
                format!("{IO}{}", param("pooling", "mean")),
                "sets parameter 'pooling' but no 'tokenizer'",
            ),
            (
                format!("{IO}{}{}", param("tokenizer", "t"), param("pooling", "max")),
                "parameter 'pooling' of model 't' must be one of none, mean, cls, got 'max'",
            ),
            (
                format!("{IO}{tok}{}", param("max_length", "-3")),
                "parameter 'max_length' of model 't' must be an integer >= 2, got '-3'",
            ),
            (
                format!("{IO}{tok}{}", param("max_padding_ratio", "0.5")),
                "parameter 'max_padding_ratio' of model 't' must be 0 (no limit) or a number >= 1.0, got '0.5'",
            ),
            (
                format!(
                    "{}{tok}",
                    IO.replace("max_batch_size: 8", "max_batch_size: 0")
                ),
                "must batch (max_batch_size > 0)",
            ),
            (
                format!("{}{tok}", IO.replace("TYPE_STRING", "TYPE_INT64")),
                "input 'TEXT' must be data_type: TYPE_STRING with dims: [ 1 ]",
            ),
            (
                format!("{}{tok}", IO.replace("dims: [ 1 ]", "dims: [ -1 ]")),
                "input 'TEXT' must be data_type: TYPE_STRING with dims: [ 1 ]",
            ),
            (
                format!("{IO}{}", param("tokenizer", "t")),
                "dims: [ -1, H ] (one vector per token, pooling is none)",
            ),
            (
                format!("{}{tok}", IO.replace("TYPE_FP32", "TYPE_FP16")),
                "output 'EMB' must be data_type: TYPE_FP32",
            ),
        ];
        for (text, want) in cases {
            let err = spec(&text).unwrap_err();
            assert!(err.message.contains(want), "{want}\n got: {}", err.message);
        }
    }

    fn desc(name: &str, dtype: DataType, shape: &[i64]) -> IoDesc {
        IoDesc {
            name: name.into(),
            dtype: Ok(dtype),
            shape: shape.to_vec(),
        }
    }

    fn bert(inputs: &[&str], out_shape: &[i64]) -> ModelIo {
        ModelIo {
            inputs: inputs
                .iter()
                .map(|n| desc(n, DataType::Int64, &[-1, -1]))
                .collect(),
            outputs: vec![desc("last_hidden_state", DataType::Fp32, out_shape)],
        }
    }

    #[test]
    fn binds_the_graph_or_says_why_not() {
        let mut s = spec(&format!(
            "{IO}{}{}",
            param("tokenizer", "t.json"),
            param("pooling", "cls")
        ))
        .unwrap()
        .unwrap();
        s.bind_graph(
            "t",
            &[4],
            &bert(&[INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS], &[-1, -1, 4]),
        )
        .unwrap();
        assert!(s.token_type_ids);
        assert_eq!(s.graph_output, "last_hidden_state");
        let mut s2 = s.clone();
        s2.bind_graph("t", &[4], &bert(&[INPUT_IDS, ATTENTION_MASK], &[-1, -1, 4]))
            .unwrap();
        assert!(!s2.token_type_ids);
        let cases = [
            (
                bert(&[INPUT_IDS], &[-1, -1, 4]),
                "the graph has no input 'attention_mask'",
            ),
            (
                bert(&[INPUT_IDS, ATTENTION_MASK, "pixel"], &[-1, -1, 4]),
                "the graph has input 'pixel'",
            ),
            (
                bert(&[INPUT_IDS, ATTENTION_MASK], &[-1, -1, 8]),
                "must be FP32 [-1,-1,4] (batch, sequence, hidden), it is FP32 [-1,-1,8]",
            ),
            (
                bert(&[INPUT_IDS, ATTENTION_MASK], &[-1, 4]),
                "it is FP32 [-1,4]",
            ),
        ];
        for (io, want) in cases {
            let mut s = s.clone();
            s.graph_output.clear();
            let err = s.bind_graph("t", &[4], &io).unwrap_err();
            assert!(err.message.contains(want), "{want}\n got: {}", err.message);
        }
        let mut io = bert(&[INPUT_IDS, ATTENTION_MASK], &[-1, -1, 4]);
        io.inputs[0].dtype = Ok(DataType::Int32);
        let err = s.clone().bind_graph("t", &[4], &io).unwrap_err();
        assert!(
            err.message.contains("'input_ids' must be INT64 [-1,-1]"),
            "{}",
            err.message
        );
        s.graph_output = "pooler_output".into();
        let err = s
            .bind_graph("t", &[4], &bert(&[INPUT_IDS, ATTENTION_MASK], &[-1, -1, 4]))
            .unwrap_err();
        assert!(
            err.message
                .contains("model_output 'pooler_output' is not a graph output"),
            "{}",
            err.message
        );
    }
}
