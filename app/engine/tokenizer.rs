//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from a GGUF's `tokenizer.ggml.*`
//! metadata (byte-level BPE as GPT-2/Llama 3/Qwen/SmolLM use it, or SentencePiece-style BPE with
//! byte fallback as Llama 2/Mistral/Gemma use it), split the way llama.cpp splits for that model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use super::error::{ModelError, Result};

pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: format!(
            "not a readable tokenizer.json ({e}); download the model's tokenizer again"
        ),
    })
}

/// The bos, eos and padding tokens a GGUF names, as (text, id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<(String, u32)>,
    pub eos: Option<(String, u32)>,
    pub pad: Option<(String, u32)>,
}

impl SpecialTokens {
    pub fn from_gguf(md: &HashMap<String, Value>) -> SpecialTokens {
        let tokens = strings(md.get("tokenizer.ggml.tokens"));
        let named = |key: &str| {
            let id = md.get(key).and_then(|v| v.to_u32().ok())?;
            Some((tokens.get(id as usize)?.to_string(), id))
        };
        SpecialTokens {
            bos: named("tokenizer.ggml.bos_token_id"),
            eos: named("tokenizer.ggml.eos_token_id"),
            pad: named("tokenizer.ggml.padding_token_id"),
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.as_str(),
                _ => "",
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn numbers(v: Option<&Value>) -> Vec<f64> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.to_f32()
                    .map(f64::from)
                    .or_else(|_| i.to_i32().map(f64::from))
                    .unwrap_or(0.0)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// llama.cpp's token types: 3 = control (special), 4 = user-defined, 6 = byte.
const CONTROL: f64 = 3.0;
const USER_DEFINED: f64 = 4.0;

pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Tokenizer> {
    let err = |message: String| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let kind = match md.get("tokenizer.ggml.model") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(err(
                "the GGUF has no tokenizer (`tokenizer.ggml.model` is missing)".into(),
            ))
        }
    };
    let tokens = strings(md.get("tokenizer.ggml.tokens"));
    if tokens.is_empty() {
        return Err(err(
            "the GGUF's `tokenizer.ggml.tokens` is missing or empty".into(),
        ));
    }
    let types = numbers(md.get("tokenizer.ggml.token_type"));
    let mut tokenizer = match kind {
        "gpt2" => byte_level_bpe(&tokens, md, &err)?,
        "llama" => sentencepiece_bpe(&tokens, md, &err)?,
        other => {
            return Err(err(format!(
                "tokenizer kind `{other}` is not supported yet (gpt2, llama); use the model's Hugging Face folder instead"
            )))
        }
    };
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1.0)))
        .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
        .map(|(s, t)| AddedToken::from(s.to_string(), *t == CONTROL))
        .collect();
    tokenizer.add_special_tokens(&added);
    let special = SpecialTokens::from_gguf(md);
    let add_bos = md
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(kind == "llama");
    if let (true, Some((bos, id))) = (add_bos, special.bos) {
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| err(format!("bos template: {e}")))?
            .special_tokens(vec![(bos, id)])
            .build()
            .map_err(|e| err(format!("bos template: {e}")))?;
        tokenizer.with_post_processor(Some(post));
    }
    Ok(tokenizer)
}

/// Byte-level BPE: every byte maps to a printable character, merges apply within the pieces that
/// the model's pre-tokenizer regex cuts.
fn byte_level_bpe(
    tokens: &[&str],
    md: &HashMap<String, Value>,
    err: &dyn Fn(String) -> ModelError,
) -> Result<Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = strings(md.get("tokenizer.ggml.merges"))
        .iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = match md.get("tokenizer.ggml.pre") {
        Some(Value::String(s)) => s.as_str(),
        _ => "default",
    };
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for pattern in split_patterns(pre) {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(format!("pre-tokenizer regex: {e}")))?;
        steps.push(split.into());
    }
    // With a model-specific regex the byte-level step only maps bytes; otherwise it applies GPT-2's regex.
    let use_gpt2_regex = !matches!(
        pre,
        "llama-bpe" | "llama3" | "qwen2" | "deepseek-llm" | "smaug-bpe"
    );
    steps.push(ByteLevel::new(false, true, use_gpt2_regex).into());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Regexes applied before the byte-level step, per llama.cpp's `tokenizer.ggml.pre` names.
fn split_patterns(pre: &str) -> Vec<&'static str> {
    match pre {
        "llama-bpe" | "llama3" | "smaug-bpe" => vec![LLAMA3_REGEX],
        "qwen2" | "deepseek-llm" => vec![QWEN2_REGEX],
        // Digits one by one, then GPT-2's pieces (StarCoder, SmolLM, Refact…).
        "smollm" | "starcoder" | "refact" | "codeshell" => vec![r"\p{N}"],
        _ => Vec::new(),
    }
}

