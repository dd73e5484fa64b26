//! From a run's specification to a ready `TrainJob`: resolve and load the model, validate and split the
//! data, encode it with the model's tokenizer and chat template. The CLI and the app both start runs here.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::config::TrainConfig;
use super::config::{Method, QuantSource};
use super::run::{sha256_file, RunDir, RunSpec};
use super::trainer::{QuantizationPlan, TrainJob};
use crate::engine::data::{
    encode_dataset, validate_file, Dataset, EncodeOptions, Encoded, Overlong, Progress, RowError,
    RowNumbering, SplitSpec, TrainOn, ValidateOptions,
};
use crate::engine::device;
use crate::engine::error::{ModelError, Result};
use crate::engine::hub::{DownloadEvent, HubOptions};
use crate::engine::model::{BaseFormat, LoadOptions};
use crate::engine::source::{self, ModelSource, Resolve};

/// What preparing a run found, for the user to see before training starts.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub train_examples: usize,
    pub eval_examples: usize,
    pub dropped_overlong: usize,
    /// Rows left out because the chat template cannot encode them (only with `skip_error_rows`).
    pub skipped_error_rows: usize,
    pub device: String,
}

/// Where preparation is, for progress displays.
#[derive(Debug, Clone)]
pub enum PrepareEvent {
    Download(DownloadEvent),
    LoadingModel,
    Data(Progress),
}

/// Start a new run (`resume` None) or reopen one to continue it.
pub fn prepare(
    spec: &RunSpec,
    run: RunDir,
    resume: bool,
    on_event: &mut dyn FnMut(PrepareEvent),
    cancel: &AtomicBool,
) -> Result<(TrainJob, Prepared)> {
    if resume {
        check_unchanged(&spec.data, &spec.data_sha256)?;
        if let (Some(eval), Some(hash)) = (&spec.eval_data, &spec.eval_data_sha256) {
            check_unchanged(eval, hash)?;
        }
    }
    let source = ModelSource::parse(&spec.model)?;
    let files = {
        let mut on_download = |e| on_event(PrepareEvent::Download(e));
        let mut how = Resolve {
            hub: HubOptions::default(),
            offline: false,
            on_download: &mut on_download,
            cancel,
        };
        source::resolve(&source, &mut how)?
    };
    // The data is checked with the model's tokenizer and template before the weights load, so a row the
    // template refuses stops the run in seconds, not after loading the model.
    let tools = source::load_text_tools(&files)?;
    let (train_set, eval_set) = datasets(spec, on_event, cancel)?;
    let options = encode_options(
        &spec.train,
        spec.train_on_all_tokens,
        spec.truncate_overlong,
    );
    let mut encode = |set: &Dataset| -> Result<Encoded> {
        let mut progress = |p| on_event(PrepareEvent::Data(p));
        encode_dataset(
            set,
            &tools.tokenizer,
            &tools.template,
            &options,
            &mut progress,
            cancel,
        )
        .map_err(ModelError::from)
    };
    let train_encoded = encode(&train_set)?;
    let eval_encoded = encode(&eval_set)?;
    let eval_path = spec.eval_data.as_deref().unwrap_or(&spec.data);
    let skipped_error_rows = check_encoded(
        spec,
        [
            (&spec.data, &train_set, &train_encoded),
            (eval_path, &eval_set, &eval_encoded),
        ],
    )?;
    let (train, eval) = (train_encoded.examples, eval_encoded.examples);
    let dropped = train_encoded.summary.dropped + eval_encoded.summary.dropped;
    if train.is_empty() {
        return Err(ModelError::invalid_input("data", format!(
            "no training example is left after encoding {} (all rows were too long for max_seq_len {}, or unusable): raise max_seq_len or fix the rows the report lists",
            spec.data.display(),
            spec.train.max_seq_len
        )));
    }
    on_event(PrepareEvent::LoadingModel);
    let (device, dtype) = device::best_device();
    let device_name = device::describe(&device);
    let (base, quantization) = quantization_plan(&spec.train, &files, resume, &device)?;
    let loaded = source::load(
        &files,
        &LoadOptions {
            device,
            dtype,
            base,
        },
    )?;
    let pad_id = loaded.stop_tokens.first().copied().unwrap_or(0);
    let prepared = Prepared {
        train_examples: train.len(),
        eval_examples: eval.len(),
        dropped_overlong: dropped,
        skipped_error_rows,
        device: device_name,
    };
    let job = TrainJob {
        model: loaded.model,
        train,
        eval,
        config: spec.train.clone(),
        run,
        base_model: spec.model.clone(),
        resume,
        pad_id,
        quantization,
    };
    Ok((job, prepared))
}

