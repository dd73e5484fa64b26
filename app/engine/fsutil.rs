//! Writing files so that a crash or a full disk never leaves a half-written one behind: write a
//! temporary file beside the target, flush it to disk, then rename it over the target — and flush the
//! folder that holds it, because until the folder's new entry is on disk a power cut can still lose the
//! rename (or, for a new folder, the folder itself).

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

/// Flush a folder's entries (names created, renamed or removed in it) to disk. Only Unix can open a
/// folder to flush it; elsewhere the file system orders this itself, and this does nothing.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Flush the folder that holds `path` (after `path` was created, renamed or removed).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Flush every file under `dir` and every folder's entries, `dir` included.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

pub fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(target);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, target)?;
        sync_parent(target)
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
            .and_then(|()| sync_parent(target))
            .map_err(&io)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Produce a folder with `fill(partial)` in a hidden sibling, then rename it into place, so `target` is
/// complete or absent, never half-written. Its files and the folder are flushed to disk before the
/// rename, and the parent after it, so a folder that survives a power cut is whole. An existing `target`
/// is replaced only when `replace` is set, and only once the new folder is complete; otherwise the
/// rename fails and `target` is left alone.
pub fn produce_dir_atomic<E>(
    target: &Path,
    replace: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    io: impl Fn(std::io::Error) -> E,
) -> Result<(), E> {
    let name = target
        .file_name()
        .map_or("folder".into(), |n| n.to_string_lossy().into_owned());
    let partial = target.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    let result = std::fs::create_dir_all(&partial)
        .map_err(&io)
        .and_then(|()| fill(&partial))
        .and_then(|()| sync_tree(&partial).map_err(&io))
        .and_then(|()| {
            if replace {
                let _ = std::fs::remove_dir_all(target);
            }
            std::fs::rename(&partial, target)
                .and_then(|()| sync_parent(target))
                .map_err(&io)
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn a_folder_appears_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("adapter");
        let failed = produce_dir_atomic(
            &target,
            false,
            |p| {
                std::fs::write(p.join("half"), "x")?;
                Err(std::io::Error::other("disk full"))
            },
            |e| e,
        );
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing left behind"
        );
        produce_dir_atomic(&target, false, |p| std::fs::write(p.join("a"), "1"), |e| e).unwrap();
        let refused =
            produce_dir_atomic(&target, false, |p| std::fs::write(p.join("b"), "2"), |e| e);
        assert!(refused.is_err() && target.join("a").is_file() && !target.join("b").exists());
        produce_dir_atomic(&target, true, |p| std::fs::write(p.join("b"), "2"), |e| e).unwrap();
        assert!(target.join("b").is_file() && !target.join("a").exists());
    }
}
