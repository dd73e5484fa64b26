//! Step 3, the method: LoRA or QLoRA compared side by side before anything runs (memory by part
//! against the memory available, whether it fits, speed, what 4 bits cost), then the adapter and
//! training settings with a plain-language explanation of each knob.

use egui::{Color32, DragValue, RichText, Ui};

use super::fit::{self, Comparison, EncodedLengths, Recommendation};
use super::widgets::{self, field, BAD, GOOD, WARN};
use crate::engine::arch::Arch;
use crate::engine::model::lora::{ALL_LINEAR_TARGETS, ATTENTION_TARGETS};
use crate::engine::train::memory::{DeviceKind, MemoryEstimate, Part, Place, Verdict};
use crate::engine::train::{Method, QuantSource, Schedule, TrainConfig};

const GIB: f64 = (1u64 << 30) as f64;

/// Hours of training make a typo expensive: every value is checked as it is typed.
#[derive(Default)]
pub struct MethodPage {
    pub config: TrainConfig,
    /// What will train, filled in by a background probe.
    pub device: Option<DeviceInfo>,
    /// Memory to plan for in GiB, when the person plans for another machine or a GPU; None: what
    /// this machine has free.
    pub planned_gib: Option<f64>,
}

/// The device training will use, as the probe found it when the window opened.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// "CPU (8 threads)" or the GPU's name and memory.
    pub name: String,
    pub kind: DeviceKind,
    /// Memory the device could give Loft at the time: the system's MemAvailable on the CPU, the
    /// GPU's free memory (nvidia-smi) on CUDA.
    pub free_memory: Option<u64>,
}

/// What the Method page needs from the other steps.
#[derive(Default)]
pub struct MethodContext<'a> {
    pub arch: Option<&'a Arch>,
    pub total_parameters: Option<u64>,
    /// The opened model is a GGUF file, whose own quantized blocks QLoRA can train against.
    pub gguf: bool,
    /// The checked training file's rows and longest example.
    pub data: Option<&'a EncodedLengths>,
    /// The last QLoRA run's measure of what 4 bits cost: eval loss of the full and the 4-bit base.
    pub quantization_cost: Option<(f64, f64)>,
}

impl MethodPage {
    /// Why these settings cannot train `gguf` (whether the opened model is a GGUF file), or None.
    pub fn blocker(&self, gguf: bool) -> Option<String> {
        if let Err(e) = self.config.validate() {
            return Some(e);
        }
        (self.config.method == Method::Qlora && self.config.quant == QuantSource::Source && !gguf)
            .then(|| "QLoRA on the model's own quantized weights needs a GGUF model: choose nf4 under Advanced, or open a .gguf file".to_string())
    }

    pub fn status(&self, gguf: bool) -> String {
        match self.blocker(gguf) {
            Some(e) => e,
            None => format!(
                "{} r={} alpha={} · lr {:.0e}",
                method_title(self.config.method),
                self.config.lora.r,
                self.config.lora.alpha,
                self.config.lr
            ),
        }
    }

    /// The memory estimates are compared with: the amount planned for, else what the training
    /// device had free when the window opened.
    pub fn available(&self) -> Option<u64> {
        match self.planned_gib {
            Some(gib) => Some((gib * GIB) as u64),
            None => self.device.as_ref().and_then(|d| d.free_memory),
        }
    }

    /// LoRA and QLoRA for the current settings and data against the memory available.
    pub fn comparison(&self, arch: &Arch, data: Option<&EncodedLengths>) -> Comparison {
        let kind = self.device.as_ref().map_or(DeviceKind::Cpu, |d| d.kind);
        Comparison::new(arch, &self.config, kind, data, self.available())
    }

    pub fn ui(&mut self, ui: &mut Ui, context: &MethodContext) {
        widgets::heading(
            ui,
            "Method",
            "Choose how the model is trained, LoRA or QLoRA, then the settings. The defaults suit most first runs.",
        );
        ui.label(format!(
            "Device: {}",
            self.device
                .as_ref()
                .map_or("detecting…", |d| d.name.as_str())
        ));
        if let (Some(arch), Some(total)) = (context.arch, context.total_parameters) {
            let trainable =
                arch.lora_parameter_count(&self.config.lora.targets, self.config.lora.r);
            ui.label(
                // As PEFT counts them: the adapters' share of base plus adapters.
                RichText::new(format!(
                    "Trainable parameters: {} ({:.2}% of {})",
                    widgets::thousands(trainable),
                    100.0 * trainable as f64 / (total + trainable).max(1) as f64,
                    widgets::thousands(total + trainable)
                ))
                .strong(),
            );
        }
        ui.separator();
        self.choice_ui(ui, context);
        ui.separator();
        self.lora_ui(ui);
        ui.separator();
        self.training_ui(ui);
        egui::CollapsingHeader::new("Advanced").show(ui, |ui| self.advanced_ui(ui, context.gguf));
        if let Some(e) = self.blocker(context.gguf) {
            ui.colored_label(BAD, format!("Fix this setting: {e}"));
        }
    }

