//! Downloading model repos from a local stand-in for the Hugging Face hub: the cache layout,
//! progress events, skipping what is cached, resuming, cancelling, and the error advice.
//! Nothing here contacts huggingface.co, and no test reads or sets environment variables.

#[path = "support/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hub_server::HubServer;
use loft::engine::cache::{find_cached, list_cached_models};
use loft::engine::hub::{download_model, DownloadEvent, HubOptions};
use loft::engine::ModelError;

const REPO: &str = "org/tiny";
const CONFIG: &str =
    r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8}"#;
const TOKENIZER: &str =
    r#"{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}"#;
/// Large enough to arrive in many reads, so progress and cut-offs have something to act on.
const WEIGHTS_LEN: usize = 300_000;

fn weights() -> Vec<u8> {
    (0..WEIGHTS_LEN).map(|i| (i * 31 % 251) as u8).collect()
}

/// The model repo as it sits on the hub: what Loft needs, plus files it must leave alone.
fn model_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    };
    put("config.json", CONFIG.as_bytes());
    put("tokenizer.json", TOKENIZER.as_bytes());
    put("model.safetensors", &weights());
    put("README.md", b"# tiny\n");
    put("pytorch_model.bin", b"pickle, never fetched");
    put(
        "original/consolidated.safetensors",
        b"another format of the same weights",
    );
    dir
}

/// The three files Loft takes from `model_folder`, in download order.
const NEEDED: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

fn needed_bytes() -> u64 {
    (CONFIG.len() + TOKENIZER.len() + WEIGHTS_LEN) as u64
}

struct Setup {
    server: HubServer,
    sha: String,
    cache: tempfile::TempDir,
    _repo: tempfile::TempDir,
}

fn setup() -> Setup {
    let server = HubServer::start();
    let repo = model_folder();
    let sha = server.add_repo(REPO, repo.path());
    Setup {
        server,
        sha,
        cache: tempfile::tempdir().unwrap(),
        _repo: repo,
    }
}

fn options(endpoint: String, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: Some(endpoint),
        token: Some("hf_test_token".into()),
        cache_dir: Some(cache.to_path_buf()),
        revision: None,
    }
}

impl Setup {
    fn options(&self) -> HubOptions {
        options(self.server.url(), self.cache.path())
    }

    fn download(&self, repo: &str) -> (Result<PathBuf, ModelError>, Vec<DownloadEvent>) {
        download_with(repo, &self.options())
    }

    fn repo_dir(&self) -> PathBuf {
        self.cache.path().join("models--org--tiny")
    }
}

fn download_with(
    repo: &str,
    opts: &HubOptions,
) -> (Result<PathBuf, ModelError>, Vec<DownloadEvent>) {
    let mut events = Vec::new();
    let cancel = AtomicBool::new(false);
    let result = download_model(repo, opts, &mut |e| events.push(e), &cancel);
    (result, events)
}

fn error_text(result: Result<PathBuf, ModelError>) -> String {
    result.expect_err("the download should fail").to_string()
}

#[test]
fn downloads_only_what_loft_needs_into_the_hub_cache_layout() {
    let s = setup();
    let (result, _) = s.download(REPO);
    let snapshot = result.unwrap();

    assert_eq!(snapshot, s.repo_dir().join("snapshots").join(&s.sha));
    assert_eq!(
        std::fs::read_to_string(s.repo_dir().join("refs/main")).unwrap(),
        s.sha
    );
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights()
    );
    assert_eq!(
        std::fs::read_to_string(snapshot.join("config.json")).unwrap(),
        CONFIG
    );
    assert_eq!(
        std::fs::read_to_string(snapshot.join("tokenizer.json")).unwrap(),
        TOKENIZER
    );
    for skipped in ["README.md", "pytorch_model.bin", "original"] {
        assert!(
            !snapshot.join(skipped).exists(),
            "{skipped} should not be downloaded"
        );
    }
    // Snapshot entries point into blobs/, named by etag, as in the Python client's cache.
    for file in NEEDED {
        let etag = s.server.etag(REPO, file);
        assert!(
            s.repo_dir().join("blobs").join(&etag).is_file(),
            "blob of {file}"
        );
        #[cfg(unix)]
        assert!(snapshot
            .join(file)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
    }
    let blobs = std::fs::read_dir(s.repo_dir().join("blobs"))
        .unwrap()
        .flatten();
    let parts = blobs
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .count();
    assert_eq!(parts, 0, "no partial files are left behind");
    // Only the needed files were ever asked for.
    let asked: Vec<String> = s.server.log().into_iter().filter_map(|r| r.file).collect();
    assert!(
        asked.iter().all(|f| NEEDED.contains(&f.as_str())),
        "{asked:?}"
    );
    assert!(
        !s.repo_dir().join("refs").join(&s.sha).exists(),
        "no ref named after the commit"
    );
}

