//! A model's signature: its inputs and outputs (names, element types, shapes), operator sets and
//! parameter count, as the ONNX file declares them.
//!
//! The publisher records it in the expectations; the check reads it again from the file on the
//! device and compares, and fits the golden set against it before running anything.

use std::fmt;

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::golden::GoldenSet;
use crate::npy::DType;

/// Longest name kept from a model (tensor names, op types): reports stay bounded.
pub const MAX_NAME: usize = 256;

/// What a model file declares about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The file format; `onnx` is the one this build reads.
    pub format: String,
    /// The ONNX IR version.
    pub ir_version: i64,
    /// Operator sets imported, as `domain` (`ai.onnx` for the default) and version.
    pub opsets: Vec<Opset>,
    /// The graph's inputs (initializers excluded), in order.
    pub inputs: Vec<TensorSpec>,
    /// The graph's outputs, in order.
    pub outputs: Vec<TensorSpec>,
    /// Elements in every initializer (the weights), in every graph.
    pub parameters: u64,
}

/// One operator set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opset {
    /// `ai.onnx`, `ai.onnx.ml`, or a custom domain.
    pub domain: String,
    /// Its version.
    pub version: i64,
}

/// An input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name in the graph.
    pub name: String,
    /// numpy's name for the element type (`float32`, …) or ONNX's for the others (`float16`,
    /// `string`, …).
    pub dtype: String,
    /// The dimensions, or `None` when the file does not say the rank.
    pub shape: Option<Vec<Dim>>,
}

/// One dimension: in JSON a number, a name, or `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A symbolic size, like `batch`, fixed only at run time.
    Named(String),
    /// Not declared.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.dtype)?;
        match &self.shape {
            None => f.write_str("[…]"),
            Some(dims) => write!(f, "[{}]", dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")),
        }
    }
}

impl TensorSpec {
    /// Whether a tensor of `shape` fits: same rank, and fixed dimensions equal.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        self.shape.as_ref().is_none_or(|dims| {
            dims.len() == shape.len()
                && dims.iter().zip(shape).all(|(d, &n)| !matches!(d, Dim::Fixed(f) if *f != n as u64))
        })
    }
}

impl Signature {
    /// The signature of a parsed ONNX model.
    pub fn of(model: &pb::ModelProto) -> Signature {
        let none = pb::GraphProto::default();
        let graph = model.graph.as_ref().unwrap_or(&none);
        let initialized: std::collections::BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut parameters = 0u64;
        walk_graphs(graph, &mut |g| {
            let dims = g.initializer.iter().map(|t| &t.dims).chain(g.sparse_initializer.iter().map(|t| &t.dims));
            for d in dims {
                parameters = parameters.saturating_add(d.iter().map(|&n| n.max(0) as u64).product());
            }
        });
        Signature {
            format: "onnx".to_owned(),
            ir_version: model.ir_version,
            opsets: model
                .opset_import
                .iter()
                .map(|o| Opset {
                    domain: if o.domain.is_empty() { "ai.onnx".to_owned() } else { bounded(&o.domain) },
                    version: o.version,
                })
                .collect(),
            inputs: graph.input.iter().filter(|i| !initialized.contains(i.name.as_str())).map(spec).collect(),
            outputs: graph.output.iter().map(spec).collect(),
            parameters,
        }
    }

    /// How `found` differs from `self` (the recorded signature) in input and output names,
    /// element types and shapes; empty when they agree. At most eight differences are listed.
    pub fn differences(&self, found: &Signature) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, want, have) in [("input", &self.inputs, &found.inputs), ("output", &self.outputs, &found.outputs)] {
            if want.len() != have.len() {
                out.push(format!("{} {kind}s recorded, the model has {}", want.len(), have.len()));
            }
            for (w, h) in want.iter().zip(have) {
                if w != h {
                    out.push(format!("{kind} recorded as {w}, the model has {h}"));
                }
            }
        }
        out.truncate(8);
        out
    }

    /// Why `golden` cannot be run against a model of this signature; empty when it can. Every
    /// model input needs a golden array of its element type whose cases fit its shape; every
    /// expected output must name a model output of its element type and fit its shape.
    pub fn golden_problems(&self, golden: &GoldenSet) -> Vec<String> {
        let mut out = Vec::new();
        for input in &self.inputs {
            if !golden.inputs.iter().any(|(name, _)| *name == input.name) {
                out.push(format!("model input {:?} has no golden array (input/{}.npy)", input.name, input.name));
            }
        }
        for (kind, arrays, specs) in
            [("input", &golden.inputs, &self.inputs), ("output", &golden.outputs, &self.outputs)]
        {
            for (name, array) in arrays {
                let Some(spec) = specs.iter().find(|s| s.name == *name) else {
                    out.push(format!("golden {kind}/{name} names no model {kind}"));
                    continue;
                };
                let case = &array.shape[1..];
                if spec.dtype != array.dtype().name() {
                    out.push(format!(
                        "golden {kind}/{name} is {}, the model's {kind} is {}",
                        array.dtype(),
                        spec.dtype
                    ));
                }
                if !spec.accepts(case) {
                    out.push(format!("golden {kind}/{name} has cases of shape {case:?}, the model's {kind} is {spec}"));
                }
            }
        }
        out.truncate(8);
        out
    }
}

