//! NF4 and double quantization bit for bit as bitsandbytes 0.50.2 makes them on the CPU (fixtures by
//! scripts/make_qlora_fixtures.py: real SmolLM2 matrices and odd shapes, f32, bf16 and f16 inputs):
//! packed bytes, absmax (f32, or u8 codes with their nested absmax, dynamic map and offset) and the
//! dequantized values are identical, not merely close.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use loft::engine::quant::nf4::{self, Absmax, DoubleQuant, Nf4Matrix};
use sha2::{Digest, Sha256};

fn nf4_dir() -> PathBuf {
    support::fixtures().join("qlora").join("nf4")
}

struct Case {
    name: String,
    shape: (usize, usize),
    dtype: String,
    sha256: HashMap<String, String>,
    tensors: HashMap<String, Tensor>,
}

impl Case {
    fn f32s(&self, key: &str) -> Vec<f32> {
        self.tensor(key)
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        self.tensor(key).flatten_all().unwrap().to_vec1().unwrap()
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no `{key}` in the fixture", self.name))
    }

    /// The values bitsandbytes quantized, widened to f32 (exact from bf16 and f16).
    fn input(&self) -> Vec<f32> {
        self.f32s("input")
    }
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(nf4_dir().join("cases.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<Case> = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let shape = c["shape"].as_array().unwrap();
            let path = nf4_dir().join(format!("{name}.safetensors"));
            Case {
                shape: (
                    shape[0].as_u64().unwrap() as usize,
                    shape[1].as_u64().unwrap() as usize,
                ),
                dtype: c["dtype"].as_str().unwrap().to_string(),
                sha256: serde_json::from_value(c["sha256"].clone()).unwrap(),
                tensors: candle_core::safetensors::load(&path, &Device::Cpu).unwrap(),
                name,
            }
        })
        .collect();
    assert!(cases.len() >= 10, "the fixture lists {} cases", cases.len());
    cases
}