/// How the base loads for this run, and whether QLoRA can first measure what quantizing it costs: it
/// can when the full-precision base fits in the memory free beside training (it is loaded dense,
/// evaluated, then quantized in place, one matrix at a time).
fn quantization_plan(
    config: &TrainConfig,
    files: &source::ModelFiles,
    resume: bool,
    device: &candle_core::Device,
) -> Result<(BaseFormat, QuantizationPlan)> {
    let base = config.base_format();
    if config.method != Method::Qlora || resume {
        return Ok((base, QuantizationPlan::Nothing));
    }
    let info = source::inspect(files)?;
    if config.quant == QuantSource::Source {
        let blocks = info.dtype.as_deref().unwrap_or("quantized");
        return Ok((base, QuantizationPlan::NotMeasured(format!(
            "the base trains on the GGUF's own {blocks} blocks, the weights llama.cpp runs; there is no full-precision base in this file to measure a quantization cost against"
        ))));
    }
    let not_measured = |why: String| Ok((base, QuantizationPlan::NotMeasured(why)));
    if info.arch.quantization.is_some() {
        return not_measured("the model was published already quantized to 4 bits, so there is no full-precision base to measure the quantization cost against".into());
    }
    if !device.is_cpu() {
        return not_measured(
            "on a GPU the base is quantized as it loads, so the quantization cost is not measured"
                .into(),
        );
    }
    let dense = info.parameters * 4;
    match crate::engine::sysmem::available() {
        Some(free) if dense <= free / 2 => Ok((
            BaseFormat::Dense,
            QuantizationPlan::MeasureThenQuantize { double_quant: true },
        )),
        Some(free) => not_measured(format!(
            "the full-precision base needs {} and {} of memory is free, so the quantization cost was not measured; the base was quantized as it loaded",
            crate::engine::units::bytes(dense),
            crate::engine::units::bytes(free)
        )),
        None => not_measured("this system does not say how much memory is free, so the full-precision base was not loaded to measure the quantization cost".into()),
    }
}

/// How a run encodes its data, from its settings: the one place that turns them into encoding options,
/// so `loft validate --model`, the app's data check and training count and mask the same tokens.
pub fn encode_options(
    config: &TrainConfig,
    train_on_all_tokens: bool,
    truncate_overlong: bool,
) -> EncodeOptions {
    EncodeOptions {
        max_seq_len: config.max_seq_len,
        train_on: TrainOn::all_tokens(train_on_all_tokens),
        overlong: Overlong::truncate(truncate_overlong),
        batch_size: config.micro_batch_size,
        seed: config.seed,
        max_listed: crate::engine::data::MAX_LISTED,
    }
}

/// Rows the chat template cannot encode are errors like any other: training refuses them unless the
/// run skips rows with errors, and says how many and which. `sets` are the training and evaluation
/// sets, each with the file its rows come from. Returns how many rows are skipped.
fn check_encoded(spec: &RunSpec, sets: [(&Path, &Dataset, &Encoded); 2]) -> Result<usize> {
    let count: usize = sets.iter().map(|(_, _, e)| e.error_count).sum();
    if count == 0 || spec.skip_error_rows {
        return Ok(count);
    }
    let mut listed: Vec<(&Path, RowNumbering, &RowError)> = sets
        .iter()
        .flat_map(|&(path, set, e)| e.errors.iter().map(move |e| (path, set.numbering, e)))
        .collect();
    listed.sort_by_key(|&(path, _, e)| (path, e.row));
    const SHOWN: usize = 3;
    let shown: Vec<String> = listed
        .iter()
        .take(SHOWN)
        .map(|&(path, numbering, e)| {
            let row = e
                .row
                .map_or_else(String::new, |r| format!(" {}", numbering.name(r)));
            format!("{}{row}: {}", path.display(), e.message)
        })
        .collect();
    let more = count - shown.len().min(count);
    let (rows, them) = if count == 1 {
        ("row", "it")
    } else {
        ("rows", "them")
    };
    let eval = spec
        .eval_data
        .as_ref()
        .map_or_else(String::new, |e| format!(" --eval-data {}", e.display()));
    Err(ModelError::invalid_input("data", format!(
        "{count} {rows} cannot be encoded with the model's chat template, so training would leave {them} out — {}{}. Fix or remove {them} (`loft validate {}{eval} --model {}` lists every one), or pass --skip-error-rows to train without {them}",
        shown.join("; "),
        if more > 0 { format!("; and {more} more") } else { String::new() },
        spec.data.display(),
        spec.model,
    )))
}

/// The training and evaluation sets: the eval file when there is one, else a seeded split.
pub fn datasets(
    spec: &RunSpec,
    on_event: &mut dyn FnMut(PrepareEvent),
    cancel: &AtomicBool,
) -> Result<(Dataset, Dataset)> {
    let mut read = |path: &Path| -> Result<Dataset> {
        let mut progress = |p| on_event(PrepareEvent::Data(p));
        let validated = validate_file(path, &ValidateOptions::default(), &mut progress, cancel)
            .map_err(ModelError::from)?;
        if let Err(e) = validated.report.check_trainable(spec.skip_error_rows) {
            return Err(ModelError::invalid_input(
                "data",
                format!(
                    "{}: {e}; run `loft validate {}` to see the rows{}",
                    path.display(),
                    path.display(),
                    if spec.skip_error_rows {
                        ""
                    } else {
                        " (or pass --skip-error-rows to train without them)"
                    }
                ),
            ));
        }
        Ok(validated.dataset)
    };
    let data = read(&spec.data)?;
    match &spec.eval_data {
        Some(eval) => Ok((data, read(eval)?)),
        None => {
            let split = if spec.eval_split <= 0.0 {
                SplitSpec::None
            } else if spec.eval_split < 1.0 {
                SplitSpec::Fraction(spec.eval_split)
            } else {
                SplitSpec::Count(spec.eval_split as usize)
            };
            data.split(&split, spec.train.seed)
                .map_err(ModelError::from)
        }
    }
}

fn check_unchanged(path: &Path, hash: &str) -> Result<()> {
    let now = sha256_file(path)?;
    if now != hash {
        return Err(ModelError::run_state(format!(
            "{} changed since this run started, so resuming would train on different data; start a new run instead",
            path.display()
        )));
    }
    Ok(())
}
