//! Where a model comes from — a local Hugging Face folder, a .gguf file, or a hub repo id (from the
//! local cache, else downloaded) — resolved to the same `ModelFiles`, then loaded as a `LoadedModel`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::arch::Arch;
use super::cache;
use super::chat::{ChatTemplate, TemplateOrigin};
use super::error::{read_json, ModelError, Result};
use super::gguf::GgufModel;
use super::hub::{self, DownloadEvent, HubOptions};
use super::model::{LoadOptions, Model};
use super::quant::bnb::{self, StoredQuantization};
use super::tokenizer;
use super::units;
use super::weights::{refuse_pickle, safetensors_files, Weights};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Folder(PathBuf),
    Gguf(PathBuf),
    Hub {
        repo_id: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// What a user typed: an existing folder or .gguf file, else `org/name` or `org/name@revision`.
    pub fn parse(spec: &str) -> Result<ModelSource> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            refuse_pickle(path)?;
            if is_gguf(path) {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            if path.file_name().is_some_and(|n| n == "config.json") {
                let folder = path.parent().unwrap_or(Path::new("."));
                return Ok(ModelSource::Folder(folder.to_path_buf()));
            }
            return Err(ModelError::invalid_input(
                "model source",
                format!("{spec}: not a model; pick a Hugging Face model folder (with config.json) or a .gguf file"),
            ));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev.to_string())),
            _ => (spec, None),
        };
        if cache::is_repo_id(repo) && !spec.ends_with(".gguf") {
            return Ok(ModelSource::Hub {
                repo_id: repo.to_string(),
                revision,
            });
        }
        Err(ModelError::NotFound(format!(
            "{spec}: no such file or folder, and not a Hugging Face repo id (like `HuggingFaceTB/SmolLM2-135M-Instruct`)"
        )))
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "paths", rename_all = "lowercase")]
pub enum WeightFiles {
    Safetensors(Vec<PathBuf>),
    Gguf(PathBuf),
}

/// The files of one model, wherever it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelFiles {
    pub root: PathBuf,
    pub weights: WeightFiles,
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    /// transformers 5 saves the template beside the tokenizer as `chat_template.jinja`.
    pub chat_template: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
}

impl ModelFiles {
    pub fn from_folder(folder: &Path) -> Result<ModelFiles> {
        let existing = |name: &str| Some(folder.join(name)).filter(|p| p.is_file());
        let config = existing("config.json");
        if config.is_none() {
            if let Some(gguf) = single_gguf(folder) {
                return ModelFiles::from_gguf(&gguf);
            }
            return Err(ModelError::NotFound(format!(
                "{}: no config.json here; pick the folder that holds the model's config.json, or a .gguf file",
                folder.display()
            )));
        }
        Ok(ModelFiles {
            root: folder.to_path_buf(),
            weights: WeightFiles::Safetensors(safetensors_files(folder)?),
            config,
            tokenizer: existing("tokenizer.json"),
            tokenizer_config: existing("tokenizer_config.json"),
            chat_template: existing("chat_template.jinja"),
            generation_config: existing("generation_config.json"),
        })
    }

    pub fn from_gguf(path: &Path) -> Result<ModelFiles> {
        if !path.is_file() {
            return Err(ModelError::NotFound(format!(
                "{}: no such file",
                path.display()
            )));
        }
        Ok(ModelFiles {
            root: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            weights: WeightFiles::Gguf(path.to_path_buf()),
            config: None,
            tokenizer: None,
            tokenizer_config: None,
            chat_template: None,
            generation_config: None,
        })
    }
}

fn single_gguf(folder: &Path) -> Option<PathBuf> {
    let ggufs: Vec<PathBuf> = std::fs::read_dir(folder)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_gguf(p))
        .collect();
    match ggufs.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// How to resolve hub repo ids.
pub struct Resolve<'a> {
    pub hub: HubOptions,
    /// Only look in the local cache; never download.
    pub offline: bool,
    pub on_download: &'a mut dyn FnMut(DownloadEvent),
    pub cancel: &'a AtomicBool,
}

