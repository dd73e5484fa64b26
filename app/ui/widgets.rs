//! Small pieces every page uses: help marks, labelled fields, problem boxes, curve plots, number formats.

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

/// A "?" that explains a setting in plain words when hovered (and to screen readers).
pub fn help(ui: &mut Ui, text: &str) {
    ui.label(RichText::new("(?)").weak()).on_hover_text(text);
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
        help(ui, help_text);
        response
    })
    .inner
}

/// A problem the user must act on: what happened, and what to do.
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

/// One or more (step, value) series in a plot that fills the width.
pub fn curves(ui: &mut Ui, id: &str, height: f32, series: &[(&str, &[[f64; 2]])]) {
    Plot::new(id)
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
}
