//! Checkpoints that transformers + bitsandbytes saved already quantized (`…-bnb-4bit` on the hub): each
//! 4-bit linear keeps its packed NF4 codes and the quantization state beside them
//! (`../shared/reference/qlora-bnb.md` §1b). They load straight into an [`Nf4Matrix`], never through a
//! dense copy.
//!
//! Whether a linear is quantized is decided per tensor, not from config.json: "dynamic" checkpoints
//! leave chosen layers in 16 bits. A weight `W` is 4-bit iff `W.quant_state.bitsandbytes__nf4` (or
//! `__fp4`) exists; that tensor holds a UTF-8 JSON object with the block size, shape, source dtype and,
//! with double quantization, the nested block size and offset.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::nf4::{Absmax, DoubleQuant, Nf4Matrix, NF4_LEVELS};
use crate::engine::error::{ModelError, Result};
use crate::engine::weights::{RawTensor, Weights};

const NF4_STATE: &str = ".quant_state.bitsandbytes__nf4";
const FP4_STATE: &str = ".quant_state.bitsandbytes__fp4";

/// How a linear weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Dense,
    Nf4,
    Fp4,
    Int8,
}

fn stored(weights: &Weights, weight: &str) -> Stored {
    if weights.contains(&format!("{weight}{NF4_STATE}")) {
        return Stored::Nf4;
    }
    if weights.contains(&format!("{weight}{FP4_STATE}")) {
        return Stored::Fp4;
    }
    // LLM.int8: an int8 weight with its row scales (`SCB`) beside it.
    let module = weight.strip_suffix(".weight").unwrap_or(weight);
    let int8 = weights
        .raw(weight)
        .is_some_and(|t| t.dtype == safetensors::Dtype::I8)
        && (weights.contains(&format!("{module}.SCB"))
            || weights.contains(&format!("{weight}.SCB")));
    match int8 {
        true => Stored::Int8,
        false => Stored::Dense,
    }
}

/// The linear weight `weight` (e.g. `model.layers.0.self_attn.q_proj.weight`) as bitsandbytes stored
/// it in 4-bit NF4, checked against the `(out, in)` the architecture expects; `None` when it is stored
/// dense. FP4 and 8-bit weights are refused with what to use instead.
pub fn read_nf4(
    weights: &Weights,
    weight: &str,
    shape: (usize, usize),
) -> Result<Option<Nf4Matrix>> {
    match stored(weights, weight) {
        Stored::Dense => Ok(None),
        Stored::Nf4 => read(weights, weight, shape).map(Some),
        Stored::Fp4 => Err(refusal(
            weights,
            weight,
            "is stored in bitsandbytes' FP4 format (bnb_4bit_quant_type=\"fp4\"), which Loft does not read; use the model's full-precision release or an NF4 (`bnb-4bit`) one, or quantize it yourself with --method qlora",
        )),
        Stored::Int8 => Err(refusal(
            weights,
            weight,
            "is stored in bitsandbytes' 8-bit LLM.int8 format, which Loft does not read; use the model's full-precision release or a 4-bit NF4 (`bnb-4bit`) one, or quantize it yourself with --method qlora",
        )),
    }
}

fn refusal(weights: &Weights, weight: &str, what: &str) -> ModelError {
    let path = weights
        .raw(weight)
        .map(|t| t.path.display().to_string())
        .unwrap_or_else(|| "the checkpoint".into());
    ModelError::Safetensors {
        path: path.into(),
        message: format!("tensor `{weight}` {what}"),
    }
}

/// A tensor that must be there, with the file named when it is not.
fn part<'a>(
    weights: &'a Weights,
    weight: &str,
    suffix: &str,
    file: &Path,
) -> Result<RawTensor<'a>> {
    let name = format!("{weight}{suffix}");
    weights.raw(&name).ok_or_else(|| ModelError::Safetensors {
        path: file.to_path_buf(),
        message: format!(
            "tensor `{name}` is missing: `{weight}` has a bitsandbytes quantization state but not all of its parts; download the model again"
        ),
    })
}

