//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from a GGUF's `tokenizer.ggml.*`
//! metadata: byte-level BPE (`gpt2`: GPT-2, Llama 3, Qwen, SmolLM…) or SentencePiece-style BPE with
//! byte fallback (`llama`: Llama 2, Mistral, Gemma, Phi-3). Text is cut before BPE the way llama.cpp
//! cuts it for the model's `tokenizer.ggml.pre`, because llama.cpp is what a GGUF was made and
//! checked for; where transformers' own GGUF converter cuts differently, Loft follows llama.cpp (and
//! the model's original tokenizer.json, which llama.cpp copies).

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
use super::gguf::{metadata_float, metadata_integer};

/// A Hugging Face `tokenizer.json`.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: "file not found; the model folder needs its tokenizer.json".into(),
        });
    }
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
    /// From `tokenizer.ggml.{bos,eos,padding}_token_id`; an id outside the vocabulary counts as unset
    /// (llama.cpp ignores those too).
    pub fn from_gguf(md: &HashMap<String, Value>) -> SpecialTokens {
        let tokens = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| string_array(v).ok())
            .unwrap_or_default();
        let named = |key: &str| {
            let id = md.get(key).and_then(metadata_integer)?;
            let id = u32::try_from(id).ok()?;
            Some((tokens.get(id as usize)?.to_string(), id))
        };
        SpecialTokens {
            bos: named("tokenizer.ggml.bos_token_id"),
            eos: named("tokenizer.ggml.eos_token_id"),
            pad: named("tokenizer.ggml.padding_token_id"),
        }
    }
}

/// A tokenizer rebuilt from GGUF metadata, for `tokenizer.ggml.model` "gpt2" or "llama".
pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Tokenizer> {
    let meta = Meta { path, md };
    let kind = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
        meta.error("the GGUF has no tokenizer (`tokenizer.ggml.model` is missing); use the model's Hugging Face folder instead")
    })?;
    let tokens = meta.tokens()?;
    let types = meta.numbers("tokenizer.ggml.token_type")?;
    let (mut tokenizer, default_add_bos) = match kind {
        "gpt2" => byte_level_bpe(&meta, &tokens)?,
        "llama" => (sentencepiece_bpe(&meta, &tokens)?, true),
        other => {
            return Err(meta.error(format!(
                "tokenizer kind `{other}` (`tokenizer.ggml.model`) is not supported; Loft rebuilds `gpt2` (byte-level BPE) and `llama` (SentencePiece BPE) tokenizers from a GGUF. Use the model's Hugging Face folder (with its tokenizer.json) instead"
            )))
        }
    };
    tokenizer.add_special_tokens(&added_tokens(&tokens, &types));
    let add_bos = meta
        .boolean("tokenizer.ggml.add_bos_token")
        .unwrap_or(default_add_bos);
    let add_eos = meta
        .boolean("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);
    let special = SpecialTokens::from_gguf(md);
    let bos = special.bos.filter(|_| add_bos);
    let eos = special.eos.filter(|_| add_eos);
    if bos.is_some() || eos.is_some() {
        tokenizer.with_post_processor(Some(bos_eos_processor(&meta, bos, eos)?));
    }
    Ok(tokenizer)
}

/// Typed access to the metadata, with errors naming the file and key.
struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn malformed(&self, key: &str, expected: &str) -> ModelError {
        ModelError::field(
            self.path,
            key,
            format!(
                "should be {expected}; the GGUF is damaged or was written by an incompatible tool"
            ),
        )
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.malformed(key, "a string")),
        }
    }

    fn boolean(&self, key: &str) -> Option<bool> {
        self.md.get(key).and_then(|v| v.to_bool().ok())
    }

    fn tokens(&self) -> Result<Vec<&str>> {
        let key = "tokenizer.ggml.tokens";
        let tokens = match self.md.get(key) {
            Some(v) => string_array(v).map_err(|_| self.malformed(key, "a list of strings"))?,
            None => Vec::new(),
        };
        if tokens.is_empty() {
            return Err(self.error(format!(
                "`{key}` is missing or empty, so the GGUF has no vocabulary; use the model's Hugging Face folder instead"
            )));
        }
        Ok(tokens)
    }

    /// A list of numbers (token types, scores); empty when the key is absent.
    fn numbers(&self, key: &str) -> Result<Vec<f64>> {
        let Some(value) = self.md.get(key) else {
            return Ok(Vec::new());
        };
        let items = value
            .to_vec()
            .map_err(|_| self.malformed(key, "a list of numbers"))?;
        items
            .iter()
            .map(metadata_float)
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| self.malformed(key, "a list of numbers"))
    }

    fn merges(&self) -> Result<Vec<(String, String)>> {
        let key = "tokenizer.ggml.merges";
        let Some(value) = self.md.get(key) else {
            return Err(self.error(format!(
                "`{key}` is missing; a byte-level BPE tokenizer cannot be rebuilt without its merges"
            )));
        };
        let merges = string_array(value).map_err(|_| self.malformed(key, "a list of strings"))?;
        // llama.cpp splits at the first space after the first byte, so a merge whose left side is
        // a space itself still parses.
        merges
            .iter()
            .map(|m| {
                let cut = m.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1);
                cut.map(|i| (m[..i].to_string(), m[i + 1..].to_string()))
                    .ok_or_else(|| self.malformed(key, "a list of \"left right\" pairs"))
            })
            .collect()
    }
}

