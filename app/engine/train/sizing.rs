//! What the memory estimate needs to know before anything is loaded: the model's shape from its
//! description alone (config.json, or a GGUF's metadata; for a hub repo only its small files are
//! fetched, never the weights) and, when data is given, the largest micro-batch that data makes once
//! encoded with the model's tokenizer and chat template, exactly as training encodes it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::config::TrainConfig;
use super::memory::BatchShape;
use super::prepare::encode_options;
use crate::engine::arch::Arch;
use crate::engine::cache;
use crate::engine::data::{encode_dataset, validate_file, Example, ValidateOptions};
use crate::engine::error::{ModelError, Result};
use crate::engine::gguf::GgufModel;
use crate::engine::hub::{self, DownloadEvent, HubOptions};
use crate::engine::source::{self, ModelFiles, ModelSource, TextTools, WeightFiles};

/// A model as far as the estimate is concerned.
pub struct ModelShape {
    pub arch: Arch,
    /// The file the shape was read from (a config.json or a .gguf).
    pub described_by: PathBuf,
    /// The tokenizer and chat template, when the model has them; `Err` says why not.
    pub text: std::result::Result<TextTools, String>,
}

/// How to reach a hub repo's description.
pub struct Reach<'a> {
    pub hub: HubOptions,
    /// Only local files and the Hugging Face cache.
    pub offline: bool,
    pub on_download: &'a mut dyn FnMut(DownloadEvent),
    pub cancel: &'a AtomicBool,
}

/// The shape of the model `spec` names: a folder with config.json (weights not needed), a
/// config.json file, a .gguf file, or a hub repo id (from the cache, else its description is
/// downloaded unless `offline`).
pub fn model_shape(spec: &str, reach: &mut Reach) -> Result<ModelShape> {
    match ModelSource::parse(spec)? {
        ModelSource::Gguf(path) => gguf_shape(&path),
        ModelSource::Folder(folder) => folder_shape(&folder),
        ModelSource::Hub { repo_id, revision } => {
            let cache_dir = reach
                .hub
                .cache_dir
                .clone()
                .unwrap_or_else(cache::hub_cache_dir);
            if let Some(snapshot) = cache::find_cached(&cache_dir, &repo_id, revision.as_deref()) {
                if snapshot.join("config.json").is_file() {
                    return folder_shape(&snapshot);
                }
            }
            if reach.offline {
                return Err(ModelError::NotFound(format!(
                    "`{repo_id}` is not in the Hugging Face cache ({}); connect to the network (Loft then fetches only its config.json and tokenizer), or give a local config.json",
                    cache_dir.display()
                )));
            }
            let mut opts = reach.hub.clone();
            opts.revision = revision;
            let snapshot = hub::download_config(&repo_id, &opts, reach.on_download, reach.cancel)?;
            folder_shape(&snapshot)
        }
    }
}

fn gguf_shape(path: &Path) -> Result<ModelShape> {
    let gguf = GgufModel::open(path)?;
    let arch = gguf.arch().clone();
    drop(gguf);
    let files = ModelFiles::from_gguf(path)?;
    Ok(ModelShape {
        arch,
        described_by: path.to_path_buf(),
        text: source::load_text_tools(&files).map_err(|e| e.to_string()),
    })
}

/// A folder's config.json, weights or not; a folder with a single .gguf and no config.json is read
/// as that GGUF.
fn folder_shape(folder: &Path) -> Result<ModelShape> {
    let config = folder.join("config.json");
    if !config.is_file() {
        // ModelFiles finds a lone .gguf, or says what is missing.
        let files = ModelFiles::from_folder(folder)?;
        return match &files.weights {
            WeightFiles::Gguf(path) => gguf_shape(path),
            WeightFiles::Safetensors(_) => Err(ModelError::NotFound(format!(
                "{}: no config.json here",
                folder.display()
            ))),
        };
    }
    let arch = Arch::from_config_file(&config)?;
    let existing = |name: &str| Some(folder.join(name)).filter(|p| p.is_file());
    // The tokenizer needs no weights, so the files are listed without looking for any.
    let files = ModelFiles {
        root: folder.to_path_buf(),
        weights: WeightFiles::Safetensors(Vec::new()),
        config: Some(config.clone()),
        tokenizer: existing("tokenizer.json"),
        tokenizer_config: existing("tokenizer_config.json"),
        chat_template: existing("chat_template.jinja"),
        generation_config: existing("generation_config.json"),
    };
    Ok(ModelShape {
        arch,
        described_by: config,
        text: source::load_text_tools(&files).map_err(|e| e.to_string()),
    })
}