fn read(weights: &Weights, weight: &str, expected: (usize, usize)) -> Result<Nf4Matrix> {
    let state_name = format!("{weight}{NF4_STATE}");
    let state = weights
        .raw(&state_name)
        .ok_or_else(|| weights.missing(&state_name))?;
    let file = state.path.to_path_buf();
    let bad = |tensor: &str, problem: String| {
        ModelError::Safetensors {
        path: file.clone(),
        message: format!("tensor `{tensor}`: {problem}; the checkpoint is damaged or was not written by bitsandbytes"),
    }
    };
    let json: Value = serde_json::from_slice(state.data).map_err(|e| {
        bad(
            &state_name,
            format!("its quantization state is not JSON ({e})"),
        )
    })?;
    let field = |key: &str| json.get(key);
    let quant_type = field("quant_type").and_then(Value::as_str).unwrap_or("nf4");
    if quant_type != "nf4" {
        return Err(bad(
            &state_name,
            format!("quant_type is \"{quant_type}\", not \"nf4\""),
        ));
    }
    let block = field("blocksize")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(&state_name, "no `blocksize`".into()))? as usize;
    if !(32..=4096).contains(&block) || !block.is_power_of_two() {
        return Err(bad(
            &state_name,
            format!("blocksize {block} is not a power of two from 32 to 4096"),
        ));
    }
    let shape: Vec<usize> = field("shape")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect()
        })
        .unwrap_or_default();
    if shape != [expected.0, expected.1] {
        return Err(ModelError::Safetensors {
            path: file.clone(),
            message: format!(
                "tensor `{weight}` was quantized from shape {shape:?} but config.json implies {:?}; the weights and the config do not belong together",
                [expected.0, expected.1]
            ),
        });
    }
    let source_dtype = field("dtype")
        .and_then(Value::as_str)
        .unwrap_or("float32")
        .to_string();
    let n = expected.0 * expected.1;
    let blocks = n.div_ceil(block);

    // The packed codes: raw bytes whatever dtype they are viewed as (`bnb_4bit_quant_storage`).
    let packed = part(weights, weight, "", &file)?;
    if packed.data.len() != n.div_ceil(2) {
        return Err(bad(
            weight,
            format!(
                "{} bytes of packed 4-bit codes for {n} weights, which need {}",
                packed.data.len(),
                n.div_ceil(2)
            ),
        ));
    }
    if let Some(map) = weights.raw(&format!("{weight}.quant_map")) {
        let levels = f32s(&map, &format!("{weight}.quant_map"), 16)
            .map_err(|p| bad(&format!("{weight}.quant_map"), p))?;
        if levels
            .iter()
            .zip(NF4_LEVELS)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(bad(
                &format!("{weight}.quant_map"),
                "is not the NF4 code table".into(),
            ));
        }
    }
    let absmax_name = format!("{weight}.absmax");
    let absmax_raw = part(weights, weight, ".absmax", &file)?;
    let absmax = match absmax_raw.dtype {
        safetensors::Dtype::F32 => Absmax::Plain(
            f32s(&absmax_raw, &absmax_name, blocks).map_err(|p| bad(&absmax_name, p))?,
        ),
        safetensors::Dtype::U8 => {
            if absmax_raw.data.len() != blocks {
                return Err(bad(
                    &absmax_name,
                    format!("{} codes for {blocks} blocks", absmax_raw.data.len()),
                ));
            }
            let nested_block = field("nested_blocksize")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    bad(
                        &state_name,
                        "the absmax is 8-bit but there is no `nested_blocksize`".into(),
                    )
                })? as usize;
            if nested_block == 0 {
                return Err(bad(&state_name, "nested_blocksize is 0".into()));
            }
            if let Some(dtype) = field("nested_dtype").and_then(Value::as_str) {
                if dtype != "float32" {
                    return Err(bad(
                        &state_name,
                        format!("nested_dtype is \"{dtype}\"; bitsandbytes writes \"float32\""),
                    ));
                }
            }
            // Python's repr of the f32 offset: parsed as f64 and cast back, exactly the stored value.
            let offset = field("nested_offset")
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    bad(
                        &state_name,
                        "the absmax is 8-bit but there is no `nested_offset`".into(),
                    )
                })? as f32;
            let scales_name = format!("{weight}.nested_absmax");
            let scales = f32s(
                &part(weights, weight, ".nested_absmax", &file)?,
                &scales_name,
                blocks.div_ceil(nested_block),
            )
            .map_err(|p| bad(&scales_name, p))?;
            let map_name = format!("{weight}.nested_quant_map");
            let map = f32s(
                &part(weights, weight, ".nested_quant_map", &file)?,
                &map_name,
                256,
            )
            .map_err(|p| bad(&map_name, p))?;
            Absmax::Double(DoubleQuant {
                codes: absmax_raw.data.to_vec(),
                scales,
                map,
                offset,
                block: nested_block,
            })
        }
        other => {
            return Err(bad(
                &absmax_name,
                format!("dtype {other:?}; bitsandbytes writes F32, or U8 with double quantization"),
            ))
        }
    };
    Ok(Nf4Matrix {
        shape: expected,
        block,
        packed: packed.data.to_vec(),
        absmax,
        source_dtype,
    })
}

