//! `loft inspect`, `loft models`, `loft generate`.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::Args;

use crate::engine::cache;
use crate::engine::chat::TemplateOrigin;
use crate::engine::generate::Sampling;
use crate::engine::hub::{DownloadEvent, HubOptions};
use crate::engine::source::{self, ModelFiles, ModelSource, Resolve};
use crate::engine::units;

#[derive(Args)]
pub struct ModelArg {
    /// A Hugging Face model folder, a .gguf file, or a hub repo id (org/name[@revision]).
    #[arg(long, short)]
    pub model: String,
    /// Never download: use only local files and the Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
    /// The hub server to download from (default: $HF_ENDPOINT or https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
}

impl ModelArg {
    /// Resolve to local files, downloading from the hub (with progress on stderr) if needed.
    pub fn resolve(&self) -> Result<ModelFiles> {
        let source = ModelSource::parse(&self.model)?;
        let cancel = AtomicBool::new(false);
        let mut on_download = print_download;
        let mut how = Resolve {
            hub: HubOptions {
                endpoint: self.endpoint.clone(),
                ..HubOptions::default()
            },
            offline: self.offline,
            on_download: &mut on_download,
            cancel: &cancel,
        };
        Ok(source::resolve(&source, &mut how)?)
    }
}

pub(super) fn print_download(event: DownloadEvent) {
    let mut err = std::io::stderr();
    let _ = match event {
        DownloadEvent::Bytes { name, done, total } => write!(
            err,
            "\r  {name}: {} / {}   ",
            units::bytes(done),
            units::bytes(total)
        ),
        DownloadEvent::File { name, index, .. } => {
            write!(err, "\ndownloading {} ({name})", index + 1)
        }
        DownloadEvent::Finished { snapshot } => {
            writeln!(err, "\ndownloaded to {}", snapshot.display())
        }
        _ => Ok(()),
    };
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Print the whole description as JSON.
    #[arg(long)]
    json: bool,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let info = source::inspect(&args.model.resolve()?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let a = &info.arch;
    println!("model         {}", info.files.root.display());
    println!("architecture  {} ({:?})", a.model_type, a.family);
    println!(
        "parameters    {} ({:.1} M)",
        info.parameters,
        info.parameters as f64 / 1e6
    );
    println!(
        "dtype         {}",
        info.dtype.as_deref().unwrap_or("unknown")
    );
    if let Some(q) = info.quantization_summary() {
        println!("quantization  {q}");
    }
    println!("size on disk  {}", units::bytes(info.size_on_disk));
    println!("context       {} tokens", info.context_length);
    println!("vocabulary    {} tokens", info.vocab_size);
    println!(
        "layers        {} × (hidden {}, {} heads, {} kv heads, head dim {})",
        a.num_layers, a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim
    );
    let template = match info.chat_template {
        TemplateOrigin::Model => "yes (the model's own)",
        TemplateOrigin::Fallback => "no — Loft will use ChatML as a fallback",
    };
    println!("chat template {template}");
    Ok(())
}

#[derive(Args)]
pub struct ModelsArgs {
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

pub fn models(args: ModelsArgs) -> Result<()> {
    let dir = cache::hub_cache_dir();
    let list = cache::list_cached_models(&dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no models in the Hugging Face cache ({})", dir.display());
        return Ok(());
    }
    for m in &list {
        println!("{}", model_line(m));
    }
    Ok(())
}

/// One row of `loft models`: repo, size, architecture and the start of the revision. The revision is
/// a cache folder name, which can be anything, so it is cut at a character, never inside one.
fn model_line(m: &cache::CachedModel) -> String {
    let revision: String = m.revision.chars().take(10).collect();
    format!(
        "{:<50} {:>12}  {:<12} {revision}",
        m.repo_id,
        units::bytes(m.size_bytes),
        m.model_type.as_deref().unwrap_or("?"),
    )
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// What to ask.
    #[arg(long, short)]
    prompt: String,
    /// A system message placed before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// Continue the prompt as plain text instead of rendering it through the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sample with this temperature (greedy when absent).
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print load time and speed to stderr.
    #[arg(long)]
    stats: bool,
    /// Answer with a LoRA adapter: an adapter folder (PEFT format) or a run folder.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let files = args.model.resolve()?;
    let mut loaded = source::load_on_best_device(&files)?;
    if let Some(path) = &args.adapter {
        crate::engine::adapter::load_peft(
            &mut loaded.model,
            &crate::engine::adapter::adapter_dir(path),
        )?;
    }
    let ids = loaded.prompt_ids(args.system.as_deref(), &args.prompt, args.raw)?;
    let sampling = Sampling {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut stdout = std::io::stdout();
    let cancel = AtomicBool::new(false);
    let out = loaded.answer(&ids, &sampling, &cancel, &mut |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    if args.stats {
        eprintln!(
            "load {:.2} s · prompt {} tokens in {:.2} s · {} new tokens at {:.1} tokens/s ({:?})",
            loaded.load_time.as_secs_f64(),
            out.prompt_tokens,
            out.prefill.as_secs_f64(),
            out.tokens.len(),
            out.tokens_per_second(),
            out.stop
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_ascii_cache_folder_name_is_cut_at_a_character() {
        // Byte 10 of this name falls inside an "é": slicing bytes there panicked.
        let model = cache::CachedModel {
            repo_id: "org/modèle".into(),
            revision: "aéééééééééé".into(),
            refs: vec![],
            snapshot: "/cache/snapshots/aéééééééééé".into(),
            size_bytes: 2_000_000,
            model_type: None,
            architecture: None,
            has_safetensors: true,
            has_gguf: false,
        };
        let line = model_line(&model);
        assert!(line.starts_with("org/modèle "), "{line}");
        assert!(line.ends_with("  ?            aééééééééé"), "{line:?}");
        let hex = cache::CachedModel {
            revision: "0123456789abcdef".into(),
            ..model
        };
        assert!(model_line(&hex).ends_with(" 0123456789"));
    }
}
