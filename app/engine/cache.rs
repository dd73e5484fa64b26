//! The Hugging Face hub cache on this machine, read without any network.
//!
//! Layout (shared with Python's `huggingface_hub`, so models downloaded by either are seen by both):
//! ```text
//! <cache>/models--<org>--<name>/
//!   blobs/<etag>                  file contents, named by their hash
//!   refs/<ref>                    a branch or tag name (e.g. `main`) → the commit sha it pointed to
//!   snapshots/<commit sha>/<file> symlinks into blobs/ (plain files where symlinks are unavailable)
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{read_json, ModelError, Result};

/// Snapshot folders nest only as deep as repo paths do; this bounds the walk on odd trees.
const MAX_DEPTH: usize = 16;

/// Where the hub cache lives, the way `huggingface_hub` decides it: `HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    hub_cache_dir_from(&env_var)
}

/// The user's Hugging Face token: `HF_TOKEN`, else the token file (`HF_TOKEN_PATH`, else
/// `$HF_HOME/token`, else `~/.cache/huggingface/token`). Trimmed; empty means none.
/// The token is a secret: callers must never log it or write it into runs.
pub fn hf_token() -> Option<String> {
    hf_token_from(&env_var)
}

/// One snapshot of one model repo in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CachedModel {
    pub repo_id: String,
    /// The commit sha this snapshot holds.
    pub revision: String,
    /// The branch or tag names that point at this commit, e.g. `["main"]`.
    pub refs: Vec<String>,
    pub snapshot: PathBuf,
    /// Bytes of the blobs this snapshot points to, each blob counted once.
    pub size_bytes: u64,
    pub model_type: Option<String>,
    /// `architectures[0]` of config.json, e.g. `LlamaForCausalLM`.
    pub architecture: Option<String>,
    pub has_safetensors: bool,
    pub has_gguf: bool,
}

/// Every model snapshot in the cache, sorted by repo id (snapshots with refs first).
/// A missing cache is an empty list; entries that cannot be read are skipped.
pub fn list_cached_models(cache_dir: &Path) -> Result<Vec<CachedModel>> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ModelError::io(cache_dir, e)),
    };
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(repo_id) = name.to_str().and_then(repo_id_of_folder) else {
            continue;
        };
        models.extend(repo_snapshots(&entry.path(), &repo_id));
    }
    models.sort_by(|a, b| {
        (&a.repo_id, a.refs.is_empty(), &a.revision).cmp(&(
            &b.repo_id,
            b.refs.is_empty(),
            &b.revision,
        ))
    });
    Ok(models)
}

/// The snapshot folder of `repo_id` at `revision`: a ref name (default `main`) or a commit sha
/// (full, or a prefix of at least 7 hex digits that matches one snapshot only).
pub fn find_cached(cache_dir: &Path, repo_id: &str, revision: Option<&str>) -> Option<PathBuf> {
    if !is_safe_repo_name(repo_id) {
        return None;
    }
    let repo_dir = cache_dir.join(repo_folder_name(repo_id));
    let revision = revision.unwrap_or("main");
    let snapshots = repo_dir.join("snapshots");
    if is_safe_ref(revision) {
        if let Ok(sha) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            let dir = snapshots.join(sha.trim());
            if is_hex(sha.trim()) && dir.is_dir() {
                return Some(dir);
            }
        }
    }
    find_snapshot_by_sha(&snapshots, revision)
}

/// Whether `s` has the shape of a hub repo id, `org/name`: exactly one `/`, only
/// `[A-Za-z0-9._-]`, no part starting or ending with `.` or `-`, no `--` or `..` (the hub forbids
/// those). Used to tell repo ids from paths.
pub fn is_repo_id(s: &str) -> bool {
    match s.split_once('/') {
        Some((org, name)) => is_repo_name_part(org) && is_repo_name_part(name),
        None => false,
    }
}

/// The cache folder name of a model repo: `models--org--name`.
pub fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// A repo id that is safe to join onto a path: `org/name`, or a legacy single name like `gpt2`.
pub(crate) fn is_safe_repo_name(s: &str) -> bool {
    is_repo_id(s) || is_repo_name_part(s)
}

/// A ref name (branch, tag, `refs/pr/1`) that cannot leave the refs folder when joined onto it.
pub(crate) fn is_safe_ref(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && s.split('/').all(|part| {
            !part.is_empty() && part != "." && part != ".." && !part.contains(['\\', ':', '\0'])
        })
}

