//! Errors of the model capability. Each says what happened, where (file, field, line) and what to do.

use std::path::{Path, PathBuf};

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: field `{field}` {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: Loft does not load pickle files ({ext}), because loading them can run arbitrary code. Convert the model to safetensors (in Python: `model.save_pretrained(dir, safe_serialization=True)`) or pick a .safetensors or .gguf model instead.")]
    Pickle { path: PathBuf, ext: String },
    #[error("{path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("model type `{model_type}` is not supported; Loft runs: {supported}")]
    UnsupportedArch {
        model_type: String,
        supported: String,
    },
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Hub(String),
    #[error("cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn field(
        path: impl AsRef<Path>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ModelError::Field {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn json(path: impl AsRef<Path>, err: &serde_json::Error) -> Self {
        ModelError::Json {
            path: path.as_ref().to_path_buf(),
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        }
    }
}

/// Read a whole JSON file into a value, with errors that name the file, line and column.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::from_str(text).map_err(|e| ModelError::json(path, &e))
}