pub fn resolve(source: &ModelSource, how: &mut Resolve) -> Result<ModelFiles> {
    match source {
        ModelSource::Folder(folder) => ModelFiles::from_folder(folder),
        ModelSource::Gguf(path) => ModelFiles::from_gguf(path),
        ModelSource::Hub { repo_id, revision } => {
            let cache_dir = how
                .hub
                .cache_dir
                .clone()
                .unwrap_or_else(cache::hub_cache_dir);
            if let Some(snapshot) = cache::find_cached(&cache_dir, repo_id, revision.as_deref()) {
                if let Ok(files) = ModelFiles::from_folder(&snapshot) {
                    return Ok(files);
                }
            }
            if how.offline {
                return Err(ModelError::NotFound(format!(
                    "`{repo_id}` is not in the Hugging Face cache ({}); connect to the network to download it",
                    cache_dir.display()
                )));
            }
            let mut opts = how.hub.clone();
            opts.revision = revision.clone();
            let snapshot = hub::download_model(repo_id, &opts, how.on_download, how.cancel)?;
            ModelFiles::from_folder(&snapshot)
        }
    }
}

/// What Loft can tell about a model without loading its weights.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub files: ModelFiles,
    pub arch: Arch,
    pub parameters: u64,
    pub context_length: usize,
    pub vocab_size: usize,
    pub dtype: Option<String>,
    pub chat_template: TemplateOrigin,
    /// Bytes of the weight files.
    pub size_on_disk: u64,
    /// For a checkpoint saved already quantized by bitsandbytes: what its tensors hold.
    pub stored_quantization: Option<StoredQuantization>,
}

impl ModelInfo {
    /// How the checkpoint is quantized, in words, when it is: e.g. "bitsandbytes 4-bit NF4 with
    /// double quantization: 210 linear layers, 106.2 M weights at 4.147 bits each (55.0 MB)".
    pub fn quantization_summary(&self) -> Option<String> {
        if let Some(s) = &self.stored_quantization {
            return Some(format!(
                "bitsandbytes 4-bit {}{}: {} linear layers, {} weights at {:.3} bits each ({})",
                s.quant_type.to_uppercase(),
                if s.double_quant {
                    " with double quantization"
                } else {
                    ""
                },
                s.quantized_linears,
                s.quantized_weights,
                s.bits_per_weight(),
                units::bytes(s.quantized_bytes),
            ));
        }
        let q = self.arch.quantization.as_ref()?;
        Some(match q.bits {
            0 => format!("{} (config.json's quantization_config)", q.method),
            bits => format!(
                "{} {bits}-bit (config.json's quantization_config)",
                q.method
            ),
        })
    }
}

pub fn inspect(files: &ModelFiles) -> Result<ModelInfo> {
    let (arch, template) = match &files.weights {
        WeightFiles::Gguf(path) => {
            let gguf = GgufModel::open(path)?;
            let special = tokenizer::SpecialTokens::from_gguf(gguf.metadata());
            let template = ChatTemplate::from_gguf(gguf.metadata(), &special);
            (gguf.arch().clone(), template)
        }
        WeightFiles::Safetensors(_) => (
            arch_of_folder(files)?,
            ChatTemplate::from_model_files(
                files.tokenizer_config.as_deref(),
                files.chat_template.as_deref(),
            )?,
        ),
    };
    let paths = match &files.weights {
        WeightFiles::Gguf(path) => vec![path.clone()],
        WeightFiles::Safetensors(paths) => paths.clone(),
    };
    let size_on_disk = paths
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    // Only a checkpoint that says it is quantized is scanned; which layers are is read per tensor.
    let stored_quantization = match (&files.weights, &arch.quantization) {
        (WeightFiles::Safetensors(paths), Some(_)) => {
            bnb::stored_quantization(&Weights::open_safetensors(paths)?)
        }
        _ => None,
    };
    Ok(ModelInfo {
        size_on_disk,
        stored_quantization,
        parameters: arch.parameter_count(),
        context_length: arch.max_position_embeddings,
        vocab_size: arch.vocab_size,
        dtype: arch.stored_dtype.clone(),
        chat_template: template.origin,
        arch,
        files: files.clone(),
    })
}

