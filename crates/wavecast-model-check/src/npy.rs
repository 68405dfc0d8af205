//! NumPy `.npy` arrays: a bounded reader for the little-endian numeric and boolean dtypes a
//! model takes and gives, and the typed array the rest of the crate works with.
//!
//! The header is a Python dict literal; only the three keys numpy writes are read, and nothing
//! in it is evaluated. Big-endian, Fortran-ordered and object arrays are refused with a reason
//! saying how to save the array instead.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest header accepted, bytes (numpy pads headers to 64 bytes; real ones are under 200).
const MAX_HEADER: usize = 64 * 1024;
/// Most dimensions an array may have.
const MAX_RANK: usize = 32;

/// An element type, named as numpy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// `float32`
    Float32,
    /// `float64`
    Float64,
    /// `int8`
    Int8,
    /// `int16`
    Int16,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `uint8`
    Uint8,
    /// `uint16`
    Uint16,
    /// `uint32`
    Uint32,
    /// `uint64`
    Uint64,
    /// `bool`
    Bool,
}

impl DType {
    /// Every element type, for tables.
    pub const ALL: [DType; 11] = [
        DType::Float32,
        DType::Float64,
        DType::Int8,
        DType::Int16,
        DType::Int32,
        DType::Int64,
        DType::Uint8,
        DType::Uint16,
        DType::Uint32,
        DType::Uint64,
        DType::Bool,
    ];

    /// numpy's name: `float32`, `int64`, `bool`, …
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Uint32 => "uint32",
            DType::Uint64 => "uint64",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
            DType::Int16 | DType::Uint16 => 2,
            DType::Float32 | DType::Int32 | DType::Uint32 => 4,
            DType::Float64 | DType::Int64 | DType::Uint64 => 8,
        }
    }

    fn from_descr(descr: &str) -> Option<DType> {
        let (order, code) = descr.split_at(descr.len().min(1));
        let dtype = DType::ALL.into_iter().find(|d| d.code() == code)?;
        let ok = match order {
            "<" | "=" => true,
            "|" => dtype.size() == 1,
            _ => false,
        };
        ok.then_some(dtype)
    }

    fn code(self) -> &'static str {
        match self {
            DType::Float32 => "f4",
            DType::Float64 => "f8",
            DType::Int8 => "i1",
            DType::Int16 => "i2",
            DType::Int32 => "i4",
            DType::Int64 => "i8",
            DType::Uint8 => "u1",
            DType::Uint16 => "u2",
            DType::Uint32 => "u4",
            DType::Uint64 => "u8",
            DType::Bool => "b1",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An array's elements, typed.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Data {
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Bool(Vec<bool>),
}

/// Runs `$body` with `$v` bound to the typed vector inside a [`Data`].
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::Float32($v) => $body,
            Data::Float64($v) => $body,
            Data::Int8($v) => $body,
            Data::Int16($v) => $body,
            Data::Int32($v) => $body,
            Data::Int64($v) => $body,
            Data::Uint8($v) => $body,
            Data::Uint16($v) => $body,
            Data::Uint32($v) => $body,
            Data::Uint64($v) => $body,
            Data::Bool($v) => $body,
        }
    };
}
pub(crate) use with_data;

impl Data {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::Float32(_) => DType::Float32,
            Data::Float64(_) => DType::Float64,
            Data::Int8(_) => DType::Int8,
            Data::Int16(_) => DType::Int16,
            Data::Int32(_) => DType::Int32,
            Data::Int64(_) => DType::Int64,
            Data::Uint8(_) => DType::Uint8,
            Data::Uint16(_) => DType::Uint16,
            Data::Uint32(_) => DType::Uint32,
            Data::Uint64(_) => DType::Uint64,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as an `f64`, for comparing (64-bit integers beyond 2^53 round).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::Float32(v) => f64::from(v[i]),
            Data::Float64(v) => v[i],
            Data::Int8(v) => f64::from(v[i]),
            Data::Int16(v) => f64::from(v[i]),
            Data::Int32(v) => f64::from(v[i]),
            Data::Int64(v) => v[i] as f64,
            Data::Uint8(v) => f64::from(v[i]),
            Data::Uint16(v) => f64::from(v[i]),
            Data::Uint32(v) => f64::from(v[i]),
            Data::Uint64(v) => v[i] as f64,
            Data::Bool(v) => f64::from(u8::from(v[i])),
        }
    }

    /// Elements `start..end`, same type.
    pub fn slice(&self, start: usize, end: usize) -> Data {
        match self {
            Data::Float32(v) => Data::Float32(v[start..end].to_vec()),
            Data::Float64(v) => Data::Float64(v[start..end].to_vec()),
            Data::Int8(v) => Data::Int8(v[start..end].to_vec()),
            Data::Int16(v) => Data::Int16(v[start..end].to_vec()),
            Data::Int32(v) => Data::Int32(v[start..end].to_vec()),
            Data::Int64(v) => Data::Int64(v[start..end].to_vec()),
            Data::Uint8(v) => Data::Uint8(v[start..end].to_vec()),
            Data::Uint16(v) => Data::Uint16(v[start..end].to_vec()),
            Data::Uint32(v) => Data::Uint32(v[start..end].to_vec()),
            Data::Uint64(v) => Data::Uint64(v[start..end].to_vec()),
            Data::Bool(v) => Data::Bool(v[start..end].to_vec()),
        }
    }
}