#[test]
fn progress_events_arrive_in_order_with_byte_totals() {
    let s = setup();
    let (result, events) = s.download(REPO);
    let snapshot = result.unwrap();

    assert_eq!(
        events[0],
        DownloadEvent::Listing {
            repo_id: REPO.into()
        }
    );
    assert_eq!(
        events[1],
        DownloadEvent::Started {
            files: 3,
            total_bytes: Some(needed_bytes())
        }
    );
    assert_eq!(events.last(), Some(&DownloadEvent::Finished { snapshot }));
    let mut rest = &events[2..events.len() - 1];
    for (index, (name, size)) in [
        ("config.json", CONFIG.len()),
        ("tokenizer.json", TOKENIZER.len()),
        ("model.safetensors", WEIGHTS_LEN),
    ]
    .into_iter()
    .enumerate()
    {
        let size = size as u64;
        assert_eq!(
            rest[0],
            DownloadEvent::File {
                name: name.into(),
                index,
                size
            }
        );
        let end = rest
            .iter()
            .position(|e| *e == DownloadEvent::FileDone { name: name.into() })
            .unwrap();
        let done: Vec<u64> = rest[1..end]
            .iter()
            .map(|e| match e {
                DownloadEvent::Bytes {
                    name: n,
                    done,
                    total,
                } if n == name && *total == size => *done,
                other => panic!("unexpected event while downloading {name}: {other:?}"),
            })
            .collect();
        assert!(!done.is_empty(), "{name}: no Bytes events");
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{name}: {done:?}");
        assert_eq!(
            done.last(),
            Some(&size),
            "{name}: the last Bytes event is complete"
        );
        rest = &rest[end + 1..];
    }
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn a_downloaded_model_is_found_and_listed_in_the_cache() {
    let s = setup();
    let snapshot = s.download(REPO).0.unwrap();

    assert_eq!(
        find_cached(s.cache.path(), REPO, None),
        Some(snapshot.clone())
    );
    assert_eq!(
        find_cached(s.cache.path(), REPO, Some(&s.sha[..7])),
        Some(snapshot.clone())
    );
    let list = list_cached_models(s.cache.path()).unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    let model = &list[0];
    assert_eq!(model.repo_id, REPO);
    assert_eq!(model.revision, s.sha);
    assert_eq!(model.refs, vec!["main"]);
    assert_eq!(model.snapshot, snapshot);
    assert_eq!(model.size_bytes, needed_bytes());
    assert_eq!(model.model_type.as_deref(), Some("llama"));
    assert_eq!(model.architecture.as_deref(), Some("LlamaForCausalLM"));
    assert!(model.has_safetensors && !model.has_gguf);
}

#[test]
fn a_second_download_transfers_nothing() {
    let s = setup();
    let first = s.download(REPO).0.unwrap();
    s.server.clear_log();

    let (second, events) = s.download(REPO);
    assert_eq!(second.unwrap(), first);
    let files_asked = s
        .server
        .log()
        .into_iter()
        .filter(|r| r.file.is_some())
        .count();
    assert_eq!(
        files_asked,
        0,
        "only the listing is asked for: {:?}",
        s.server.log()
    );
    let bytes = |name: &str| {
        events.iter().any(|e| {
            *e == DownloadEvent::Bytes {
                name: name.into(),
                done: WEIGHTS_LEN as u64,
                total: WEIGHTS_LEN as u64,
            }
        })
    };
    assert!(
        bytes("model.safetensors"),
        "cached files still report complete progress"
    );
}

#[test]
fn a_dropped_connection_resumes_from_the_partial_file() {
    let s = setup();
    let cut = 100_000;
    s.server.cut_next_download("model.safetensors", cut);

    let snapshot = s.download(REPO).0.unwrap();
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights()
    );
    let downloads: Vec<_> = s
        .server
        .log()
        .into_iter()
        .filter(|r| r.file.as_deref() == Some("model.safetensors") && !r.is_probe())
        .collect();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(downloads[0].bytes, cut);
    assert_eq!(downloads[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(
        downloads[1].bytes,
        WEIGHTS_LEN as u64 - cut,
        "the retry sends only the rest"
    );
}

#[test]
fn a_partial_file_left_by_an_earlier_run_is_resumed() {
    let s = setup();
    let half = WEIGHTS_LEN / 2;
    let etag = s.server.etag(REPO, "model.safetensors");
    let blobs = s.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{etag}.part")), &weights()[..half]).unwrap();

    let snapshot = s.download(REPO).0.unwrap();
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights()
    );
    assert_eq!(
        s.server.downloaded_bytes("model.safetensors"),
        (WEIGHTS_LEN - half) as u64
    );
}

#[test]
fn cancelling_stops_the_download_and_a_later_run_completes_it() {
    let s = setup();
    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    let result = download_model(
        REPO,
        &s.options(),
        &mut |e| {
            // The first progress report of the weights cancels: the next read stops the transfer.
            if matches!(&e, DownloadEvent::Bytes { name, .. } if name == "model.safetensors") {
                cancel.store(true, Ordering::Relaxed);
            }
            events.push(e);
        },
        &cancel,
    );
    assert!(matches!(result, Err(ModelError::Cancelled)), "{result:?}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, DownloadEvent::Finished { .. })));
    let snapshot = s.repo_dir().join("snapshots").join(&s.sha);
    assert!(snapshot.join("config.json").is_file());
    assert!(
        !s.repo_dir().join("refs/main").exists(),
        "main points at a snapshot only once it is whole"
    );
    assert!(!s.repo_dir().join("refs").join(&s.sha).exists());
    assert!(!snapshot.join("model.safetensors").exists());
    // The transfer stopped mid-file, leaving its partial file for the next run.
    let part = s
        .repo_dir()
        .join("blobs")
        .join(format!("{}.part", s.server.etag(REPO, "model.safetensors")));
    assert!(std::fs::metadata(part).unwrap().len() < WEIGHTS_LEN as u64);

    let (again, _) = s.download(REPO);
    assert_eq!(
        std::fs::read(again.unwrap().join("model.safetensors")).unwrap(),
        weights()
    );
}

#[test]
fn a_cancel_before_the_start_asks_the_hub_nothing() {
    let s = setup();
    let cancel = AtomicBool::new(true);
    let result = download_model(REPO, &s.options(), &mut |_| {}, &cancel);
    assert!(matches!(result, Err(ModelError::Cancelled)), "{result:?}");
    assert!(s.server.log().is_empty());
}

#[test]
fn a_gated_repo_explains_the_licence_and_the_token() {
    let s = setup();
    s.server.gate(REPO);
    let message = error_text(s.download(REPO).0);
    assert!(message.contains("gated or private"), "{message}");
    assert!(message.contains("accept its licence"), "{message}");
    assert!(message.contains("HF_TOKEN"), "{message}");
    assert!(
        !message.contains("hf_test_token"),
        "the token never appears: {message}"
    );
}

#[test]
fn an_unknown_repo_or_revision_says_check_the_spelling() {
    let s = setup();
    let message = error_text(s.download("org/nope").0);
    assert!(message.contains("no repo `org/nope`"), "{message}");
    assert!(message.contains(&s.server.url()), "{message}");
    assert!(message.contains("check the spelling"), "{message}");

    let opts = HubOptions {
        revision: Some("dev".into()),
        ..s.options()
    };
    let message = error_text(download_with(REPO, &opts).0);
    assert!(message.contains("no revision `dev`"), "{message}");
}

#[test]
fn a_hub_that_cannot_be_reached_says_check_the_network() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is dropped: nothing listens on `port` any more.
    let cache = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let message = error_text(download_with(REPO, &options(endpoint.clone(), cache.path())).0);
    assert!(
        message.contains(&format!("could not reach {endpoint}")),
        "{message}"
    );
    assert!(
        message.contains("check your network connection"),
        "{message}"
    );
    assert!(message.contains("HF_ENDPOINT"), "{message}");
}

/// Every pickle extension the folder loader refuses is refused by the downloader too (one list).
#[test]
fn a_repo_with_only_ckpt_weights_is_refused_as_pickle() {
    let s = setup();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("config.json"), CONFIG).unwrap();
    std::fs::write(repo.path().join("model.ckpt"), b"pickle").unwrap();
    s.server.add_repo("org/checkpointed", repo.path());

    let result = s.download("org/checkpointed").0;
    assert!(
        matches!(&result, Err(ModelError::Pickle { ext, .. }) if ext == ".ckpt"),
        "{result:?}"
    );
}