/// Equal bit for bit; on failure, says where the first difference is and how many there are.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let differ: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = differ.first() {
        panic!(
            "{what}: {} of {} values differ, first at {i}: {} vs bitsandbytes' {}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&i) = differ.first() {
        panic!(
            "{what}: {} of {} bytes differ, first at {i}: {:#04x} vs bitsandbytes' {:#04x}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Loft's dequantized values against the fixture's: the values themselves where the fixture keeps them,
/// and always their sha256.
fn check_dequant(case: &Case, prefix: &str, got: &[f32]) {
    let what = format!("{} {prefix}dequant", case.name);
    if case.tensors.contains_key(&format!("{prefix}dequant")) {
        assert_same_bits(&what, got, &case.f32s(&format!("{prefix}dequant")));
    }
    assert_eq!(
        sha256_f32(got),
        case.sha256[&format!("{prefix}dequant")],
        "{what}: the sha256 of the values differs"
    );
}

#[test]
fn plain_nf4_is_bitsandbytes_to_the_bit() {
    for case in cases() {
        let q = Nf4Matrix::quantize(&case.input(), case.shape, &case.dtype, false);
        assert_same_bytes(
            &format!("{} packed", case.name),
            &q.packed,
            &case.bytes("plain.packed"),
        );
        let Absmax::Plain(absmax) = &q.absmax else {
            panic!(
                "{}: plain quantization made a double-quantized absmax",
                case.name
            )
        };
        assert_same_bits(
            &format!("{} absmax", case.name),
            absmax,
            &case.f32s("plain.absmax"),
        );
        check_dequant(&case, "plain.", &q.dequantize());
        assert_eq!(q.source_dtype, case.dtype);
    }
}

#[test]
fn double_quantization_is_bitsandbytes_to_the_bit() {
    for case in cases() {
        let name = &case.name;
        let q = Nf4Matrix::quantize(&case.input(), case.shape, &case.dtype, true);
        assert_same_bytes(
            &format!("{name} packed"),
            &q.packed,
            &case.bytes("dq.packed"),
        );
        let Absmax::Double(dq) = &q.absmax else {
            panic!("{name}: double quantization kept a plain absmax")
        };
        let offset = case.f32s("dq.offset")[0];
        // torch's f32 mean, summed in torch's order: the same f32, not merely a close one.
        assert_eq!(
            dq.offset.to_bits(),
            offset.to_bits(),
            "{name}: offset {} vs bitsandbytes' {offset}",
            dq.offset
        );
        assert_same_bytes(
            &format!("{name} absmax codes"),
            &dq.codes,
            &case.bytes("dq.absmax"),
        );
        assert_same_bits(
            &format!("{name} nested_absmax"),
            &dq.scales,
            &case.f32s("dq.nested_absmax"),
        );
        assert_same_bits(
            &format!("{name} dynamic map"),
            &dq.map,
            &case.f32s("dq.nested_quant_map"),
        );
        assert_eq!(dq.block, 256);
        check_dequant(&case, "dq.", &q.dequantize());
    }
}

/// Given bitsandbytes' offset, the second quantization gives its codes and scales too: the codes do
/// not depend on how the offset was found, only on its value.
#[test]
fn double_quantization_with_bitsandbytes_offset_gives_its_codes() {
    for case in cases() {
        let absmax = case.f32s("plain.absmax");
        let offset = case.f32s("dq.offset")[0];
        let dq = DoubleQuant::quantize(&absmax, offset);
        assert_same_bytes(
            &format!("{} absmax codes", case.name),
            &dq.codes,
            &case.bytes("dq.absmax"),
        );
        assert_same_bits(
            &format!("{} nested_absmax", case.name),
            &dq.scales,
            &case.f32s("dq.nested_absmax"),
        );
    }
}

/// Reading what bitsandbytes stored (no quantizing on Loft's side): the dequantized values are
/// bitsandbytes' formula to the bit, including the case where bitsandbytes' own AVX-512 CPU kernel
/// gets it wrong (rows of 80 values), where Loft keeps the right values.
#[test]
fn bitsandbytes_stored_blocks_dequantize_to_the_bit() {
    for case in cases() {
        for (prefix, double) in [("plain.", false), ("dq.", true)] {
            let absmax = match double {
                false => Absmax::Plain(case.f32s("plain.absmax")),
                true => Absmax::Double(DoubleQuant {
                    codes: case.bytes("dq.absmax"),
                    scales: case.f32s("dq.nested_absmax"),
                    map: case.f32s("dq.nested_quant_map"),
                    offset: case.f32s("dq.offset")[0],
                    block: 256,
                }),
            };
            let stored = Nf4Matrix {
                shape: case.shape,
                block: 64,
                packed: case.bytes(&format!("{prefix}packed")),
                absmax,
                source_dtype: case.dtype.clone(),
            };
            let values = stored.dequantize();
            check_dequant(&case, prefix, &values);
            if let Some(bnb) = case.tensors.get(&format!("{prefix}dequant_bnb")) {
                let bnb: Vec<f32> = bnb.flatten_all().unwrap().to_vec1().unwrap();
                let wrong = values.iter().zip(&bnb).filter(|(a, b)| a != b).count();
                assert!(
                    wrong > 0,
                    "{}: bitsandbytes' AVX-512 dequant was expected to differ here",
                    case.name
                );
            }
        }
    }
    assert!(
        cases()
            .iter()
            .any(|c| c.tensors.contains_key("dq.dequant_bnb")),
        "the fixture keeps bitsandbytes' wrong AVX-512 values for the trap case"
    );
}

/// The signed dynamic map Loft builds is the one bitsandbytes stores as `nested_quant_map`.
#[test]
fn the_dynamic_map_is_bitsandbytes_map() {
    let case = cases().into_iter().next().unwrap();
    assert_same_bits(
        "dynamic map",
        &nf4::dynamic_map(),
        &case.f32s("dq.nested_quant_map"),
    );
}

/// torch's f32 mean in its own summation order: for absmax vectors of every length the fixtures
/// hold, Loft's mean is bitsandbytes' offset exactly (an f64 mean rounded once is not, for some).
#[test]
fn torch_mean_is_torch_to_the_bit() {
    let mut f64_differs = 0;
    for case in cases() {
        let absmax = case.f32s("plain.absmax");
        let offset = case.f32s("dq.offset")[0];
        assert_eq!(
            nf4::torch_mean(&absmax).to_bits(),
            offset.to_bits(),
            "{}: mean of {} values",
            case.name,
            absmax.len()
        );
        let f64_mean = (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len() as f64) as f32;
        f64_differs += usize::from(f64_mean != offset);
    }
    println!("an f64 mean differs from torch's in {f64_differs} cases");
}
