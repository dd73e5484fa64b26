//! Writing files so that a crash or a full disk never leaves a half-written one behind: write a
//! temporary file beside the target, flush it to disk, then rename it over the target.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary path in the same folder as `target` (so the rename stays on one file system).
pub fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    target.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

pub fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(target);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Produce a file with `write(tmp_path)`, then move it into place; `io` wraps file-system errors.
pub fn produce_atomic<E>(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    io: impl Fn(std::io::Error) -> E,
) -> Result<(), E> {
    let tmp = temp_path(target);
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, target))
            .map_err(&io)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