/// SentencePiece-style BPE (Llama 2, Mistral, Gemma GGUFs): pieces with `▁` for spaces, merges
/// ranked by the pieces' scores, unknown bytes as `<0xXX>` tokens.
fn sentencepiece_bpe(
    tokens: &[&str],
    md: &HashMap<String, Value>,
    err: &dyn Fn(String) -> ModelError,
) -> Result<Tokenizer> {
    let scores = numbers(md.get("tokenizer.ggml.scores"));
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    // A merge (a, b) exists where a, b and a+b are all pieces; better-scored results merge first.
    let mut merges: Vec<(f64, u32, u32, String, String)> = Vec::new();
    for (piece, &id) in &vocab {
        let chars: Vec<(usize, char)> = piece.char_indices().collect();
        for &(split, _) in chars.iter().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                let score = scores.get(id as usize).copied().unwrap_or(0.0);
                merges.push((score, l, r, left.to_string(), right.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|m| (m.3, m.4)).collect();
    let unk = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens.get(id as usize))
        .map(|s| s.to_string());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let add_space = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let replace = Replace::new(" ", "▁").map_err(|e| err(format!("normalizer: {e}")))?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(replace.into());
    tokenizer.with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)));
    let space = Replace::new("▁", " ").map_err(|e| err(format!("decoder: {e}")))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(space),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(kind: &str, tokens: &[&str], extra: Vec<(&str, Value)>) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String(kind.into()));
        m.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                tokens
                    .iter()
                    .map(|t| Value::String(t.to_string()))
                    .collect(),
            ),
        );
        for (k, v) in extra {
            m.insert(k.into(), v);
        }
        m
    }

    #[test]
    fn byte_level_bpe_merges_and_decodes() {
        // "Ġ" is the byte-level form of a space.
        let tokens = ["<|endoftext|>", "h", "i", "hi", "Ġ", "Ġhi", "1", "2", "12"];
        let m = md(
            "gpt2",
            &tokens,
            vec![
                (
                    "tokenizer.ggml.merges",
                    Value::Array(
                        ["h i", "Ġ hi", "1 2"]
                            .iter()
                            .map(|s| Value::String(s.to_string()))
                            .collect(),
                    ),
                ),
                (
                    "tokenizer.ggml.token_type",
                    Value::Array(vec![
                        Value::I32(3),
                        Value::I32(1),
                        Value::I32(1),
                        Value::I32(1),
                        Value::I32(1),
                        Value::I32(1),
                        Value::I32(1),
                        Value::I32(1),
                        Value::I32(1),
                    ]),
                ),
                ("tokenizer.ggml.pre", Value::String("smollm".into())),
            ],
        );
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        let enc = t.encode("hi hi<|endoftext|>12", false).unwrap();
        // smollm splits digits one by one, so "12" stays two tokens.
        assert_eq!(enc.get_ids(), &[3, 5, 0, 6, 7]);
        assert_eq!(
            t.decode(enc.get_ids(), false).unwrap(),
            "hi hi<|endoftext|>12"
        );
        let default = md(
            "gpt2",
            &tokens,
            vec![(
                "tokenizer.ggml.merges",
                Value::Array(vec![Value::String("1 2".into())]),
            )],
        );
        let t = from_gguf(Path::new("x.gguf"), &default).unwrap();
        assert_eq!(t.encode("12", false).unwrap().get_ids(), &[8]);
    }

    #[test]
    fn sentencepiece_bpe_with_byte_fallback() {
        let tokens = ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi", "<0x21>"];
        let scores = [0.0f32, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.1, 0.0];
        let m = md(
            "llama",
            &tokens,
            vec![
                (
                    "tokenizer.ggml.scores",
                    Value::Array(scores.iter().map(|s| Value::F32(*s)).collect()),
                ),
                ("tokenizer.ggml.bos_token_id", Value::U32(1)),
                ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ],
        );
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        let enc = t.encode("hi!", true).unwrap();
        assert_eq!(enc.get_ids(), &[1, 7, 8], "bos, ▁hi, byte 0x21");
        assert_eq!(t.decode(&enc.get_ids()[1..], false).unwrap(), "hi!");
    }

    #[test]
    fn unknown_kinds_and_missing_vocab_are_explained() {
        let m = md("rwkv", &["a"], vec![]);
        let msg = from_gguf(Path::new("m.gguf"), &m).unwrap_err().to_string();
        assert!(
            msg.contains("m.gguf") && msg.contains("rwkv") && msg.contains("gpt2"),
            "{msg}"
        );
        let msg = from_gguf(Path::new("m.gguf"), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no tokenizer"), "{msg}");
    }
}
