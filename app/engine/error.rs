//! Errors of the model capability. Each says what happened, where (file, field, line) and what to do.

use std::path::{Path, PathBuf};

use super::data::DataError;

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
    /// Something the user pointed at is not there: a file, a folder, a cache entry, a tensor.
    #[error("{0}")]
    NotFound(String),
    /// An input is unusable as given (a path that is not a model, an empty prompt, a dataset with no
    /// trainable rows); `what` names the input, the message says why and what to do.
    #[error("{message}")]
    InvalidInput { what: &'static str, message: String },
    /// A data operation (reading, validating, encoding, splitting a dataset) failed.
    #[error(transparent)]
    Data(Box<DataError>),
    /// The run folder's state forbids the operation (e.g. resuming after its data changed).
    #[error("{0}")]
    RunState(String),
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

    pub fn invalid_input(what: &'static str, message: impl Into<String>) -> Self {
        ModelError::InvalidInput {
            what,
            message: message.into(),
        }
    }

    pub fn run_state(message: impl Into<String>) -> Self {
        ModelError::RunState(message.into())
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

/// A data error inside a model operation: a model error that the data layer carried comes back as
/// itself, and a cancelled data step is a cancelled operation, so callers match one variant for each.
impl From<DataError> for ModelError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Model(inner) => inner,
            DataError::Cancelled => ModelError::Cancelled,
            other => ModelError::Data(Box::new(other)),
        }
    }
}

/// Read a whole JSON file into a value, with errors that name the file, line and column.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::from_str(text).map_err(|e| ModelError::json(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data failures get their own variant with the data layer's message unchanged; a model error
    /// carried through the data layer and a cancellation come back as themselves.
    #[test]
    fn data_errors_keep_their_kind_and_message() {
        let blocked = DataError::Blocked {
            errors: 2,
            reason: "row 3: no assistant turn".into(),
        };
        let text = blocked.to_string();
        let err = ModelError::from(blocked);
        assert!(
            matches!(&err, ModelError::Data(d) if matches!(**d, DataError::Blocked { errors: 2, .. })),
            "{err:?}"
        );
        assert_eq!(err.to_string(), text);
        assert!(matches!(
            ModelError::from(DataError::Cancelled),
            ModelError::Cancelled
        ));
        let template = DataError::Model(ModelError::Template("broken".into()));
        assert!(matches!(
            ModelError::from(template),
            ModelError::Template(m) if m == "broken"
        ));
    }

    #[test]
    fn invalid_input_and_run_state_print_their_message() {
        let err = ModelError::invalid_input("prompt", "the prompt is empty: nothing to continue");
        assert!(matches!(
            err,
            ModelError::InvalidInput { what: "prompt", .. }
        ));
        assert_eq!(err.to_string(), "the prompt is empty: nothing to continue");
        let err = ModelError::run_state("data.jsonl changed since this run started");
        assert_eq!(err.to_string(), "data.jsonl changed since this run started");
    }
}