    /// LoRA and QLoRA side by side: what each holds in memory against what is available, whether it
    /// fits, how fast and how exact it is, and which to choose.
    fn choice_ui(&mut self, ui: &mut Ui, context: &MethodContext) {
        ui.label(RichText::new("LoRA or QLoRA").strong());
        ui.label(RichText::new("Both keep the model itself unchanged and train small add-on matrices (the adapter) beside its layers. They differ in how they hold the model while it trains.").weak());
        self.plan_memory_ui(ui);
        let Some(arch) = context.arch else {
            ui.label(RichText::new("Open a model to see what each method needs in memory.").weak());
            self.method_radios(ui);
            return;
        };
        let comparison = self.comparison(arch, context.data);
        let shape = comparison.batch();
        ui.label(if comparison.from_data {
            format!(
                "Estimated for the longest batch of your data: {} × {} tokens (the longest training example, up to max_seq_len).",
                shape.rows, shape.longest
            )
        } else {
            format!(
                "Estimated for {} × {} tokens (batch size × max_seq_len): check a training file on the Data step to estimate for its real longest example.",
                shape.rows, shape.longest
            )
        });
        let scale = comparison
            .lora
            .total
            .max(comparison.available().unwrap_or(0))
            .max(1);
        ui.columns(2, |columns| {
            for (ui, method) in columns.iter_mut().zip([Method::Lora, Method::Qlora]) {
                self.method_card(ui, method, &comparison, scale, context);
            }
        });
        self.recommendation_ui(ui, &comparison);
    }

