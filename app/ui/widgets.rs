//! Small pieces every page uses: help buttons, labelled fields, problem boxes, curve plots with their
//! text summaries, number formats.

use egui::{Color32, RichText, Ui};
use egui_plot::{Legend, Line, Plot, PlotPoints};

pub const GOOD: Color32 = Color32::from_rgb(0x2e, 0xa0, 0x43);
pub const WARN: Color32 = Color32::from_rgb(0xd2, 0x99, 0x22);
pub const BAD: Color32 = Color32::from_rgb(0xd0, 0x3a, 0x3a);

/// A page heading with one sentence saying what the page is for.
pub fn heading(ui: &mut Ui, title: &str, purpose: &str) {
    ui.heading(title);
    ui.label(RichText::new(purpose).weak());
    ui.add_space(6.0);
}

/// A "?" button that shows the explanation of a setting below it, and hides it when pressed again.
/// It takes keyboard focus (Tab, then Enter or Space) like any button; screen readers announce it as
/// "Help: <topic>" with the explanation as its description. Hovering shows the explanation too.
pub fn help(ui: &mut Ui, topic: &str, text: &str) {
    let button = ui.add(egui::Button::new(RichText::new("?").weak()).small());
    ui.ctx().accesskit_node_builder(button.id, |node| {
        node.set_label(format!("Help: {topic}"));
        node.set_description(text);
    });
    let button = button.on_hover_text(text);
    egui::Popup::from_toggle_button_response(&button)
        .close_behavior(egui::PopupCloseBehavior::CloseOnClickOutside)
        .width(360.0)
        .show(|ui| {
            ui.label(text);
        });
}

/// A labelled row: the label is linked to the widget for screen readers and UI tests.
pub fn field(
    ui: &mut Ui,
    label: &str,
    help_text: &str,
    add: impl FnOnce(&mut Ui) -> egui::Response,
) -> egui::Response {
    ui.horizontal(|ui| {
        let name = ui.label(label);
        let response = add(ui).labelled_by(name.id);
        help(ui, label, help_text);
        response
    })
    .inner
}

/// A problem the user must act on: what happened, and what to do.
/// A one-line text field named by `label` (screen readers announce the field by it) that takes the
/// keyboard focus once when `focus` is set. Returns whether Enter was pressed in it.
pub fn entry_field(
    ui: &mut Ui,
    label: &str,
    text: &mut String,
    hint: &str,
    width: f32,
    focus: &mut bool,
) -> bool {
    let name = ui.label(label);
    let edit = ui
        .add(
            egui::TextEdit::singleline(text)
                .hint_text(hint)
                .desired_width(width),
        )
        .labelled_by(name.id);
    if std::mem::take(focus) {
        edit.request_focus();
    }
    edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter))
}

pub fn problem(ui: &mut Ui, what: &str, advice: &str) {
    egui::Frame::group(ui.style())
        .stroke(egui::Stroke::new(1.0, BAD))
        .show(ui, |ui| {
            ui.colored_label(BAD, what);
            if !advice.is_empty() {
                ui.label(advice);
            }
        });
}

/// One or more (step, value) series in a plot that fills the width. Screen readers read the plot as an
/// image whose text is [`curves_summary`]: the figures a sighted user reads off the lines.
pub fn curves(ui: &mut Ui, id: &str, title: &str, height: f32, series: &[(&str, &[[f64; 2]])]) {
    let plot = Plot::new(id)
        .height(height)
        .legend(Legend::default())
        .x_axis_label("step")
        .allow_scroll(false)
        .show(ui, |plot| {
            for (name, points) in series {
                if !points.is_empty() {
                    plot.line(Line::new(*name, PlotPoints::from(points.to_vec())));
                }
            }
        });
    let summary = curves_summary(title, series);
    describe_image(&plot.response, summary);
}

/// Give a drawing (a plot) the text a screen reader reads instead of it.
pub fn describe_image(response: &egui::Response, text: String) {
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &text));
}

/// "Loss plot: training loss from 2.3100 at step 1 to 1.0500 at step 42 (lowest 0.9800 at step 37, 42
/// points); eval loss …".
pub fn curves_summary(title: &str, series: &[(&str, &[[f64; 2]])]) -> String {
    let parts: Vec<String> = series
        .iter()
        .filter_map(|(name, points)| {
            let (first, last) = (points.first()?, points.last()?);
            let lowest = points
                .iter()
                .min_by(|a, b| a[1].total_cmp(&b[1]))
                .unwrap_or(first);
            Some(format!(
                "{name} from {} at step {} to {} at step {} (lowest {} at step {}, {} points)",
                figure(first[1]),
                first[0],
                figure(last[1]),
                last[0],
                figure(lowest[1]),
                lowest[0],
                points.len()
            ))
        })
        .collect();
    if parts.is_empty() {
        format!("{title} plot: no points yet")
    } else {
        format!("{title} plot: {}", parts.join("; "))
    }
}