pub(crate) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_repo_name_part(s: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(allowed)
        && !s.starts_with(['.', '-'])
        && !s.ends_with(['.', '-'])
        && !s.contains("--")
        && !s.contains("..")
}

/// `models--org--name` → `org/name`; `None` for datasets, spaces and anything else.
fn repo_id_of_folder(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    (!rest.is_empty()).then(|| rest.replace("--", "/"))
}

fn find_snapshot_by_sha(snapshots: &Path, sha: &str) -> Option<PathBuf> {
    if sha.len() < 7 || sha.len() > 40 || !is_hex(sha) {
        return None;
    }
    let sha = sha.to_ascii_lowercase();
    let mut matches = std::fs::read_dir(snapshots)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.to_ascii_lowercase().starts_with(&sha))
        })
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    let first = matches.next()?;
    // An ambiguous prefix names no snapshot in particular.
    matches.next().is_none().then_some(first)
}

fn repo_snapshots(repo_dir: &Path, repo_id: &str) -> Vec<CachedModel> {
    let refs = read_refs(&repo_dir.join("refs"));
    let Ok(entries) = std::fs::read_dir(repo_dir.join("snapshots")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let revision = e.file_name().to_str()?.to_string();
            let names = refs.get(&revision).cloned().unwrap_or_default();
            Some(describe_snapshot(repo_id, revision, names, e.path()))
        })
        .collect()
}

/// Commit sha → the ref names pointing at it, read from `refs/` (nested for `refs/pr/N`).
fn read_refs(refs_dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut by_sha: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in walk_files(refs_dir) {
        let Ok(name) = path.strip_prefix(refs_dir) else {
            continue;
        };
        let name = name.to_string_lossy().replace('\\', "/");
        // Dot-files are temporaries of an interrupted write, not refs.
        if name.split('/').any(|part| part.starts_with('.')) {
            continue;
        }
        if let Ok(sha) = std::fs::read_to_string(&path) {
            by_sha.entry(sha.trim().to_string()).or_default().push(name);
        }
    }
    for names in by_sha.values_mut() {
        names.sort();
    }
    by_sha
}

fn describe_snapshot(
    repo_id: &str,
    revision: String,
    refs: Vec<String>,
    snapshot: PathBuf,
) -> CachedModel {
    let files = walk_files(&snapshot);
    let has_ext = |ext: &str| {
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext)))
    };
    let (model_type, architecture) = read_config(&snapshot.join("config.json"));
    CachedModel {
        repo_id: repo_id.to_string(),
        revision,
        refs,
        size_bytes: blob_bytes(&files),
        model_type,
        architecture,
        has_safetensors: has_ext("safetensors"),
        has_gguf: has_ext("gguf"),
        snapshot,
    }
}

/// Bytes of the files behind `files`: a symlink counts its target, and a blob that several
/// snapshot entries point to counts once. Dangling links (unfinished downloads) count nothing.
fn blob_bytes(files: &[PathBuf]) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    for file in files {
        let Ok(target) = std::fs::canonicalize(file) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&target) else {
            continue;
        };
        if meta.is_file() && seen.insert(target) {
            total += meta.len();
        }
    }
    total
}

fn read_config(path: &Path) -> (Option<String>, Option<String>) {
    let Ok(config) = read_json(path) else {
        return (None, None);
    };
    let model_type = config["model_type"].as_str().map(str::to_string);
    let architecture = config["architectures"][0].as_str().map(str::to_string);
    (model_type, architecture)
}

/// Files (and symlinks to files) under `dir`, without following symlinked folders.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            } else if kind.is_file() || kind.is_symlink() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn hub_cache_dir_from(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return PathBuf::from(dir);
    }
    hf_home(env).join("hub")
}