    fn method_radios(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            for method in [Method::Lora, Method::Qlora] {
                if ui
                    .radio(self.config.method == method, method_title(method))
                    .clicked()
                {
                    self.choose(method);
                }
            }
        });
    }

    fn choose(&mut self, method: Method) {
        self.config.method = method;
        if method == Method::Lora {
            // Which 4-bit weights to use means nothing without QLoRA (run.toml refuses the pair).
            self.config.quant = QuantSource::Nf4;
        }
    }

    fn plan_memory_ui(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.label("Memory to plan for:");
            let machine = match &self.device {
                None => "this machine (measuring…)".to_string(),
                Some(d) => {
                    let what = match d.kind {
                        DeviceKind::Cpu => "this machine",
                        DeviceKind::Cuda => "this GPU",
                    };
                    match d.free_memory {
                        Some(free) => format!("{what} ({} free now)", widgets::bytes(free)),
                        None => format!("{what} (free memory unknown)"),
                    }
                }
            };
            if ui.radio(self.planned_gib.is_none(), machine).clicked() {
                self.planned_gib = None;
            }
            if ui
                .radio(self.planned_gib.is_some(), "another amount")
                .clicked()
                && self.planned_gib.is_none()
            {
                let now = self.available().map_or(16.0, |b| b as f64 / GIB);
                self.planned_gib = Some((now * 10.0).round() / 10.0);
            }
            if let Some(gib) = &mut self.planned_gib {
                let label = ui.label("Memory to plan for (GiB)");
                ui.add(
                    DragValue::new(gib)
                        .range(0.1..=16_384.0)
                        .speed(0.1)
                        .max_decimals(2),
                )
                .labelled_by(label.id);
            }
            widgets::help(ui, "Memory to plan for", "The memory the estimates are compared with. By default what this machine has free right now (closing other programs frees more). Enter another amount to plan a run for another computer or a graphics card, for example 24 GiB for a 24 GB GPU.");
        });
    }

    fn method_card(
        &mut self,
        ui: &mut Ui,
        method: Method,
        comparison: &Comparison,
        scale: u64,
        context: &MethodContext,
    ) {
        let chosen = self.config.method == method;
        let stroke = if chosen {
            egui::Stroke::new(2.0, ui.visuals().selection.stroke.color)
        } else {
            ui.visuals().widgets.noninteractive.bg_stroke
        };
        egui::Frame::group(ui.style()).stroke(stroke).show(ui, |ui| {
            ui.set_width(ui.available_width());
            if ui
                .radio(chosen, RichText::new(method_title(method)).strong())
                .clicked()
            {
                self.choose(method);
            }
            ui.label(match method {
                Method::Lora => "Keeps the whole model in full precision (32-bit numbers on the CPU) and trains the add-on matrices against it. The most exact, and the faster of the two.",
                Method::Qlora => "Stores the model's layers in 4 bits (NF4), about a seventh of the memory for those weights, and trains the same add-on matrices. Trades a little accuracy and speed for that memory.",
            });
            memory_bar(ui, comparison.of(method), scale);
            let (needs, color) = needs_line(comparison, method, ui.visuals().text_color());
            ui.colored_label(color, needs);
            ui.label(match method {
                Method::Lora => "Speed: the faster of the two.".to_string(),
                Method::Qlora => "Speed: somewhat slower per step on the CPU, because every layer is unpacked from 4 bits again for each product, forward and backward.".to_string(),
            });
            ui.label(match (method, context.quantization_cost) {
                (Method::Lora, _) => "Accuracy: trains against the model exactly as published.".to_string(),
                (Method::Qlora, Some((dense, quantized))) => format!(
                    "Accuracy: the last QLoRA run measured what 4 bits cost before its first step: eval loss {dense:.3} with the full model, {quantized:.3} with the 4-bit one ({:+.3}). Training learns around it.",
                    quantized - dense
                ),
                (Method::Qlora, None) => "Accuracy: a little below the full model to start with. What 4 bits cost is measured before the first step (eval loss of the full and of the 4-bit model, when the run has evaluation examples) and shown here and on the Train step.".to_string(),
            });
        });
    }

    fn recommendation_ui(&mut self, ui: &mut Ui, comparison: &Comparison) {
        let Some(recommendation) = comparison.recommendation() else {
            return;
        };
        let available = comparison.available().map_or(String::new(), widgets::bytes);
        let recommended = match &recommendation {
            Recommendation::Lora => {
                ui.label(RichText::new("Recommended: LoRA. It fits comfortably, and it is exact and faster; QLoRA would only save memory you have to spare.").strong());
                Some(Method::Lora)
            }
            Recommendation::Qlora => {
                let words = |m| verdict_words(comparison.of(m).verdict());
                ui.label(RichText::new(format!("Recommended: QLoRA. In {available}, LoRA {} and QLoRA {}, because it keeps the model's layers in 4 bits.", words(Method::Lora), words(Method::Qlora))).strong());
                Some(Method::Qlora)
            }
            Recommendation::Neither(suggestions) => {
                ui.colored_label(
                    BAD,
                    RichText::new(format!("Neither method fits in {available}. What would:"))
                        .strong(),
                );
                for s in suggestions {
                    ui.horizontal_wrapped(|ui| {
                        ui.add_space(12.0);
                        ui.label(format!(
                            "{} with QLoRA: it then needs about {} ({}).",
                            s.text,
                            widgets::bytes(s.total),
                            if s.fits {
                                "fits"
                            } else {
                                "not enough on its own"
                            }
                        ));
                        if s.fits && ui.small_button("Use these settings").clicked() {
                            for change in &s.changes {
                                fit::apply(change, &mut self.config);
                            }
                            self.choose(Method::Qlora);
                        }
                    });
                }
                let any = suggestions.iter().any(|s| s.fits);
                ui.horizontal_wrapped(|ui| {
                    ui.add_space(12.0);
                    ui.label(format!(
                        "{}a smaller model (fewer parameters): open one on the Model step.",
                        if any { "Or " } else { "Nothing short of " }
                    ));
                });
                None
            }
        };
        if let Some(method) = recommended.filter(|m| *m != self.config.method) {
            if ui.button(format!("Use {}", method_title(method))).clicked() {
                self.choose(method);
            }
        }
    }

    fn lora_ui(&mut self, ui: &mut Ui) {
        let c = &mut self.config;
        ui.label(RichText::new("Adapter (both methods)").strong());
        field(ui, "Rank (r)", "How many independent directions each adapted layer may change in. 8–16 is plenty for teaching a style or format; 32–64 for new knowledge. More rank, more memory and a higher risk of memorising.", |ui| {
            ui.add(DragValue::new(&mut c.lora.r).range(1..=512))
        });
        field(ui, "Alpha (α)", "Scales the update by alpha/r. The usual choice is alpha = 2 x r; keep the ratio when you change r.", |ui| {
            ui.add(DragValue::new(&mut c.lora.alpha).range(0.0..=4096.0).speed(1.0))
        });
        field(ui, "Dropout", "Randomly ignores this share of each layer's input on the LoRA path while training, so the adapter cannot lean on single features. 0.05 is usual; raise it for small datasets that overfit.", |ui| {
            ui.add(DragValue::new(&mut c.lora.dropout).range(0.0..=0.9).speed(0.01))
        });
        ui.horizontal(|ui| {
            ui.label("Target modules");
            let all: Vec<String> = ALL_LINEAR_TARGETS.iter().map(|s| s.to_string()).collect();
            let attention: Vec<String> = ATTENTION_TARGETS.iter().map(|s| s.to_string()).collect();
            if ui.selectable_label(c.lora.targets == all, "All linear layers").clicked() {
                c.lora.targets = all;
            }
            if ui.selectable_label(c.lora.targets == attention, "Attention (q_proj, v_proj)").clicked() {
                c.lora.targets = attention;
            }
            widgets::help(ui, "Target modules", "Which layers get an adapter. All linear layers (attention and MLP) learns best for its cost; attention-only is the original LoRA recipe and the lightest.");
        });
        ui.horizontal_wrapped(|ui| {
            for name in ALL_LINEAR_TARGETS {
                let mut on = c.lora.targets.iter().any(|t| t == name);
                if ui.checkbox(&mut on, name).changed() {
                    if on {
                        c.lora.targets.push(name.to_string());
                        c.lora
                            .targets
                            .sort_by_key(|t| ALL_LINEAR_TARGETS.iter().position(|n| n == t));
                    } else {
                        c.lora.targets.retain(|t| t != name);
                    }
                }
            }
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut c.lora.use_rslora, "rsLoRA (scale by alpha/sqrt(r))");
            widgets::help(ui, "rsLoRA", "Rank-stabilised LoRA: with alpha/sqrt(r) instead of alpha/r, high ranks (64 and up) keep learning instead of being scaled down.");
        });
    }

    fn training_ui(&mut self, ui: &mut Ui) {
        let c = &mut self.config;
        ui.label(RichText::new("Training").strong());
        field(ui, "Learning rate", "How big each update step is. 2e-4 is the usual LoRA starting point; lower it (1e-4, 5e-5) if the loss jumps around or becomes NaN.", |ui| {
            ui.add(DragValue::new(&mut c.lr).range(1e-7..=1e-1).speed(1e-5).custom_formatter(|v, _| format!("{v:.1e}")).custom_parser(|s| s.trim().parse().ok()))
        });
        ui.horizontal(|ui| {
            let mut by_steps = c.max_steps.is_some();
            ui.label("Length");
            if ui.radio(!by_steps, "epochs").clicked() {
                by_steps = false;
            }
            if ui.radio(by_steps, "steps").clicked() {
                by_steps = true;
            }
            if by_steps {
                let mut steps = c.max_steps.unwrap_or(100);
                let label = ui.label("Max steps");
                ui.add(DragValue::new(&mut steps).range(1..=1_000_000)).labelled_by(label.id);
                c.max_steps = Some(steps);
            } else {
                c.max_steps = None;
                let label = ui.label("Epochs");
                ui.add(DragValue::new(&mut c.epochs).range(0.1..=100.0).speed(0.1)).labelled_by(label.id);
            }
            widgets::help(ui, "Length", "An epoch is one pass over the training examples. 1–3 epochs is typical; more risks memorising the examples (watch the eval loss rise).");
        });
        field(
            ui,
            "Batch size",
            "Examples per forward pass. Lower it when memory runs out.",
            |ui| ui.add(DragValue::new(&mut c.micro_batch_size).range(1..=512)),
        );
        field(ui, "Gradient accumulation", "Batches whose gradients add up before one update: the effective batch is batch size × this. Raise it to keep the effective batch when you lower the batch size.", |ui| {
            ui.add(DragValue::new(&mut c.grad_accum).range(1..=1024))
        });
        field(ui, "Max sequence length", "Longest example in tokens. Longer ones are dropped (see the histogram on the Data step). Memory grows with it.", |ui| {
            ui.add(DragValue::new(&mut c.max_seq_len).range(16..=131_072))
        });
    }

    fn advanced_ui(&mut self, ui: &mut Ui, gguf: bool) {
        let c = &mut self.config;
        ui.horizontal(|ui| {
            let label = ui.label("Schedule");
            egui::ComboBox::from_id_salt("schedule")
                .selected_text(format!("{:?}", c.schedule).to_lowercase())
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut c.schedule, Schedule::Cosine, "cosine");
                    ui.selectable_value(&mut c.schedule, Schedule::Linear, "linear");
                    ui.selectable_value(&mut c.schedule, Schedule::Constant, "constant");
                })
                .response
                .labelled_by(label.id);
            widgets::help(ui, "Schedule", "How the learning rate changes after warm-up: cosine and linear fall to 0 by the end; constant stays.");
        });
        field(ui, "Warm-up share", "The first part of the run in which the learning rate climbs from 0, so early updates do not overshoot (3% is usual).", |ui| {
            ui.add(DragValue::new(&mut c.warmup_ratio).range(0.0..=0.5).speed(0.005))
        });
        field(ui, "Weight decay", "Pulls the LoRA matrices towards zero each step (decoupled, AdamW). 0 is usual for LoRA.", |ui| {
            ui.add(DragValue::new(&mut c.weight_decay).range(0.0..=1.0).speed(0.001))
        });
        field(
            ui,
            "Max gradient norm",
            "Clips unusually large updates (1.0 is usual; 0 turns clipping off).",
            |ui| {
                ui.add(
                    DragValue::new(&mut c.max_grad_norm)
                        .range(0.0..=100.0)
                        .speed(0.05),
                )
            },
        );
        field(ui, "Adam beta1", "AdamW's momentum (0.9).", |ui| {
            ui.add(
                DragValue::new(&mut c.betas.0)
                    .range(0.0..=0.9999)
                    .speed(0.001),
            )
        });
        field(
            ui,
            "Adam beta2",
            "AdamW's second-moment decay (0.999).",
            |ui| {
                ui.add(
                    DragValue::new(&mut c.betas.1)
                        .range(0.0..=0.99999)
                        .speed(0.0001),
                )
            },
        );
        field(ui, "Seed", "Drives initialisation, dropout, shuffling and the split: the same seed and settings give the same run.", |ui| {
            ui.add(DragValue::new(&mut c.seed))
        });
        field(ui, "Evaluate every (steps)", "How often to measure the loss on the evaluation examples (0: at the end of each epoch).", |ui| {
            ui.add(DragValue::new(&mut c.eval_every).range(0..=1_000_000))
        });
        field(ui, "Save every (steps)", "How often to write a checkpoint you can resume from (0: only at the end, on pause and on cancel).", |ui| {
            ui.add(DragValue::new(&mut c.save_every).range(0..=1_000_000))
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut c.gradient_checkpointing, "Gradient checkpointing");
            widgets::help(ui, "Gradient checkpointing", "Recomputes activations during the backward pass: about a third of the memory for about a third more time.");
        });
        ui.horizontal(|ui| {
            let qlora = c.method == Method::Qlora;
            let label = ui.label("4-bit weights (QLoRA)");
            ui.add_enabled_ui(qlora, |ui| {
                egui::ComboBox::from_id_salt("quant")
                    .selected_text(c.quant.name())
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut c.quant, QuantSource::Nf4, "nf4");
                        ui.add_enabled_ui(gguf, |ui| {
                            ui.selectable_value(&mut c.quant, QuantSource::Source, "source")
                                .on_disabled_hover_text("Only for a GGUF model.");
                        });
                    })
                    .response
                    .labelled_by(label.id);
            });
            widgets::help(ui, "4-bit weights (QLoRA)", "Which 4-bit version of the model QLoRA trains against. nf4: NormalFloat 4-bit, the QLoRA paper's format, made from the model's weights exactly as bitsandbytes makes it (a model published already in bitsandbytes 4-bit is used as it is). source: a GGUF model's own quantized blocks (Q4_0, Q4_1, Q8_0, K-quants), so the adapter learns against exactly the weights llama.cpp and Ollama will run; only for GGUF models.");
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut c.optimizer_offload, "Optimizer offload");
            widgets::help(ui, "Optimizer offload", "AdamW keeps two running averages for every trainable number. With this on they live in the computer's main memory instead of the GPU's: 8 bytes less GPU memory per trainable parameter, and a slower optimizer step. Nothing changes on the CPU, where both are the same memory.");
        });
        if ui.button("Reset all to defaults").clicked() {
            *c = TrainConfig::default();
        }
    }
}

