//! The real `loft` binary opens its real window on a real X server (Xvfb), draws, saves a screenshot,
//! trains from the window, and reports time to first frame and frame times (printed, not asserted).
//! `scripts/test.sh` installs Xvfb where it is missing; without it this test fails and says so.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An Xvfb server for this test process, stopped when dropped.
struct Display {
    server: Child,
    name: String,
}

impl Display {
    /// Start Xvfb and wait until it accepts connections. `-displayfd` makes the server choose a free
    /// display number itself and write it to its stdout only once it is ready, so neither a stale socket
    /// in /tmp/.X11-unix nor another server on the same number can make the window test race.
    fn start() -> Display {
        let mut server = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1920x1200x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start Xvfb ({e}): install it (Debian/Ubuntu: apt-get install xvfb), or run the tests with scripts/test.sh, which does")
            });
        let stdout = server.stdout.take().expect("Xvfb stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let number = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if !line.trim().is_empty() => line.trim().to_string(),
            outcome => {
                let _ = server.kill();
                let mut stderr = String::new();
                if let Some(mut pipe) = server.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("Xvfb did not become ready ({outcome:?}); it printed:\n{stderr}");
            }
        };
        // Xvfb's stderr is no longer read; let it go nowhere rather than fill a pipe.
        drop(server.stderr.take());
        Display {
            server,
            name: format!(":{number}"),
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL, so the server removes its socket and lock file.
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.server.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.server.wait();
    }
}

/// Run `loft window-check` with `args` and return its JSON report.
fn window_check(display: &Display, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loft"))
        .arg("window-check")
        .args(args)
        .env("DISPLAY", &display.name)
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run loft window-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "window-check failed:\n{stdout}\n{stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{stderr}"))
}

fn model() -> String {
    support::fixtures().join("tiny-chat").display().to_string()
}

fn data() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/samples/support-chat.jsonl")
        .display()
        .to_string()
}

/// The screenshot is a real picture of the window: its size, and more than one colour.
fn check_screenshot(path: &Path, width: u32, height: u32) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()))
        .to_rgba8();
    assert_eq!((image.width(), image.height()), (width, height));
    let first = image.get_pixel(0, 0);
    let differing = image.pixels().filter(|p| *p != first).count();
    assert!(
        differing > (width * height / 100) as usize,
        "the screenshot is almost blank ({differing} pixels differ)"
    );
}

#[test]
fn the_window_opens_draws_and_trains_under_a_real_x_server() {
    let display = Display::start();
    let shots = tempfile::tempdir().unwrap();
    let (model, data) = (model(), data());
    for (page, w, h) in [
        ("data", 1180, 820),
        ("method", 800, 600),
        ("model", 1600, 1000),
    ] {
        let shot = shots.path().join(format!("{page}-{w}x{h}.png"));
        let report = window_check(
            &display,
            &[
                "--screenshot",
                shot.to_str().unwrap(),
                "--size",
                &format!("{w}x{h}"),
                "--model",
                &model,
                "--data",
                &data,
                "--page",
                page,
            ],
        );
        eprintln!("{page} {w}x{h}: {report}");
        assert_eq!(report["timed_out"], false, "{report}");
        assert!(
            report["page"]
                .as_str()
                .is_some_and(|shown| shown.eq_ignore_ascii_case(page)),
            "the window shows the page asked for: {report}"
        );
        assert!(report["first_frame_ms"].as_f64().is_some(), "{report}");
        check_screenshot(&shot, w, h);
    }

    let shot = shots.path().join("train.png");
    let runs = shots.path().join("runs");
    let report = window_check(
        &display,
        &[
            "--screenshot",
            shot.to_str().unwrap(),
            "--model",
            &model,
            "--data",
            &data,
            "--train-steps",
            "12",
            "--page",
            "train",
            "--runs-dir",
            runs.to_str().unwrap(),
        ],
    );
    eprintln!("training: {report}");
    assert_eq!(report["timed_out"], false, "{report}");
    assert!(
        report["training_phase"]
            .as_str()
            .unwrap()
            .starts_with("Finished"),
        "{report}"
    );
    assert_eq!(report["steps_seen"], 12);
    assert!(report["training_frames"].as_u64().unwrap() > 0);
    check_screenshot(&shot, 1180, 820);
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("run.toml").is_file())
        .expect("a run folder");
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
}