fn arch_of_folder(files: &ModelFiles) -> Result<Arch> {
    let config = files
        .config
        .as_deref()
        .ok_or_else(|| ModelError::NotFound(format!("{}: no config.json", files.root.display())))?;
    Arch::from_config_file(config)
}

/// A model ready to run: weights on the device, its tokenizer, chat template and stop tokens.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Model,
    pub tokenizer: tokenizers::Tokenizer,
    pub template: ChatTemplate,
    /// Token ids that end an answer (eos from generation_config.json, tokenizer_config.json or GGUF).
    pub stop_tokens: Vec<u32>,
    pub load_time: Duration,
}

/// [`load`] on the best device this build and machine have (a CUDA GPU, else the CPU), in its compute
/// dtype, with a full-precision base: how generation and evaluation load a model.
pub fn load_on_best_device(files: &ModelFiles) -> Result<LoadedModel> {
    let (device, dtype) = crate::engine::device::best_device();
    load(
        files,
        &LoadOptions {
            device,
            dtype,
            ..Default::default()
        },
    )
}

pub fn load(files: &ModelFiles, options: &LoadOptions) -> Result<LoadedModel> {
    let start = Instant::now();
    let (model, text) = match &files.weights {
        WeightFiles::Gguf(path) => {
            let gguf = GgufModel::open(path)?;
            let text = gguf_text_tools(path, &gguf)?;
            let arch = gguf.arch().clone();
            (
                Model::load(&arch, &Weights::from_gguf(gguf), options)?,
                text,
            )
        }
        WeightFiles::Safetensors(paths) => {
            let arch = arch_of_folder(files)?;
            let text = folder_text_tools(files, Some(&arch))?;
            (
                Model::load(&arch, &Weights::open_safetensors(paths)?, options)?,
                text,
            )
        }
    };
    check_vocab(files, &text.tokenizer, model.arch.vocab_size)?;
    Ok(LoadedModel {
        files: files.clone(),
        model,
        tokenizer: text.tokenizer,
        template: text.template,
        stop_tokens: text.stop_tokens,
        load_time: start.elapsed(),
    })
}

impl LoadedModel {
    /// The token ids of a prompt: one user turn (after an optional system turn) through the chat template,
    /// or the text as it is when `raw`.
    pub fn prompt_ids(&self, system: Option<&str>, prompt: &str, raw: bool) -> Result<Vec<u32>> {
        if !raw {
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(crate::engine::chat::ChatMessage::new("system", system));
            }
            messages.push(crate::engine::chat::ChatMessage::new("user", prompt));
            return self.chat_prompt_ids(&messages);
        }
        self.tokenize(prompt, true)
    }

    /// The token ids that ask the model to answer `messages`: the chat template with its generation
    /// prompt (the template writes the special tokens itself).
    pub fn chat_prompt_ids(
        &self,
        messages: &[crate::engine::chat::ChatMessage],
    ) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.tokenize(&text, false)
    }

    fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer {
                path: "tokenizer".into(),
                message: format!("cannot tokenize the prompt: {e}"),
            })?
            .get_ids()
            .to_vec())
    }

    /// Continue `prompt`, handing each new piece of text to `on_text` as it comes (stop tokens are not
    /// text and are not shown).
    pub fn answer(
        &self,
        prompt: &[u32],
        sampling: &crate::engine::generate::Sampling,
        cancel: &std::sync::atomic::AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<crate::engine::generate::Generation> {
        let mut stream = crate::engine::generate::TextStream::new(&self.tokenizer);
        let stops = &self.stop_tokens;
        let mut on_token = |id: u32| {
            if stops.contains(&id) {
                return;
            }
            if let Ok(delta) = stream.push(id) {
                if !delta.is_empty() {
                    on_text(&delta);
                }
            }
        };
        crate::engine::generate::generate(
            &self.model,
            prompt,
            sampling,
            stops,
            cancel,
            &mut on_token,
        )
    }
}

/// What a model says and reads without its weights: tokenizer, chat template, stop tokens, context.
pub struct TextTools {
    pub tokenizer: tokenizers::Tokenizer,
    pub template: ChatTemplate,
    /// Token ids that end an answer (eos from generation_config.json, tokenizer_config.json or GGUF).
    pub stop_tokens: Vec<u32>,
    pub context_length: Option<usize>,
}