/// "LoRA" or "QLoRA", as people write them.
pub fn method_title(method: Method) -> &'static str {
    match method {
        Method::Lora => "LoRA",
        Method::Qlora => "QLoRA",
    }
}

/// Colours of the parts of a memory bar, one per [`Part::ALL`], the same in every bar.
const PART_COLORS: [Color32; 11] = [
    Color32::from_rgb(0x4c, 0x72, 0xb0),
    Color32::from_rgb(0x8c, 0xa7, 0xd6),
    Color32::from_rgb(0x93, 0x78, 0x60),
    Color32::from_rgb(0xc9, 0xa9, 0x87),
    Color32::from_rgb(0x55, 0xa8, 0x68),
    Color32::from_rgb(0x9c, 0xd0, 0x9f),
    Color32::from_rgb(0x2f, 0x7d, 0x6e),
    Color32::from_rgb(0xdd, 0x84, 0x52),
    Color32::from_rgb(0xc4, 0x4e, 0x52),
    Color32::from_rgb(0x81, 0x72, 0xb3),
    Color32::from_rgb(0x8c, 0x8c, 0x8c),
];

/// One method's estimate as a bar by part against the memory available, read out in words; each
/// part explains itself when hovered.
fn memory_bar(ui: &mut Ui, estimate: &MemoryEstimate, scale: u64) {
    let color = |part: Part| {
        let i = Part::ALL.iter().position(|p| *p == part).unwrap_or(0);
        PART_COLORS[i % PART_COLORS.len()]
    };
    let device_parts: Vec<_> = estimate
        .parts
        .iter()
        .filter(|p| p.place == Place::Device)
        .collect();
    let segments: Vec<widgets::Segment> = device_parts
        .iter()
        .map(|p| widgets::Segment {
            name: &p.name,
            bytes: p.bytes,
            color: color(p.part),
            explanation: p.part.explanation(),
        })
        .collect();
    let parts: Vec<String> = device_parts
        .iter()
        .map(|p| format!("{} {}", p.name, widgets::bytes(p.bytes)))
        .collect();
    let against = match estimate.available {
        Some(a) => format!(
            " of {} available: {}",
            widgets::bytes(a),
            verdict_words(estimate.verdict())
        ),
        None => "; memory available unknown".into(),
    };
    let description = format!(
        "{} memory: {}; total {}{against}",
        method_title(estimate.method),
        parts.join(", "),
        widgets::bytes(estimate.total),
    );
    let caption = estimate
        .available
        .map(|a| format!("{} available", widgets::bytes(a)));
    widgets::stacked_bar(
        ui,
        &segments,
        scale,
        estimate.available.zip(caption.as_deref()),
        description,
    );
    if estimate.host_total > 0 {
        ui.label(
            RichText::new(format!(
                "Plus {} in the computer's main memory (the optimizer state, offloaded).",
                widgets::bytes(estimate.host_total)
            ))
            .small(),
        );
    }
}

/// The verdict in words, so that it never rests on colour alone.
pub fn verdict_words(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Fits => "fits comfortably",
        Verdict::Tight => "fits, but only just",
        Verdict::DoesNotFit => "does not fit",
        Verdict::Unknown => "memory available unknown",
    }
}

/// "QLoRA needs about 1.41 GiB of the 7.80 GiB available: fits comfortably.", with the verdict's
/// colour (`plain` where there is no verdict); the words say it without the colour.
pub fn needs_line(comparison: &Comparison, method: Method, plain: Color32) -> (String, Color32) {
    let estimate = comparison.of(method);
    let total = widgets::bytes(estimate.total);
    let color = match estimate.verdict() {
        Verdict::Fits => GOOD,
        Verdict::Tight => WARN,
        Verdict::DoesNotFit => BAD,
        Verdict::Unknown => plain,
    };
    let text = match estimate.available {
        Some(available) => format!(
            "{} needs about {total} of the {} available: {}.",
            method_title(method),
            widgets::bytes(available),
            verdict_words(estimate.verdict())
        ),
        None => format!(
            "{} needs about {total}; the memory available is unknown, so enter an amount to plan for on the Method step.",
            method_title(method),
        ),
    };
    (text, color)
}