fn string_array(v: &Value) -> std::result::Result<Vec<&str>, ()> {
    let items = v.to_vec().map_err(|_| ())?;
    items
        .iter()
        .map(|i| match i {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(()),
        })
        .collect()
}

/// llama.cpp's token types.
const UNKNOWN: f64 = 2.0;
const CONTROL: f64 = 3.0;
const USER_DEFINED: f64 = 4.0;

/// Tokens llama.cpp matches whole in the raw text before any splitting: control and unknown ones
/// as special tokens, user-defined ones (like `<think>`) as plain added tokens. Matching happens on
/// the raw text, hence `normalized(false)`.
fn added_tokens(tokens: &[&str], types: &[f64]) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, t)| [UNKNOWN, CONTROL, USER_DEFINED].contains(t))
        .map(|(s, t)| AddedToken::from(s.to_string(), *t != USER_DEFINED).normalized(false))
        .collect()
}

fn bos_eos_processor(
    meta: &Meta,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<TemplateProcessing> {
    let around = |seq: &str| {
        let mut parts = Vec::new();
        parts.extend(bos.as_ref().map(|(t, _)| t.clone()));
        parts.push(seq.to_string());
        parts.extend(eos.as_ref().map(|(t, _)| t.clone()));
        parts.join(" ")
    };
    let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    TemplateProcessing::builder()
        .try_single(around("$A"))
        .and_then(|b| b.try_pair(format!("{} {}", around("$A"), around("$B:1"))))
        .map_err(|e| meta.error(format!("bos/eos template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| meta.error(format!("bos/eos template: {e}")))
}

fn vocab_of(tokens: &[&str]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect()
}

/// Byte-level BPE: every byte maps to a printable character; merges apply within the pieces the
/// model's pre-tokenizer cuts. Returns the tokenizer and whether llama.cpp adds BOS by default.
fn byte_level_bpe(meta: &Meta, tokens: &[&str]) -> Result<(Tokenizer, bool)> {
    let pre_name = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        meta.error(format!(
            "pre-tokenizer `{pre_name}` (`tokenizer.ggml.pre`) is not one Loft knows, so it cannot split text the way this model was trained; Loft knows: {}. Use the model's Hugging Face folder (with its tokenizer.json) instead",
            KNOWN_PRE_TOKENIZERS.join(", ")
        ))
    })?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), meta.merges()?)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| meta.error(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for pattern in pre.splits {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| meta.error(format!("pre-tokenizer regex `{pattern}`: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, true, pre.gpt2).into());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok((tokenizer, pre.add_bos))
}

/// How llama.cpp cuts text before BPE for one `tokenizer.ggml.pre` family.
struct PreTokenizer {
    /// Regexes applied one after another, each isolating its matches.
    splits: &'static [&'static str],
    /// Finish with GPT-2's regex (the one built into the byte-level step).
    gpt2: bool,
    /// A piece that is already a whole token skips the merges.
    ignore_merges: bool,
    /// llama.cpp adds BOS for this family unless the GGUF says otherwise.
    add_bos: bool,
}

// The regexes as the models' own tokenizer.json files write them (llama.cpp rewrites some for its
// regex engine; `tokenizers` runs the originals).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const KNOWN_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "exaone4",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "dbrx",
    "smaug-bpe",
    "glm4",
    "chatglm-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "stablelm2",
    "hunyuan",
    "solar-open",
    "qwen35",
    "tekken",
    "gpt-4o",
    "llama4",
    "kanana2",
    "minimax-m2",
];

/// llama.cpp's table (src/llama-vocab.cpp), for the families Loft can run or that are common.
fn pre_tokenizer(name: &str) -> Option<PreTokenizer> {
    let plain = |splits, gpt2| PreTokenizer {
        splits,
        gpt2,
        ignore_merges: false,
        add_bos: false,
    };
    let llama3_like = |splits| PreTokenizer {
        splits,
        gpt2: false,
        ignore_merges: true,
        add_bos: true,
    };
    Some(match name {
        // What llama.cpp does for a GGUF that names no pre-tokenizer (it warns that quality suffers).
        "default" => plain(
            &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
        | "exaone4" => plain(&[], true),
        // Digits one by one, then GPT-2's pieces.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => plain(&[r"\p{N}"], true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => llama3_like(&[LLAMA3_REGEX]),
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => plain(&[LLAMA3_REGEX], false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => plain(&[QWEN2_REGEX], false),
        "qwen35" => plain(&[QWEN35_REGEX], false),
        "tekken" => llama3_like(&[TEKKEN_REGEX]),
        "gpt-4o" | "llama4" | "kanana2" | "minimax-m2" => plain(&[GPT4O_REGEX], false),
        _ => return None,
    })
}

/// SentencePiece-style BPE (Llama 2, Mistral, Gemma, Phi-3 GGUFs): pieces with `▁` for spaces,
/// merges recovered from the pieces' scores, bytes with no piece as `<0xXX>` tokens.
fn sentencepiece_bpe(meta: &Meta, tokens: &[&str]) -> Result<Tokenizer> {
    let gemma = meta
        .string("general.architecture")?
        .is_some_and(|a| a.starts_with("gemma"));
    let scores = meta.numbers("tokenizer.ggml.scores")?;
    let (pieces, ranks) = if gemma {
        gemma_pieces(tokens)
    } else {
        let pieces: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let ranks = (0..tokens.len())
            .map(|i| scores.get(i).copied().unwrap_or(0.0))
            .collect();
        (pieces, ranks)
    };
    let vocab: Vocab = pieces
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges_from_scores(&pieces, &ranks, &vocab);
    let unk = meta
        .md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(metadata_integer)
        .and_then(|id| pieces.get(usize::try_from(id).ok()?))
        .cloned();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| meta.error(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let add_space = meta
        .boolean("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    tokenizer.with_normalizer(Some(space_normalizer(meta, add_space)?));
    tokenizer.with_decoder(Some(space_decoder(meta, add_space)?));
    Ok(tokenizer)
}

/// Gemma GGUFs store a token of two or more spaces as real spaces where the model's tokenizer
/// spells it with `▁`, and their scores do not follow the merge order (the token order does).
/// Both fixes as transformers' GGUF converter makes them.
fn gemma_pieces(tokens: &[&str]) -> (Vec<String>, Vec<f64>) {
    let pieces = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "▁".repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let ranks = (0..tokens.len()).map(|i| -(i as f64)).collect();
    (pieces, ranks)
}

/// A merge (left, right) exists wherever left, right and left+right are all pieces; the better the
/// merged piece's score, the earlier the merge. Ties are broken as transformers' `generate_merges`
/// breaks them (longer left side, then longer right side, then vocabulary order), so the merges
/// come out in the same order.
fn merges_from_scores(pieces: &[String], scores: &[f64], vocab: &Vocab) -> Vec<(String, String)> {
    struct Candidate {
        score: f64,
        left_len: usize,
        right_len: usize,
        left: String,
        right: String,
    }
    let mut candidates = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut local: Vec<(u32, u32, Candidate)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(cut, _)| {
                let (left, right) = piece.split_at(cut);
                let (&l, &r) = (vocab.get(left)?, vocab.get(right)?);
                let candidate = Candidate {
                    score: scores[i],
                    left_len: left.chars().count(),
                    right_len: right.chars().count(),
                    left: left.to_string(),
                    right: right.to_string(),
                };
                Some((l, r, candidate))
            })
            .collect();
        local.sort_by_key(|(l, r, _)| (*l, *r));
        candidates.extend(local.into_iter().map(|(_, _, c)| c));
    }
    // A stable sort, best first, like Python's `sorted(..., reverse=True)`.
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_len.cmp(&a.left_len))
            .then(b.right_len.cmp(&a.right_len))
    });
    candidates.into_iter().map(|c| (c.left, c.right)).collect()
}

/// Spaces become `▁`, and (unless the GGUF says not to) every stretch of text gets one in front.
/// As a normalizer it also applies after each special token, which is what llama.cpp does.
fn space_normalizer(meta: &Meta, add_space: bool) -> Result<NormalizerWrapper> {
    let replace = Replace::new(" ", "▁").map_err(|e| meta.error(format!("normalizer: {e}")))?;
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if add_space {
        steps.push(Prepend::new("▁".into()).into());
    }
    steps.push(replace.into());
    Ok(tokenizers::normalizers::Sequence::new(steps).into())
}

fn space_decoder(meta: &Meta, add_space: bool) -> Result<DecoderWrapper> {
    let space = Replace::new("▁", " ").map_err(|e| meta.error(format!("decoder: {e}")))?;
    let mut steps: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(space),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    fn md(kind: &str, tokens: &[&str], extra: Vec<(&str, Value)>) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String(kind.into()));
        m.insert("tokenizer.ggml.tokens".into(), strings(tokens));
        for (k, v) in extra {
            m.insert(k.into(), v);
        }
        m
    }

    fn types(t: &[i32]) -> Value {
        Value::Array(t.iter().map(|x| Value::I32(*x)).collect())
    }

    /// A byte-level vocabulary: `<|endoftext|>` (control), `<think>` (user-defined), some pieces.
    fn byte_level(pre: Option<&str>, merges: &[&str]) -> HashMap<String, Value> {
        let tokens = [
            "<|endoftext|>",
            "<think>",
            "h",
            "i",
            "hi",
            "Ġ",
            "Ġhi",
            "1",
            "2",
            "12",
            "Ġ1",
        ];
        let mut extra = vec![
            ("tokenizer.ggml.merges", strings(merges)),
            (
                "tokenizer.ggml.token_type",
                types(&[3, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(0)),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ];
        if let Some(pre) = pre {
            extra.push(("tokenizer.ggml.pre", Value::String(pre.into())));
        }
        md("gpt2", &tokens, extra)
    }

    fn ids(t: &Tokenizer, text: &str, special: bool) -> Vec<u32> {
        t.encode(text, special).unwrap().get_ids().to_vec()
    }

    #[test]
    fn byte_level_bpe_merges_and_decodes() {
        let m = byte_level(Some("gpt-2"), &["h i", "Ġ hi", "1 2", "Ġ 1"]);
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        let got = ids(&t, "hi hi<|endoftext|>12<think>", true);
        assert_eq!(got, [4, 6, 0, 9, 1]);
        assert_eq!(
            t.decode(&got, false).unwrap(),
            "hi hi<|endoftext|>12<think>"
        );
        assert_eq!(t.decode(&got, true).unwrap(), "hi hi12<think>");
        // No BOS: the GGUF does not ask for one.
        assert_eq!(ids(&t, "hi", true), [4]);
    }

    #[test]
    fn smollm_splits_digits_one_by_one() {
        let m = byte_level(Some("smollm"), &["h i", "Ġ hi", "1 2", "Ġ 1"]);
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        // "12" stays two tokens and the space before a digit stays alone, as llama.cpp and
        // SmolLM's own tokenizer.json (Digits, then ByteLevel) split them.
        assert_eq!(ids(&t, "12 1", false), [7, 8, 5, 7]);
        let gpt2 = from_gguf(
            Path::new("x.gguf"),
            &byte_level(Some("gpt-2"), &["1 2", "Ġ 1"]),
        )
        .unwrap();
        assert_eq!(ids(&gpt2, "12 1", false), [9, 10]);
    }

    #[test]
    fn llama3_family_ignores_merges_and_adds_bos() {
        // No merge builds "hi", but "hi" is a whole token: llama-bpe takes it as is.
        let m = byte_level(Some("llama-bpe"), &["Ġ hi"]);
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        assert_eq!(ids(&t, "hi", true), [0, 4], "BOS by default, then `hi`");
        let m = byte_level(Some("qwen2"), &["Ġ hi"]);
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        assert_eq!(ids(&t, "hi", true), [2, 3], "no ignore_merges, no BOS");
        // Qwen2 cuts digits one by one.
        assert_eq!(ids(&t, "12", false), [7, 8]);
    }

    #[test]
    fn add_bos_and_add_eos_flags_are_followed() {
        let mut m = byte_level(Some("llama-bpe"), &[]);
        m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        m.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        assert_eq!(ids(&t, "hi", true), [4, 0]);
        assert_eq!(ids(&t, "hi", false), [4]);
    }

    #[test]
    fn sentencepiece_bpe_with_byte_fallback() {
        let tokens = [
            "<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi", "<0x21>", "hi",
        ];
        let scores = [0.0f32, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.1, 0.0, -3.0];
        let m = md(
            "llama",
            &tokens,
            vec![
                (
                    "tokenizer.ggml.scores",
                    Value::Array(scores.iter().map(|s| Value::F32(*s)).collect()),
                ),
                (
                    "tokenizer.ggml.token_type",
                    types(&[2, 3, 3, 1, 1, 1, 1, 1, 6, 1]),
                ),
                ("tokenizer.ggml.bos_token_id", Value::U32(1)),
                ("tokenizer.ggml.eos_token_id", Value::U32(2)),
                ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ],
        );
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        let got = ids(&t, "hi!", true);
        // BOS by default for SentencePiece; "▁h"+"i" wins over "h"+"i" because "▁hi" scores best.
        assert_eq!(got, [1, 7, 8], "bos, ▁hi, byte 0x21");
        assert_eq!(t.decode(&got[1..], false).unwrap(), "hi!");
        // Text after a special token gets its own leading ▁, as llama.cpp does.
        assert_eq!(ids(&t, "hi</s>hi", false), [7, 2, 7]);
    }

    #[test]
    fn sentencepiece_merges_follow_scores_then_transformers_tie_breaks() {
        let pieces: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab: Vocab = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -1.0];
        let merges = merges_from_scores(&pieces, &scores, &vocab);
        let merges: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        // Score -1 first: "ab"+"c" (longer left side) before "a"+"bc" and "b"+"c"; then "a"+"b".
        assert_eq!(merges, [("ab", "c"), ("a", "bc"), ("b", "c"), ("a", "b")]);
    }

    #[test]
    fn gemma_respells_space_tokens_and_has_no_prefix_space() {
        let tokens = ["<pad>", "<bos>", "  ", "▁", "h", "i", "hi", "▁hi"];
        let m = md(
            "llama",
            &tokens,
            vec![
                ("general.architecture", Value::String("gemma3".into())),
                ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
                ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
                ("tokenizer.ggml.scores", Value::Array(vec![])),
            ],
        );
        let t = from_gguf(Path::new("x.gguf"), &m).unwrap();
        assert_eq!(ids(&t, "hi", true), [6]);
        assert_eq!(
            ids(&t, "  hi", true),
            [2, 6],
            "two spaces are one `▁▁` token"
        );
        assert_eq!(t.decode(&[2, 6], false).unwrap(), "  hi");
    }

    #[test]
    fn unknown_kinds_pre_tokenizers_and_missing_vocab_are_explained() {
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
        let msg = from_gguf(Path::new("m.gguf"), &byte_level(Some("viking"), &[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("viking") && msg.contains("smollm") && msg.contains("Hugging Face"),
            "{msg}"
        );
        let mut m = byte_level(None, &[]);
        m.remove("tokenizer.ggml.merges");
        let msg = from_gguf(Path::new("m.gguf"), &m).unwrap_err().to_string();
        assert!(msg.contains("tokenizer.ggml.merges"), "{msg}");
        let m = md(
            "gpt2",
            &["a"],
            vec![("tokenizer.ggml.merges", Value::U32(3))],
        );
        let msg = from_gguf(Path::new("m.gguf"), &m).unwrap_err().to_string();
        assert!(msg.contains("merges") && msg.contains("list"), "{msg}");
    }

    #[test]
    fn every_known_pre_tokenizer_compiles() {
        for name in KNOWN_PRE_TOKENIZERS {
            let t = from_gguf(Path::new("x.gguf"), &byte_level(Some(name), &["h i"]));
            let t = t.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!ids(&t, "hi 12 ok's\n\n  x", false).is_empty(), "{name}");
        }
    }

    #[test]
    fn special_tokens_come_from_the_ids() {
        let m = byte_level(None, &[]);
        let s = SpecialTokens::from_gguf(&m);
        assert_eq!(s.bos, Some(("<|endoftext|>".to_string(), 0)));
        assert_eq!(s.pad, None);
        let mut m = m;
        m.insert("tokenizer.ggml.padding_token_id".into(), Value::U32(99));
        assert_eq!(SpecialTokens::from_gguf(&m).pad, None, "out of range");
    }
}