/// What a dataset gives the estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct DataShape {
    /// The largest micro-batch: `micro_batch_size` rows padded to the longest example.
    pub batch: BatchShape,
    /// The most trained tokens one micro-batch can hold (the loss projects only those onto the
    /// vocabulary, so they size the logits).
    pub trained_tokens: usize,
    /// Examples that made it through encoding (rows over max_seq_len are left out or cut).
    pub examples: usize,
}

impl DataShape {
    /// From encoded examples; `None` when there are none.
    pub fn of(examples: &[Example], config: &TrainConfig) -> Option<DataShape> {
        EncodedLengths::of(examples).map(|lengths| lengths.shape(config))
    }
}

/// What the memory estimate needs from encoded examples; the app's Data step keeps it, so the batch
/// size can change without encoding again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedLengths {
    /// Examples left after encoding (rows over max_seq_len cut or left out, as training does).
    pub examples: usize,
    /// The longest example in tokens.
    pub longest: usize,
    /// Each example's trained positions (those whose next token carries loss), most first.
    pub trained_most_first: Vec<usize>,
}

impl EncodedLengths {
    /// `None` when no example is left.
    pub fn of(examples: &[Example]) -> Option<EncodedLengths> {
        let longest = examples.iter().map(Example::len).max()?;
        // The loss's targets are positions 1.. whose mask is set.
        let mut trained: Vec<usize> = examples
            .iter()
            .map(|e| e.mask.iter().skip(1).filter(|m| **m).count())
            .collect();
        trained.sort_unstable_by(|a, b| b.cmp(a));
        Some(EncodedLengths {
            examples: examples.len(),
            longest,
            trained_most_first: trained,
        })
    }

    /// The largest micro-batch these examples make with `config`'s batch size.
    pub fn shape(&self, config: &TrainConfig) -> DataShape {
        let batch = BatchShape {
            rows: config.micro_batch_size.min(self.examples).max(1),
            longest: self.longest.min(config.max_seq_len).max(1),
        };
        DataShape {
            batch,
            trained_tokens: self.trained_most_first.iter().take(batch.rows).sum(),
            examples: self.examples,
        }
    }
}

/// Encode the dataset at `path` as training would with `config` and the model's text tools, and
/// measure its largest micro-batch.
pub fn data_shape(
    path: &Path,
    tools: &TextTools,
    config: &TrainConfig,
    train_on_all_tokens: bool,
    truncate_overlong: bool,
    cancel: &AtomicBool,
) -> Result<DataShape> {
    let validated = validate_file(path, &ValidateOptions::default(), &mut |_| {}, cancel)
        .map_err(ModelError::from)?;
    let options = encode_options(config, train_on_all_tokens, truncate_overlong);
    let encoded = encode_dataset(
        &validated.dataset,
        &tools.tokenizer,
        &tools.template,
        &options,
        &mut |_| {},
        cancel,
    )
    .map_err(ModelError::from)?;
    DataShape::of(&encoded.examples, config).ok_or_else(|| {
        ModelError::invalid_input(
            "data",
            format!(
                "{}: no example is left after encoding (every row is longer than max_seq_len {} or unusable); raise --max-seq-len or run `loft validate` on it",
                path.display(),
                config.max_seq_len
            ),
        )
    })
}