/// Runs `f` on `graph` and on every graph nested in its nodes' attributes (`If`, `Loop`, `Scan`).
pub(crate) fn walk_graphs<'a>(graph: &'a pb::GraphProto, f: &mut impl FnMut(&'a pb::GraphProto)) {
    f(graph);
    for node in &graph.node {
        for attr in &node.attribute {
            attr.g.iter().chain(&attr.graphs).for_each(|g| walk_graphs(g, f));
        }
    }
}

/// The element type ONNX's `elem_type` number names.
pub fn dtype_name(elem_type: i32) -> String {
    let known = match elem_type {
        1 => Some(DType::Float32),
        2 => Some(DType::Uint8),
        3 => Some(DType::Int8),
        4 => Some(DType::Uint16),
        5 => Some(DType::Int16),
        6 => Some(DType::Int32),
        7 => Some(DType::Int64),
        9 => Some(DType::Bool),
        11 => Some(DType::Float64),
        12 => Some(DType::Uint32),
        13 => Some(DType::Uint64),
        _ => None,
    };
    if let Some(d) = known {
        return d.name().to_owned();
    }
    match elem_type {
        8 => "string".to_owned(),
        10 => "float16".to_owned(),
        14 => "complex64".to_owned(),
        15 => "complex128".to_owned(),
        16 => "bfloat16".to_owned(),
        n => format!("onnx_elem_type_{n}"),
    }
}

fn spec(info: &pb::ValueInfoProto) -> TensorSpec {
    let tensor = info.r#type.as_ref().and_then(|t| t.value.as_ref()).map(|pb::type_proto::Value::TensorType(t)| t);
    let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as u64),
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Named(bounded(p)),
                _ => Dim::Unknown,
            })
            .collect()
    });
    TensorSpec {
        name: bounded(&info.name),
        dtype: tensor.map_or_else(|| "unknown".to_owned(), |t| dtype_name(t.elem_type)),
        shape,
    }
}

/// `s`, cut to at most [`MAX_NAME`] bytes.
pub(crate) fn bounded(s: &str) -> String {
    crate::report::cut(s, MAX_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: Option<Vec<Dim>>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype: dtype.into(), shape }
    }

    #[test]
    fn dims_serialize_as_numbers_names_and_null() {
        let dims = vec![Dim::Named("batch".into()), Dim::Fixed(4), Dim::Unknown];
        let json = serde_json::to_string(&dims).expect("serializes");
        assert_eq!(json, r#"["batch",4,null]"#);
        assert_eq!(serde_json::from_str::<Vec<Dim>>(&json).expect("parses"), dims);
    }

    #[test]
    fn a_shape_accepts_tensors_of_its_rank_with_its_fixed_sizes() {
        let s = spec("x", "float32", Some(vec![Dim::Named("batch".into()), Dim::Fixed(4), Dim::Unknown]));
        let cases: &[(&[usize], bool)] =
            &[(&[1, 4, 9], true), (&[32, 4, 1], true), (&[1, 3, 1], false), (&[1, 4], false), (&[1, 4, 1, 1], false)];
        for (shape, want) in cases {
            assert_eq!(s.accepts(shape), *want, "{shape:?}");
        }
        assert!(spec("x", "float32", None).accepts(&[7, 7]));
        assert_eq!(s.to_string(), "x: float32[batch, 4, ?]");
    }

    #[test]
    fn names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(200);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_NAME && cut.ends_with('…'), "{cut}");
        assert!(long.starts_with(cut.trim_end_matches('…')));
        assert_eq!(bounded("input.1"), "input.1");
    }
}