fn hf_token_from(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let from_env = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN"));
    if let Some(token) = from_env {
        return Some(token.trim().to_string());
    }
    let path = env("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home(env).join("token"));
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface");
    }
    match env("HOME").or_else(|| env("USERPROFILE")) {
        Some(home) => PathBuf::from(home).join(".cache").join("huggingface"),
        // No home at all (some service accounts): a writable place beats a panic.
        None => std::env::temp_dir().join("huggingface"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs;

    const SHA_A: &str = "aaaaaaa111111111111111111111111111111111";
    const SHA_B: &str = "bbbbbbb222222222222222222222222222222222";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned().filter(|v| !v.trim().is_empty())
    }

    /// A blob plus a snapshot entry for it: a symlink on unix (like the real cache), else a copy.
    fn put_file(repo: &Path, sha: &str, name: &str, content: &[u8]) {
        let blob =
            repo.join("blobs")
                .join(format!("blob-{}-{}", content.len(), name.replace('/', "_")));
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, content).unwrap();
        let pointer = repo.join("snapshots").join(sha).join(name);
        fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, &pointer).unwrap();
        #[cfg(not(unix))]
        fs::copy(&blob, &pointer).unwrap();
    }

    fn put_ref(repo: &Path, name: &str, sha: &str) {
        let path = repo.join("refs").join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{sha}\n")).unwrap();
    }

    /// org/tiny: main → SHA_A (config + weights), refs/pr/1 → SHA_B, which shares the weights blob.
    fn fake_cache() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--org--tiny");
        let config = br#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}"#;
        put_file(&repo, SHA_A, "config.json", config);
        put_file(&repo, SHA_A, "model.safetensors", &[7u8; 1000]);
        put_ref(&repo, "main", SHA_A);
        // The second snapshot points at the same weights blob and adds a plain (non-link) file.
        let shared = repo.join("snapshots").join(SHA_B);
        fs::create_dir_all(&shared).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            repo.join("blobs").join("blob-1000-model.safetensors"),
            shared.join("model.safetensors"),
        )
        .unwrap();
        #[cfg(not(unix))]
        fs::write(shared.join("model.safetensors"), [7u8; 1000]).unwrap();
        fs::write(shared.join("extra.gguf"), [1u8; 10]).unwrap();
        put_ref(&repo, "refs/pr/1", SHA_B);
        dir
    }

    #[test]
    fn cache_dir_follows_the_huggingface_hub_rules() {
        let dir = |pairs: &[(&str, &str)]| hub_cache_dir_from(&env_of(pairs));
        assert_eq!(
            dir(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")]),
            PathBuf::from("/c")
        );
        assert_eq!(
            dir(&[("HF_HOME", "/h"), ("HOME", "/u")]),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/u")]),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            dir(&[("HOME", "/u")]),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
        assert_eq!(
            dir(&[("USERPROFILE", "/w")]),
            PathBuf::from("/w/.cache/huggingface/hub")
        );
        assert_eq!(
            dir(&[("HF_HUB_CACHE", ""), ("HOME", "/u")]),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
    }

    #[test]
    fn token_comes_from_env_then_token_file() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        assert_eq!(hf_token_from(&env_of(&[("HF_HOME", h)])), None);
        fs::write(home.path().join("token"), "  hf_file \n").unwrap();
        assert_eq!(
            hf_token_from(&env_of(&[("HF_HOME", h)])).as_deref(),
            Some("hf_file")
        );
        let env = env_of(&[("HF_HOME", h), ("HF_TOKEN", " hf_env ")]);
        assert_eq!(hf_token_from(&env).as_deref(), Some("hf_env"));
        let other = home.path().join("other");
        fs::write(&other, "hf_other").unwrap();
        let env = env_of(&[("HF_HOME", h), ("HF_TOKEN_PATH", other.to_str().unwrap())]);
        assert_eq!(hf_token_from(&env).as_deref(), Some("hf_other"));
        fs::write(home.path().join("token"), "\n").unwrap();
        assert_eq!(hf_token_from(&env_of(&[("HF_HOME", h)])), None);
    }

    #[test]
    fn repo_ids_are_told_from_paths() {
        for ok in [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "Qwen/Qwen2.5-0.5B",
            "a/b",
            "org_1/x.y_z",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "",
            "gpt2",
            "a/b/c",
            "./model",
            "../x",
            "/abs",
            "org/",
            "/name",
            "-org/x",
            "org/.hidden",
            "org/name.",
            "org/na--me",
            "org/na..me",
            "org/na me",
            "C:\\models\\x",
            "org/model.gguf/x",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn lists_every_snapshot_with_refs_and_sizes() {
        let cache = fake_cache();
        // Things that are not model repos are ignored.
        fs::create_dir_all(cache.path().join("datasets--org--data/snapshots/x")).unwrap();
        fs::write(cache.path().join("version.txt"), "1").unwrap();
        fs::create_dir_all(cache.path().join("models--org--empty")).unwrap();

        let list = list_cached_models(cache.path()).unwrap();
        assert_eq!(list.len(), 2, "{list:#?}");
        let main = &list[0];
        assert_eq!(main.repo_id, "org/tiny");
        assert_eq!(main.revision, SHA_A);
        assert_eq!(main.refs, vec!["main"]);
        assert_eq!(
            main.size_bytes,
            1000 + fs::metadata(main.snapshot.join("config.json"))
                .unwrap()
                .len()
        );
        assert_eq!(main.model_type.as_deref(), Some("llama"));
        assert_eq!(main.architecture.as_deref(), Some("LlamaForCausalLM"));
        assert!(main.has_safetensors && !main.has_gguf);

        let pr = &list[1];
        assert_eq!(pr.revision, SHA_B);
        assert_eq!(pr.refs, vec!["refs/pr/1"]);
        assert_eq!(pr.size_bytes, 1010);
        assert_eq!(pr.model_type, None);
        assert!(pr.has_safetensors && pr.has_gguf);
    }

    #[test]
    fn a_blob_linked_twice_counts_once() {
        let cache = fake_cache();
        let snap = cache.path().join("models--org--tiny/snapshots").join(SHA_A);
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            snap.join("model.safetensors"),
            snap.join("copy.safetensors"),
        )
        .unwrap();
        let list = list_cached_models(cache.path()).unwrap();
        let config_len = fs::metadata(snap.join("config.json")).unwrap().len();
        assert_eq!(list[0].size_bytes, 1000 + config_len);
    }

    #[test]
    fn missing_cache_is_empty_and_odd_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_cached_models(&dir.path().join("nope"))
            .unwrap()
            .is_empty());
        let repo = dir.path().join("models--org--odd");
        fs::create_dir_all(repo.join("snapshots")).unwrap();
        fs::write(repo.join("snapshots").join("not-a-dir"), "x").unwrap();
        fs::create_dir_all(repo.join("snapshots").join(SHA_A)).unwrap();
        fs::write(
            repo.join("snapshots").join(SHA_A).join("config.json"),
            "{ not json",
        )
        .unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            "../../blobs/gone",
            repo.join("snapshots").join(SHA_A).join("model.safetensors"),
        )
        .unwrap();
        fs::write(dir.path().join("models--file-not-dir"), "x").unwrap();
        let list = list_cached_models(dir.path()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].size_bytes, 10, "only the broken config.json counts");
        assert_eq!(list[0].model_type, None);
        assert!(list[0].refs.is_empty());
    }

    #[test]
    fn finds_snapshots_by_ref_or_sha() {
        let cache = fake_cache();
        let snaps = cache.path().join("models--org--tiny/snapshots");
        let find = |rev: Option<&str>| find_cached(cache.path(), "org/tiny", rev);
        assert_eq!(find(None), Some(snaps.join(SHA_A)));
        assert_eq!(find(Some("main")), Some(snaps.join(SHA_A)));
        assert_eq!(find(Some("refs/pr/1")), Some(snaps.join(SHA_B)));
        assert_eq!(find(Some(SHA_B)), Some(snaps.join(SHA_B)));
        assert_eq!(find(Some("bbbbbbb")), Some(snaps.join(SHA_B)));
        assert_eq!(find(Some("BBBBBBB22")), Some(snaps.join(SHA_B)));
        assert_eq!(find(Some("bbbbbb")), None, "too short to be a sha prefix");
        assert_eq!(find(Some("dev")), None);
        assert_eq!(find(Some("../../etc")), None);
        assert_eq!(find_cached(cache.path(), "org/other", None), None);
        assert_eq!(find_cached(cache.path(), "../org/tiny", None), None);
    }

    #[test]
    fn ambiguous_sha_prefix_finds_nothing() {
        let cache = fake_cache();
        let snaps = cache.path().join("models--org--tiny/snapshots");
        fs::create_dir_all(snaps.join("aaaaaaa999999999999999999999999999999999")).unwrap();
        assert_eq!(find_cached(cache.path(), "org/tiny", Some("aaaaaaa")), None);
        assert_eq!(
            find_cached(cache.path(), "org/tiny", Some("aaaaaaa1")),
            Some(snaps.join(SHA_A))
        );
    }

    #[test]
    fn a_ref_to_a_missing_snapshot_finds_nothing() {
        let cache = fake_cache();
        put_ref(
            &cache.path().join("models--org--tiny"),
            "main",
            "cccccccccccccccccccccccccccccccccccccccc",
        );
        assert_eq!(find_cached(cache.path(), "org/tiny", None), None);
    }
}