/// An n-dimensional array in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The elements; as many as the shape's product.
    pub data: Data,
}

impl Array {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The sub-array at `index` along the first axis (the golden set's case axis).
    pub fn case(&self, index: usize) -> Array {
        let inner: usize = self.shape[1..].iter().product();
        Array { shape: self.shape[1..].to_vec(), data: self.data.slice(index * inner, (index + 1) * inner) }
    }
}

/// An array that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    /// Not the `.npy` magic.
    #[error("not a .npy array (bad magic)")]
    Magic,
    /// A format version numpy has not defined.
    #[error(".npy format version {0} is not 1, 2 or 3")]
    Version(u8),
    /// The header is cut short, too long, or not the dict numpy writes.
    #[error(".npy header is not readable: {0}")]
    Header(&'static str),
    /// A dtype this reader does not take.
    #[error(".npy dtype {0:?} is not supported: use little-endian float32/64, (u)int8/16/32/64 or bool")]
    DType(String),
    /// Column-major data.
    #[error(".npy array is Fortran-ordered: save numpy.ascontiguousarray(a) instead")]
    FortranOrder,
    /// More data or less than the shape says.
    #[error(".npy array of shape {shape:?} needs {want} bytes of data, has {have}")]
    Length {
        /// The shape.
        shape: Vec<usize>,
        /// Bytes the shape needs.
        want: usize,
        /// Bytes present.
        have: usize,
    },
}

/// Reads one `.npy` file.
pub fn read(bytes: &[u8]) -> Result<Array, NpyError> {
    let rest = bytes.strip_prefix(b"\x93NUMPY").ok_or(NpyError::Magic)?;
    let (&major, rest) = rest.split_first().ok_or(NpyError::Header("cut short"))?;
    let rest = rest.get(1..).ok_or(NpyError::Header("cut short"))?;
    let (len, rest) = match major {
        1 => (rest.get(..2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))), rest.get(2..)),
        2 | 3 => (rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize), rest.get(4..)),
        v => return Err(NpyError::Version(v)),
    };
    let (len, rest) = len.zip(rest).ok_or(NpyError::Header("cut short"))?;
    if len > MAX_HEADER {
        return Err(NpyError::Header("longer than 64 KiB"));
    }
    let header = rest.get(..len).ok_or(NpyError::Header("cut short"))?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::Header("not text"))?;
    let (descr, fortran, shape) = parse_header(header)?;
    let dtype = DType::from_descr(&descr).ok_or(NpyError::DType(descr))?;
    if fortran {
        return Err(NpyError::FortranOrder);
    }
    let body = &rest[len..];
    let want =
        shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d)).ok_or(NpyError::Header("shape is too large"))?;
    if body.len() != want {
        return Err(NpyError::Length { shape, want, have: body.len() });
    }
    Ok(Array { shape, data: decode(dtype, body) })
}

/// Writes one `.npy` file (version 1.0), as `numpy.save` would.
pub fn write(array: &Array) -> Vec<u8> {
    let dims: Vec<String> = array.shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if array.dtype().size() == 1 { "|" } else { "<" };
    let mut header =
        format!("{{'descr': '{order}{}', 'fortran_order': False, 'shape': {shape}, }}", array.dtype().code());
    // Pad with spaces and a newline so the data starts on a 64-byte boundary, as numpy does.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    macro_rules! le {
        ($v:expr) => {
            $v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match &array.data {
        Data::Float32(v) => le!(v),
        Data::Float64(v) => le!(v),
        Data::Int8(v) => le!(v),
        Data::Int16(v) => le!(v),
        Data::Int32(v) => le!(v),
        Data::Int64(v) => le!(v),
        Data::Uint8(v) => out.extend_from_slice(v),
        Data::Uint16(v) => le!(v),
        Data::Uint32(v) => le!(v),
        Data::Uint64(v) => le!(v),
        Data::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
    }
    out
}

fn decode(dtype: DType, body: &[u8]) -> Data {
    macro_rules! le {
        ($variant:ident, $t:ty) => {
            Data::$variant(
                body.chunks_exact(size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; size_of::<$t>()])))
                    .collect(),
            )
        };
    }
    match dtype {
        DType::Float32 => le!(Float32, f32),
        DType::Float64 => le!(Float64, f64),
        DType::Int8 => le!(Int8, i8),
        DType::Int16 => le!(Int16, i16),
        DType::Int32 => le!(Int32, i32),
        DType::Int64 => le!(Int64, i64),
        DType::Uint8 => Data::Uint8(body.to_vec()),
        DType::Uint16 => le!(Uint16, u16),
        DType::Uint32 => le!(Uint32, u32),
        DType::Uint64 => le!(Uint64, u64),
        DType::Bool => Data::Bool(body.iter().map(|&b| b != 0).collect()),
    }
}

