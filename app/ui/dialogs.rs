//! Native open/save dialogs (rfd), run off the UI thread so the window keeps painting while one is open.
//! rfd's async dialogs hand the work to the platform's own thread where one is required (macOS).

use std::path::PathBuf;

use super::jobs::Job;

pub fn pick_folder(ctx: &egui::Context, title: &str) -> Job<Option<PathBuf>> {
    let title = title.to_string();
    Job::spawn(ctx, "dialog", move |r| {
        let picked =
            pollster::block_on(rfd::AsyncFileDialog::new().set_title(&title).pick_folder());
        r.send(picked.map(|h| h.path().to_path_buf()));
    })
}

fn file_dialog(title: &str, kind: &str, extensions: &[&str]) -> rfd::AsyncFileDialog {
    rfd::AsyncFileDialog::new()
        .set_title(title)
        .add_filter(kind, extensions)
}

pub fn pick_file(
    ctx: &egui::Context,
    title: &str,
    kind: &str,
    extensions: &[&str],
) -> Job<Option<PathBuf>> {
    let dialog = file_dialog(title, kind, extensions);
    Job::spawn(ctx, "dialog", move |r| {
        let picked = pollster::block_on(dialog.pick_file());
        r.send(picked.map(|h| h.path().to_path_buf()));
    })
}

pub fn pick_files(
    ctx: &egui::Context,
    title: &str,
    kind: &str,
    extensions: &[&str],
) -> Job<Vec<PathBuf>> {
    let dialog = file_dialog(title, kind, extensions);
    Job::spawn(ctx, "dialog", move |r| {
        let picked = pollster::block_on(dialog.pick_files()).unwrap_or_default();
        r.send(picked.iter().map(|h| h.path().to_path_buf()).collect());
    })
}