/// A little-endian f32 tensor of `count` values.
fn f32s(t: &RawTensor, _name: &str, count: usize) -> std::result::Result<Vec<f32>, String> {
    if t.dtype != safetensors::Dtype::F32 {
        return Err(format!("dtype {:?}, not F32", t.dtype));
    }
    if t.data.len() != 4 * count {
        return Err(format!("{} values where {count} belong", t.data.len() / 4));
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// What a pre-quantized bitsandbytes checkpoint holds, measured from its tensors (for `loft inspect`
/// and the Model page): how many linears are 4-bit and what they cost per weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredQuantization {
    /// "nf4" or "fp4".
    pub quant_type: String,
    pub double_quant: bool,
    /// Linear layers stored in 4 bits.
    pub quantized_linears: usize,
    /// Weights in those layers.
    pub quantized_weights: u64,
    /// Bytes of those layers on disk: packed codes, absmax, maps and state.
    pub quantized_bytes: u64,
    /// Every tensor's bytes (embeddings, norms and unquantized layers included).
    pub total_bytes: u64,
}

impl StoredQuantization {
    /// Bits per quantized weight, everything counted (4.147 for NF4 with double quantization).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.quantized_bytes as f64 / self.quantized_weights.max(1) as f64
    }
}

/// Scan a safetensors checkpoint for bitsandbytes 4-bit layers; `None` when there are none.
pub fn stored_quantization(weights: &Weights) -> Option<StoredQuantization> {
    let names = weights.safetensors_names();
    let mut summary = StoredQuantization {
        quant_type: String::new(),
        double_quant: false,
        quantized_linears: 0,
        quantized_weights: 0,
        quantized_bytes: 0,
        total_bytes: 0,
    };
    let bytes = |name: &str| weights.raw(name).map_or(0, |t| t.data.len() as u64);
    for name in &names {
        summary.total_bytes += bytes(name);
        let (weight, quant_type) =
            match (name.strip_suffix(NF4_STATE), name.strip_suffix(FP4_STATE)) {
                (Some(w), _) => (w, "nf4"),
                (_, Some(w)) => (w, "fp4"),
                _ => continue,
            };
        summary.quant_type = quant_type.into();
        summary.quantized_linears += 1;
        let shape: Vec<u64> = weights
            .raw(name)
            .and_then(|t| serde_json::from_slice::<Value>(t.data).ok())
            .and_then(|v| {
                v.get("shape")?
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
            })
            .unwrap_or_default();
        summary.quantized_weights += shape.iter().product::<u64>();
        summary.double_quant |= weights.contains(&format!("{weight}.nested_absmax"));
        summary.quantized_bytes += [
            "",
            ".absmax",
            ".quant_map",
            ".nested_absmax",
            ".nested_quant_map",
            NF4_STATE,
            FP4_STATE,
        ]
        .iter()
        .map(|suffix| bytes(&format!("{weight}{suffix}")))
        .sum::<u64>();
    }
    (summary.quantized_linears > 0).then_some(summary)
}
