//! The model and the engine that runs it: parse an ONNX file, say why it cannot run here, and
//! run golden cases through `tract`.
//!
//! What the engine cannot do is told apart from what is wrong with the model: an operator the
//! engine lacks, tensors kept in files outside the artifact, or the engine failing (or
//! panicking) while it plans are *could not run*; a file that is not an ONNX model, or a model
//! that fails on its own golden inputs, is the model's fault.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::pb;
use tract_onnx::prelude::{
    DatumType, Framework as _, InferenceFact, InferenceModelExt as _, IntoRunnable as _, TValue, Tensor,
    TypedSimpleState, tvec,
};

use crate::golden::GoldenSet;
use crate::npy::{Array, DType, Data};
use crate::signature::{Signature, bounded, walk_graphs};

/// Most operator names listed when some are unsupported.
const MAX_LISTED: usize = 16;

/// A model file, parsed.
#[derive(Debug, Clone)]
pub struct Model {
    proto: pb::ModelProto,
    signature: Signature,
}

/// A cause from the engine, which reports with `anyhow` (whose error is not a `std` error).
pub type EngineCause = Box<dyn std::error::Error + Send + Sync>;

/// A model file that cannot be read as a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A TensorFlow Lite flatbuffer: this build reads ONNX only.
    #[error("the model is TensorFlow Lite; this build of wavecast-model-check reads ONNX only")]
    Tflite,
    /// Protobuf that does not decode.
    #[error("the model is not an ONNX protobuf")]
    Decode(#[source] EngineCause),
    /// Decodes, but holds no graph or no operator set: not a model.
    #[error("the model file decodes but is not an ONNX model (no {0})")]
    NotAModel(&'static str),
}

/// A model the engine cannot prepare.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Operators the engine does not implement.
    #[error("the engine does not implement operator(s) {}", .0.join(", "))]
    Unsupported(Vec<String>),
    /// Tensors kept outside the model file.
    #[error("tensor(s) {} keep their data in external files; the artifact must be one self-contained file", .0.join(", "))]
    ExternalData(Vec<String>),
    /// The engine refused or failed to plan the model.
    #[error("the engine could not prepare the model")]
    Engine(#[source] EngineCause),
    /// The engine panicked.
    #[error("the engine panicked while preparing the model: {0}")]
    Panicked(String),
}

/// An inference that failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The engine returned an error.
    #[error("inference failed")]
    Engine(#[source] EngineCause),
    /// The engine panicked.
    #[error("the engine panicked during inference: {0}")]
    Panicked(String),
    /// A model input the caller gave no array for.
    #[error("no array for model input {0:?}")]
    MissingInput(String),
}

impl Model {
    /// Parses an ONNX file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Model, ModelError> {
        // A TFLite flatbuffer carries its identifier at offset 4.
        if bytes.get(4..8) == Some(b"TFL3") {
            return Err(ModelError::Tflite);
        }
        let proto =
            tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).map_err(|e| ModelError::Decode(e.into()))?;
        // Protobuf decodes many byte strings to an empty message; a model has these.
        if proto.graph.as_ref().is_none_or(|g| g.output.is_empty()) {
            return Err(ModelError::NotAModel("graph with outputs"));
        }
        if proto.opset_import.is_empty() {
            return Err(ModelError::NotAModel("operator set"));
        }
        let signature = Signature::of(&proto);
        Ok(Model { proto, signature })
    }

    /// What the file declares.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Operators (by ONNX op type) that the engine does not implement, in any graph.
    pub fn unsupported_operators(&self) -> Vec<String> {
        let known = tract_onnx::onnx().op_register.0;
        let mut missing = std::collections::BTreeSet::new();
        if let Some(graph) = &self.proto.graph {
            walk_graphs(graph, &mut |g| {
                for node in &g.node {
                    if !known.contains_key(&node.op_type) {
                        let name = match node.domain.as_str() {
                            "" | "ai.onnx" => node.op_type.clone(),
                            domain => format!("{domain}.{}", node.op_type),
                        };
                        missing.insert(bounded(&name));
                    }
                }
            });
        }
        missing.into_iter().take(MAX_LISTED).collect()
    }

    /// Tensors (initializers and constants) whose data lives in files beside the model.
    fn external_tensors(&self) -> Vec<String> {
        let mut external = Vec::new();
        let is_external =
            |t: &pb::TensorProto| t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
        if let Some(graph) = &self.proto.graph {
            walk_graphs(graph, &mut |g| {
                let constants = g.node.iter().flat_map(|n| &n.attribute).flat_map(|a| a.t.iter().chain(&a.tensors));
                for t in g.initializer.iter().chain(constants) {
                    if is_external(t) && external.len() < MAX_LISTED {
                        external.push(bounded(&t.name));
                    }
                }
            });
        }
        external
    }
}