/// A plotted value as the axis would show it: 4 decimals, or scientific notation for small rates.
fn figure(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// One segment of a [`stacked_bar`].
pub struct Segment<'a> {
    pub name: &'a str,
    pub bytes: u64,
    pub color: Color32,
    /// What the part is, in a sentence: shown when it is hovered.
    pub explanation: &'a str,
}

/// A horizontal bar of parts laid end to end, drawn so that `scale` bytes fill the width (bars that
/// share a scale can be compared by eye), with a marked line at `limit` bytes and its caption. Below
/// it a legend names every part with its size, so nothing rests on colour alone; screen readers read
/// the whole bar as `description`.
pub fn stacked_bar(
    ui: &mut Ui,
    segments: &[Segment],
    scale: u64,
    limit: Option<(u64, &str)>,
    description: String,
) -> egui::Response {
    let width = ui.available_width().min(560.0);
    let (rect, response) = ui.allocate_exact_size(egui::vec2(width, 34.0), egui::Sense::hover());
    let painter = ui.painter_at(rect.expand(2.0));
    let bar = egui::Rect::from_min_max(
        egui::pos2(rect.left(), rect.top() + 14.0),
        egui::pos2(rect.right(), rect.bottom()),
    );
    painter.rect_filled(bar, 2.0, ui.visuals().extreme_bg_color);
    let per_byte = bar.width() / scale.max(1) as f32;
    let pointer = response.hover_pos();
    let mut hovered = None;
    let mut x = bar.left();
    for s in segments {
        let w = s.bytes as f32 * per_byte;
        let piece = egui::Rect::from_min_max(
            egui::pos2(x, bar.top()),
            egui::pos2((x + w).min(bar.right()), bar.bottom()),
        );
        painter.rect_filled(piece, 0.0, s.color);
        if pointer.is_some_and(|p| p.x >= piece.left() && p.x < piece.right()) {
            hovered = Some(s);
        }
        x += w;
    }
    if let Some((limit, caption)) = limit {
        let lx = bar.left() + (limit as f32 * per_byte).min(bar.width());
        let stroke = egui::Stroke::new(2.0, ui.visuals().strong_text_color());
        painter.line_segment(
            [
                egui::pos2(lx, rect.top() + 12.0),
                egui::pos2(lx, rect.bottom() + 2.0),
            ],
            stroke,
        );
        let align = if lx > rect.center().x {
            egui::Align2::RIGHT_TOP
        } else {
            egui::Align2::LEFT_TOP
        };
        painter.text(
            egui::pos2(lx, rect.top()),
            align,
            caption,
            egui::FontId::proportional(11.0),
            ui.visuals().text_color(),
        );
    }
    let hover = match hovered {
        Some(s) => format!("{}: {}. {}", s.name, bytes(s.bytes), s.explanation),
        None => description.clone(),
    };
    let response = response.on_hover_text_at_pointer(hover);
    describe_image(&response, description);
    ui.horizontal_wrapped(|ui| {
        for s in segments {
            let (swatch, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().rect_filled(swatch, 2.0, s.color);
            ui.label(RichText::new(format!("{} {}", s.name, bytes(s.bytes))).small())
                .on_hover_text(s.explanation);
            ui.add_space(6.0);
        }
    });
    response
}

/// Byte counts read the same in the window as in the CLI and the engine's messages.
pub use crate::engine::units::bytes;

/// "1 h 02 min", "3 min 05 s", "12 s".
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// "135M", "1.7B": parameter counts as model cards write them.
pub fn count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// An exact count with thousands separators: "6,815,744".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Name a field for screen readers (and UI tests) where no label sits beside it.
pub fn describe_field(response: &egui::Response, name: &str) {
    response.ctx.accesskit_node_builder(response.id, |node| {
        node.set_label(name);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(duration(Duration::from_secs(3720)), "1 h 02 min");
        assert_eq!(count(134_515_008), "135M");
        assert_eq!(count(1_700_000_000), "1.7B");
        assert_eq!(thousands(6_815_744), "6,815,744");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }

    #[test]
    fn a_plot_summary_names_first_last_and_lowest_points() {
        let loss = [[1.0, 2.5], [2.0, 0.75], [3.0, 1.25]];
        let lr = [[1.0, 2e-4], [2.0, 1e-4]];
        assert_eq!(
            curves_summary("Loss", &[("training loss", &loss), ("eval loss", &[])]),
            "Loss plot: training loss from 2.5000 at step 1 to 1.2500 at step 3 (lowest 0.7500 at step 2, 3 points)"
        );
        assert_eq!(
            curves_summary("Learning rate", &[("learning rate", &lr)]),
            "Learning rate plot: learning rate from 2.00e-4 at step 1 to 1.00e-4 at step 2 (lowest 1.00e-4 at step 2, 2 points)"
        );
        assert_eq!(
            curves_summary("Loss", &[("training loss", &[])]),
            "Loss plot: no points yet"
        );
    }
}
