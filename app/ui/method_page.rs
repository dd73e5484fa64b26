//! Step 3, the method: LoRA and training settings with a plain-language explanation of each knob, the
//! number of parameters that will train, and the device that will do it.

use egui::{DragValue, RichText, Ui};

use super::widgets::{self, field, BAD};
use crate::engine::arch::Arch;
use crate::engine::model::lora::{ALL_LINEAR_TARGETS, ATTENTION_TARGETS};
use crate::engine::train::memory::{BatchShape, DeviceKind, MemoryEstimate, Part};
use crate::engine::train::{Schedule, TrainConfig};
use crate::engine::units;

/// Hours of training make a typo expensive: every value is checked as it is typed.
#[derive(Default)]
pub struct MethodPage {
    pub config: TrainConfig,
    /// What will train, filled in by a background probe.
    pub device: Option<DeviceInfo>,
}

/// The device training will use, as the probe found it when the window opened.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// "CPU (8 threads)" or the GPU's name and memory.
    pub name: String,
    pub cpu: bool,
    /// Memory the system could give Loft at the time (MemAvailable).
    pub free_memory: Option<u64>,
    /// The machine's memory (MemTotal), for the Model step's "can this machine train it".
    pub total_memory: Option<u64>,
}

impl MethodPage {
    pub fn blocker(&self) -> Option<String> {
        self.config.validate().err()
    }

    pub fn status(&self) -> String {
        match self.blocker() {
            Some(e) => e,
            None => format!(
                "LoRA r={} alpha={} · lr {:.0e}",
                self.config.lora.r, self.config.lora.alpha, self.config.lr
            ),
        }
    }

    pub fn ui(&mut self, ui: &mut Ui, arch: Option<&Arch>, total_parameters: Option<u64>) {
        widgets::heading(
            ui,
            "Method",
            "LoRA keeps the model frozen and trains two small matrices beside chosen layers. The defaults suit most first runs.",
        );
        ui.label(format!(
            "Device: {}",
            self.device
                .as_ref()
                .map_or("detecting…", |d| d.name.as_str())
        ));
        if let (Some(arch), Some(total)) = (arch, total_parameters) {
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
            self.memory_ui(ui, arch, total, trainable);
        } else {
            ui.label(RichText::new("Open a model to see how many parameters will train.").weak());
        }
        ui.separator();
        self.lora_ui(ui);
        ui.separator();
        self.training_ui(ui);
        egui::CollapsingHeader::new("Advanced").show(ui, |ui| self.advanced_ui(ui));
        if let Some(e) = self.blocker() {
            ui.colored_label(BAD, format!("Fix this setting: {e}"));
        }
    }

    /// On the CPU: what a run at the longest batch (`micro_batch_size × max_seq_len`) needs, by the
    /// same estimate the trainer checks before its first step, against the memory free.
    fn memory_ui(&self, ui: &mut Ui, arch: &Arch, _total: u64, _trainable: u64) {
        let Some(DeviceInfo {
            cpu: true,
            free_memory: Some(free),
            ..
        }) = &self.device
        else {
            return;
        };
        let c = &self.config;
        let estimate = MemoryEstimate::new(arch, c, DeviceKind::Cpu, BatchShape::assumed(c))
            .with_available(Some(*free));
        let text = format!(
            "Memory at the longest batch: about {} (activations {} for {} x {} tokens, logits {}); {} free",
            units::bytes(estimate.total),
            units::bytes(estimate.bytes(Part::Activations)),
            c.micro_batch_size,
            c.max_seq_len,
            units::bytes(estimate.bytes(Part::Logits)),
            units::bytes(*free),
        );
        if estimate.fits() != Some(false) {
            ui.label(text);
        } else {
            ui.colored_label(BAD, text)
                .on_hover_text("Lower the micro-batch size or max_seq_len, or turn on gradient checkpointing (Advanced). Rows shorter than max_seq_len need less.");
        }
    }

    fn lora_ui(&mut self, ui: &mut Ui) {
        let c = &mut self.config;
        ui.label(RichText::new("LoRA").strong());
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

    fn advanced_ui(&mut self, ui: &mut Ui) {
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
        if ui.button("Reset all to defaults").clicked() {
            *c = TrainConfig::default();
        }
    }
}