/// A model prepared for one golden set's case shapes.
#[derive(Debug)]
pub struct Runner {
    state: TypedSimpleState,
    /// Model input names, in the engine's order.
    inputs: Vec<String>,
    /// Model output names, in the engine's order.
    outputs: Vec<String>,
}

impl Runner {
    /// Prepares `model` for inputs shaped like `golden`'s cases (symbolic dimensions, such as a
    /// dynamic batch, take the golden set's sizes). The golden set must fit the model's
    /// signature (see `Signature::golden_problems`).
    pub fn load(model: &Model, golden: &GoldenSet) -> Result<Runner, LoadError> {
        let unsupported = model.unsupported_operators();
        if !unsupported.is_empty() {
            return Err(LoadError::Unsupported(unsupported));
        }
        let external = model.external_tensors();
        if !external.is_empty() {
            return Err(LoadError::ExternalData(external));
        }
        let inputs: Vec<String> = model.signature.inputs.iter().map(|i| i.name.clone()).collect();
        let outputs: Vec<String> = model.signature.outputs.iter().map(|o| o.name.clone()).collect();
        let facts: Vec<InferenceFact> = inputs
            .iter()
            .map(|name| {
                let array = golden.inputs.iter().find(|(n, _)| n == name).map(|(_, a)| a);
                array.map_or_else(InferenceFact::default, |a| {
                    InferenceFact::dt_shape(datum_type(a.dtype()), a.shape[1..].to_vec())
                })
            })
            .collect();
        let planned = guarded(|| {
            let mut m = tract_onnx::onnx().model_for_proto_model(&model.proto)?;
            for (i, fact) in facts.into_iter().enumerate() {
                m = m.with_input_fact(i, fact)?;
            }
            let plan = m.into_optimized()?.into_runnable()?;
            plan.spawn()
        });
        match planned {
            Ok(Ok(state)) => Ok(Runner { state, inputs, outputs }),
            Ok(Err(e)) => Err(LoadError::Engine(e.into())),
            Err(message) => Err(LoadError::Panicked(message)),
        }
    }

    /// Runs one inference on `inputs` (by model input name) and returns the outputs by name;
    /// outputs of types golden sets cannot hold (float16, strings) are left out.
    pub fn run(&mut self, inputs: &[(&str, Array)]) -> Result<Vec<(String, Array)>, RunError> {
        let mut values = tvec![];
        for name in &self.inputs {
            let array = inputs.iter().find(|(n, _)| n == name).ok_or_else(|| RunError::MissingInput(name.clone()))?;
            values.push(TValue::from(to_tensor(&array.1).map_err(|e| RunError::Engine(e.into()))?));
        }
        let state = &mut self.state;
        let outputs = match guarded(|| state.run(values)) {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => return Err(RunError::Engine(e.into())),
            Err(message) => return Err(RunError::Panicked(message)),
        };
        Ok(self
            .outputs
            .iter()
            .zip(outputs.iter())
            .filter_map(|(name, v)| Some((name.clone(), from_tensor(v)?)))
            .collect())
    }
}

/// Runs `f`, turning a panic into its message: the engine is a large library, and a model it
/// trips over must end as a report, not a crash.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        bounded(&text)
    })
}

fn datum_type(d: DType) -> DatumType {
    match d {
        DType::Float32 => DatumType::F32,
        DType::Float64 => DatumType::F64,
        DType::Int8 => DatumType::I8,
        DType::Int16 => DatumType::I16,
        DType::Int32 => DatumType::I32,
        DType::Int64 => DatumType::I64,
        DType::Uint8 => DatumType::U8,
        DType::Uint16 => DatumType::U16,
        DType::Uint32 => DatumType::U32,
        DType::Uint64 => DatumType::U64,
        DType::Bool => DatumType::Bool,
    }
}

fn to_tensor(a: &Array) -> tract_onnx::prelude::TractResult<Tensor> {
    crate::npy::with_data!(&a.data, v => Tensor::from_shape(&a.shape, v))
}

fn from_tensor(t: &Tensor) -> Option<Array> {
    macro_rules! plain {
        ($variant:ident, $t:ty) => {
            Data::$variant(t.to_plain_array_view::<$t>().ok()?.iter().copied().collect())
        };
    }
    let data = match t.datum_type() {
        DatumType::F32 => plain!(Float32, f32),
        DatumType::F64 => plain!(Float64, f64),
        DatumType::I8 => plain!(Int8, i8),
        DatumType::I16 => plain!(Int16, i16),
        DatumType::I32 => plain!(Int32, i32),
        DatumType::I64 => plain!(Int64, i64),
        DatumType::U8 => plain!(Uint8, u8),
        DatumType::U16 => plain!(Uint16, u16),
        DatumType::U32 => plain!(Uint32, u32),
        DatumType::U64 => plain!(Uint64, u64),
        DatumType::Bool => plain!(Bool, bool),
        _ => return None,
    };
    Some(Array { shape: t.shape().to_vec(), data })
}