#[test]
fn a_repo_with_only_pickle_weights_is_refused() {
    let s = setup();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("config.json"), CONFIG).unwrap();
    std::fs::write(repo.path().join("pytorch_model.bin"), b"pickle").unwrap();
    s.server.add_repo("org/pickled", repo.path());

    let result = s.download("org/pickled").0;
    assert!(
        matches!(&result, Err(ModelError::Pickle { ext, .. }) if ext == ".bin"),
        "{result:?}"
    );
    let message = error_text(result);
    assert!(message.contains("does not load pickle"), "{message}");
    assert!(message.contains("safetensors"), "{message}");
    assert!(
        s.server.log().iter().all(|r| r.file.is_none()),
        "nothing is downloaded"
    );
}

#[test]
fn a_repo_without_weights_is_a_clear_error() {
    let s = setup();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("config.json"), CONFIG).unwrap();
    std::fs::write(repo.path().join("model.Q4_0.gguf"), b"GGUF").unwrap();
    s.server.add_repo("org/gguf-only", repo.path());
    let message = error_text(s.download("org/gguf-only").0);
    assert!(message.contains("GGUF files only"), "{message}");

    std::fs::remove_file(repo.path().join("model.Q4_0.gguf")).unwrap();
    s.server.add_repo("org/empty", repo.path());
    let message = error_text(s.download("org/empty").0);
    assert!(message.contains("no model weights"), "{message}");
}

