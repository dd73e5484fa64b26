//! Frozen base weights by Hugging Face tensor name, from memory-mapped safetensors (one file or shards)
//! or from a GGUF file (dequantized on load). Pickle formats are refused before anything is read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};
use super::gguf::GgufModel;
use super::quant::GgmlMatrix;

pub struct Weights {
    store: Store,
}

enum Store {
    Safetensors {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        /// Tensor name → index into `files`.
        routing: HashMap<String, usize>,
    },
    Gguf(Box<GgufModel>),
}

/// Extensions of pickle-based checkpoints, which can run code when loaded.
pub const PICKLE_EXTENSIONS: [&str; 5] = ["bin", "pt", "pth", "ckpt", "pkl"];

pub fn refuse_pickle(path: &Path) -> Result<()> {
    match pickle_error(path) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The extension of `path`, with its dot and as written, when it names a pickle-based checkpoint.
pub fn pickle_extension(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    PICKLE_EXTENSIONS
        .contains(&ext.to_ascii_lowercase().as_str())
        .then(|| format!(".{ext}"))
}

fn pickle_error(path: &Path) -> Option<ModelError> {
    pickle_extension(path).map(|ext| ModelError::Pickle {
        path: path.to_path_buf(),
        ext,
    })
}

impl Weights {
    /// Map safetensors files and read their headers; a truncated or corrupt file is reported here,
    /// before any tensor is used.
    pub fn open_safetensors(paths: &[PathBuf]) -> Result<Weights> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            refuse_pickle(path)?;
            if !path.is_file() {
                return Err(ModelError::NotFound(format!(
                    "{}: weight file is missing; download the model again",
                    path.display()
                )));
            }
            // SAFETY: the map is read-only; as with every mmap, a file truncated by another process
            // while mapped could fault, which is the same contract transformers and candle rely on.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: format!(
                    "not a valid safetensors file ({}); it may be truncated or corrupt: download it again",
                    root_message(&e)
                ),
            })?;
            for (name, _) in st.tensors() {
                routing.insert(name, index);
            }
            files.push((path.clone(), st));
        }
        Ok(Weights {
            store: Store::Safetensors { files, routing },
        })
    }

    pub fn from_gguf(model: GgufModel) -> Weights {
        Weights {
            store: Store::Gguf(Box::new(model)),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors { routing, .. } => routing.contains_key(name),
            Store::Gguf(g) => g.contains(name),
        }
    }

    /// The tensor `name` on `device` as `dtype`, checked against the shape the model expects.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let (tensor, origin) = match &self.store {
            Store::Safetensors { files, routing } => {
                let index = *routing.get(name).ok_or_else(|| self.missing(name))?;
                let (path, st) = &files[index];
                let t = st
                    .load(name, &Device::Cpu)
                    .map_err(|e| ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}`: {}", root_message(&e)),
                    })?;
                (t, path.as_path())
            }
            Store::Gguf(g) => (g.tensor(name)?, g.path()),
        };
        if tensor.dims() != shape {
            return Err(ModelError::Safetensors {
                path: origin.to_path_buf(),
                message: format!(
                    "tensor `{name}` has shape {:?} but config.json implies {shape:?}; the weights and the config do not belong together",
                    tensor.dims()
                ),
            });
        }
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }

    /// A stored tensor's bytes as they are in the file, with its dtype and shape: for packed formats
    /// (bitsandbytes' 4-bit weights) whose bytes are not values of their declared dtype. `None` when
    /// the tensor is absent or the weights are a GGUF file.
    pub fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let Store::Safetensors { files, routing } = &self.store else {
            return None;
        };
        let (path, st) = &files[*routing.get(name)?];
        let view = st.get(name).ok()?;
        Some(RawTensor {
            path,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data(),
        })
    }

    /// Every tensor name, in no particular order (empty for a GGUF file).
    pub fn safetensors_names(&self) -> Vec<&str> {
        match &self.store {
            Store::Safetensors { routing, .. } => routing.keys().map(String::as_str).collect(),
            Store::Gguf(_) => Vec::new(),
        }
    }

    /// The GGUF matrix `name`'s own quantized blocks (`--quant source`), checked against the shape the
    /// model expects; `None` when it is stored as floats, which load dense. Safetensors weights have
    /// no such blocks: the error says to quantize them to NF4 instead.
    pub fn gguf_blocks(&self, name: &str, shape: (usize, usize)) -> Result<Option<GgmlMatrix>> {
        let gguf = match &self.store {
            Store::Gguf(g) => g,
            Store::Safetensors { files, .. } => {
                let first = files.first().map(|(p, _)| p.display().to_string());
                return Err(ModelError::invalid_input(
                    "quant",
                    format!(
                        "quant \"source\" trains on a GGUF file's own quantized blocks, and {} is not a GGUF file; use --quant nf4 (quant = \"nf4\" in run.toml) to train this model in 4 bits",
                        first.unwrap_or_else(|| "this model".into())
                    ),
                ));
            }
        };
        let blocks = gguf.blocks(name)?;
        if let Some(m) = &blocks {
            if m.shape != shape {
                return Err(ModelError::Gguf {
                    path: gguf.path().to_path_buf(),
                    message: format!(
                        "tensor `{name}` has shape {:?} but the metadata implies {shape:?}; the file is inconsistent: download it again",
                        m.shape
                    ),
                });
            }
        }
        Ok(blocks)
    }

    /// The torch name of the dtype `name` is stored in ("bfloat16", "float16", "float32"): what a
    /// bitsandbytes quantizer records as the dtype it quantized from. A GGUF tensor is dequantized to
    /// f32, so it reports "float32".
    pub fn source_dtype(&self, name: &str) -> &'static str {
        let dtype = match &self.store {
            Store::Safetensors { files, routing } => routing
                .get(name)
                .and_then(|&i| files[i].1.get(name).ok())
                .map(|view| view.dtype()),
            Store::Gguf(_) => None,
        };
        match dtype {
            Some(safetensors::Dtype::BF16) => "bfloat16",
            Some(safetensors::Dtype::F16) => "float16",
            _ => "float32",
        }
    }

    pub fn missing(&self, name: &str) -> ModelError {
        let where_ = match &self.store {
            Store::Safetensors { files, .. } => files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Store::Gguf(g) => g.path().display().to_string(),
        };
        ModelError::NotFound(format!(
            "tensor `{name}` is not in {where_}; the weights do not match config.json's architecture"
        ))
    }
}

/// A tensor as stored in a safetensors file, bytes untouched.
pub struct RawTensor<'a> {
    /// The file it is in, for messages.
    pub path: &'a Path,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// candle wraps errors in context layers; users need the innermost reason.
pub fn root_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. } => root_message(inner),
        candle_core::Error::WithBacktrace { inner, .. } => root_message(inner),
        candle_core::Error::Context { inner, .. } => root_message(inner),
        other => other.to_string(),
    }
}

/// The safetensors files of a folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json` (every listed shard must exist).
pub fn safetensors_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let index = folder.join("model.safetensors.index.json");
    if index.is_file() {
        let value = super::error::read_json(&index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                ModelError::field(&index, "weight_map", "is missing or not an object")
            })?;
        let mut shards: Vec<PathBuf> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::field(
                    &index,
                    format!("weight_map.{tensor}"),
                    "must be a file name",
                )
            })?;
            let path = folder.join(file);
            if !shards.contains(&path) {
                shards.push(path);
            }
        }
        shards.sort();
        for shard in &shards {
            if !shard.is_file() {
                return Err(ModelError::NotFound(format!(
                    "{}: shard listed in {} is missing; download the model again",
                    shard.display(),
                    index.display()
                )));
            }
        }
        return Ok(shards);
    }
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(no_weights_error(folder))
}

fn no_weights_error(folder: &Path) -> ModelError {
    let pickle = std::fs::read_dir(folder).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find_map(|p| pickle_error(&p))
    });
    match pickle {
        Some(refusal) => refusal,
        None => ModelError::NotFound(format!(
            "{}: no model.safetensors (or shards with model.safetensors.index.json) in this folder; pick the folder that holds the model's config.json and weights",
            folder.display()
        )),
    }
}