/// The header's `descr`, `fortran_order` and `shape`. numpy writes
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (8, 1, 4), }` padded with spaces.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), NpyError> {
    let body =
        header.trim().strip_prefix('{').and_then(|s| s.strip_suffix('}')).ok_or(NpyError::Header("not a dict"))?;
    let value_of = |key: &str| -> Result<&str, NpyError> {
        let at = body.find(&format!("'{key}'")).ok_or(NpyError::Header("a key is missing"))?;
        let rest = body[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').ok_or(NpyError::Header("a key has no value"))?.trim_start())
    };
    let descr = value_of("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|s| s.split_once('\''))
        .map(|(d, _)| d.to_owned())
        .ok_or(NpyError::Header("descr is not a plain string (structured dtypes are not supported)"))?;
    let fortran = value_of("fortran_order")?;
    let fortran = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return Err(NpyError::Header("fortran_order is not True or False"));
    };
    let shape = value_of("shape")?;
    let dims = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(d, _)| d)
        .ok_or(NpyError::Header("shape is not a tuple"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NpyError::Header("shape holds something other than whole numbers"))?;
    if shape.len() > MAX_RANK {
        return Err(NpyError::Header("more than 32 dimensions"));
    }
    Ok((descr, fortran, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, body: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn numpy_headers_read() {
        let f32s: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|f| f.to_le_bytes()).collect();
        let cases: &[(&str, &[u8], Result<Array, NpyError>)] = &[
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }      \n",
                &f32s,
                Ok(Array { shape: vec![2], data: Data::Float32(vec![1.0, -2.5]) }),
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2), }\n",
                &[7, 9],
                Ok(Array { shape: vec![1, 2], data: Data::Uint8(vec![7, 9]) }),
            ),
            (
                "{'descr': '|b1', 'fortran_order': False, 'shape': (), }\n",
                &[1],
                Ok(Array { shape: vec![], data: Data::Bool(vec![true]) }),
            ),
            (
                "{'shape': (0, 3), 'fortran_order': False, 'descr': '<i8'}",
                &[],
                Ok(Array { shape: vec![0, 3], data: Data::Int64(vec![]) }),
            ),
            ("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", &f32s, Err(NpyError::DType(">f4".into()))),
            ("{'descr': '<U3', 'fortran_order': False, 'shape': (1,), }", &[0; 12], Err(NpyError::DType("<U3".into()))),
            ("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", &[0; 8], Err(NpyError::DType("|O".into()))),
            ("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", &f32s, Err(NpyError::FortranOrder)),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                &f32s,
                Err(NpyError::Length { shape: vec![3], want: 12, have: 8 }),
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                &f32s[..4],
                Err(NpyError::Header("descr is not a plain string (structured dtypes are not supported)")),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
                &[],
                Err(NpyError::Header("shape is too large")),
            ),
            ("{'descr': '<f4', 'shape': (2,), }", &f32s, Err(NpyError::Header("a key is missing"))),
            ("['<f4', False, (2,)]", &f32s, Err(NpyError::Header("not a dict"))),
        ];
        for (header, body, want) in cases {
            assert_eq!(&read(&npy(header, body)), want, "{header}");
        }
        assert_eq!(read(b"PK\x03\x04"), Err(NpyError::Magic));
        assert_eq!(read(b"\x93NUMPY\x04\x00\x00\x00"), Err(NpyError::Version(4)));
        assert_eq!(read(b"\x93NUMPY\x01\x00\xff"), Err(NpyError::Header("cut short")));
    }

    #[test]
    fn every_dtype_round_trips_through_write() {
        for data in [
            Data::Float32(vec![1.5, -0.0]),
            Data::Float64(vec![f64::MAX, 1e-300]),
            Data::Int8(vec![-128, 127]),
            Data::Int16(vec![-3, 3]),
            Data::Int32(vec![i32::MIN, 0]),
            Data::Int64(vec![i64::MAX, -1]),
            Data::Uint8(vec![0, 255]),
            Data::Uint16(vec![65535, 1]),
            Data::Uint32(vec![u32::MAX, 2]),
            Data::Uint64(vec![u64::MAX, 3]),
            Data::Bool(vec![true, false]),
        ] {
            for shape in [vec![2], vec![1, 2], vec![2, 1, 1]] {
                let array = Array { shape, data: data.clone() };
                let bytes = write(&array);
                assert_eq!(read(&bytes), Ok(array.clone()), "{}", array.dtype());
                assert_eq!((bytes.len() - array.dtype().size() * 2) % 64, 0, "data starts 64-byte aligned");
            }
        }
    }

    #[test]
    fn a_case_is_a_slice_along_the_first_axis() {
        let a = Array { shape: vec![3, 1, 2], data: Data::Int32(vec![0, 1, 2, 3, 4, 5]) };
        assert_eq!(a.case(1), Array { shape: vec![1, 2], data: Data::Int32(vec![2, 3]) });
    }
}