#[test]
fn a_sharded_repo_downloads_the_shards_its_index_names() {
    let s = setup();
    let repo = tempfile::tempdir().unwrap();
    let index = r#"{"metadata": {}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "c.weight": "model-00002-of-00002.safetensors"}}"#;
    for (name, content) in [
        ("config.json", CONFIG.as_bytes()),
        ("model.safetensors.index.json", index.as_bytes()),
        ("model-00001-of-00002.safetensors", b"shard one"),
        ("model-00002-of-00002.safetensors", b"shard two"),
        // Mistral-style: the same weights again in another layout, not named by the index.
        ("consolidated.safetensors", b"all weights again"),
    ] {
        std::fs::write(repo.path().join(name), content).unwrap();
    }
    s.server.add_repo("org/sharded", repo.path());

    let (result, events) = s.download("org/sharded");
    let snapshot = result.unwrap();
    assert_eq!(
        std::fs::read(snapshot.join("model-00002-of-00002.safetensors")).unwrap(),
        b"shard two"
    );
    assert!(snapshot.join("model-00001-of-00002.safetensors").is_file());
    assert!(snapshot.join("model.safetensors.index.json").is_file());
    assert!(!snapshot.join("consolidated.safetensors").exists());
    let started = events
        .iter()
        .find(|e| matches!(e, DownloadEvent::Started { .. }))
        .unwrap();
    let total = (CONFIG.len() + index.len() + "shard one".len() + "shard two".len()) as u64;
    assert_eq!(
        *started,
        DownloadEvent::Started {
            files: 4,
            total_bytes: Some(total)
        }
    );
}

#[test]
fn a_revision_by_commit_sha_gets_no_ref() {
    let s = setup();
    let opts = HubOptions {
        revision: Some(s.sha.clone()),
        ..s.options()
    };
    let snapshot = download_with(REPO, &opts).0.unwrap();
    assert_eq!(snapshot, s.repo_dir().join("snapshots").join(&s.sha));
    let refs = s.repo_dir().join("refs");
    let names: Vec<_> = std::fs::read_dir(&refs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(
        find_cached(s.cache.path(), REPO, Some(&s.sha)),
        Some(snapshot)
    );
}
