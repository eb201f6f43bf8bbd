//! What a model file declares: its inputs and outputs as the backend reads them at load
//! (`Backend::inspect`), before the config is completed or checked against them.

use crate::tensor::DataType;

/// The inputs and outputs a model file declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIo {
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IoDesc {
    pub name: String,
    /// `Err(type name)` when the element type has no KServe datatype (the model cannot be served).
    pub dtype: Result<DataType, String>,
    /// -1 for symbolic or unknown dimensions.
    pub shape: Vec<i64>,
}

impl IoDesc {
    /// The element type as a config names it (`TYPE_FP32`), or the file's own name for a type
    /// with no KServe datatype: what load errors say the model provides.
    pub fn config_type_name(&self) -> String {
        match &self.dtype {
            Ok(t) => t.config_name().to_string(),
            Err(name) => name.clone(),
        }
    }
}