/// Load a model's tokenizer and chat template without its weights (the data step needs only these).
pub fn load_text_tools(files: &ModelFiles) -> Result<TextTools> {
    match &files.weights {
        WeightFiles::Gguf(path) => gguf_text_tools(path, &GgufModel::open(path)?),
        WeightFiles::Safetensors(_) => {
            let arch = files
                .config
                .as_deref()
                .and_then(|c| Arch::from_config_file(c).ok());
            folder_text_tools(files, arch.as_ref())
        }
    }
}

fn gguf_text_tools(path: &Path, gguf: &GgufModel) -> Result<TextTools> {
    let tokenizer = tokenizer::from_gguf(path, gguf.metadata())?;
    let special = tokenizer::SpecialTokens::from_gguf(gguf.metadata());
    let template = ChatTemplate::from_gguf(gguf.metadata(), &special);
    let stops = special.eos.iter().map(|(_, id)| *id).collect();
    Ok(TextTools {
        stop_tokens: with_template_eos(stops, &tokenizer, &template),
        tokenizer,
        template,
        context_length: Some(gguf.arch().max_position_embeddings),
    })
}

fn folder_text_tools(files: &ModelFiles, arch: Option<&Arch>) -> Result<TextTools> {
    let tokenizer_path = files.tokenizer.as_deref().ok_or_else(|| {
        ModelError::NotFound(format!(
            "{}: no tokenizer.json; Loft needs the model's fast tokenizer file (transformers saves it with `tokenizer.save_pretrained`)",
            files.root.display()
        ))
    })?;
    let tokenizer = tokenizer::load_tokenizer_json(tokenizer_path)?;
    let template = ChatTemplate::from_model_files(
        files.tokenizer_config.as_deref(),
        files.chat_template.as_deref(),
    )?;
    let stops = generation_stop_tokens(files.generation_config.as_deref())?;
    Ok(TextTools {
        stop_tokens: with_template_eos(stops, &tokenizer, &template),
        tokenizer,
        template,
        context_length: arch.map(|a| a.max_position_embeddings),
    })
}

/// The template's end-of-turn token stops answers too (ChatML models list only <|endoftext|> elsewhere).
fn with_template_eos(
    mut stops: Vec<u32>,
    tokenizer: &tokenizers::Tokenizer,
    template: &ChatTemplate,
) -> Vec<u32> {
    if let Some(id) = tokenizer.token_to_id(&template.eos_token) {
        stops.push(id);
    }
    stops.sort_unstable();
    stops.dedup();
    stops
}

/// A tokenizer may have fewer tokens than the embedding (padded vocabularies), never more.
fn check_vocab(files: &ModelFiles, tokenizer: &tokenizers::Tokenizer, vocab: usize) -> Result<()> {
    let size = tokenizer.get_vocab_size(true);
    if size > vocab {
        return Err(ModelError::Tokenizer {
            path: files.tokenizer.clone().unwrap_or_else(|| files.root.clone()),
            message: format!(
                "the tokenizer has {size} tokens but the model's vocab_size is {vocab}: this tokenizer does not belong to this model"
            ),
        });
    }
    Ok(())
}

/// `eos_token_id` of generation_config.json: a number or a list of numbers.
fn generation_stop_tokens(path: Option<&Path>) -> Result<Vec<u32>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let value = read_json(path)?;
    let ids = match value.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_u64()).collect(),
        Some(v) => v.as_u64().into_iter().collect(),
    };
    Ok(ids.into_iter().map(|id| id as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that exists but is not a model is an invalid input, told apart from a path that is
    /// not there; both keep their advice.
    #[test]
    fn a_file_that_is_not_a_model_is_invalid_input_not_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "hello").unwrap();
        let err = ModelSource::parse(notes.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(
                &err,
                ModelError::InvalidInput {
                    what: "model source",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().ends_with(": not a model; pick a Hugging Face model folder (with config.json) or a .gguf file"), "{err}");
        let missing = dir.path().join("nowhere").join("model");
        let err = ModelSource::parse(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(&err, ModelError::NotFound(_)), "{err:?}");
    }
}
