//! Downloading a model repo from the Hugging Face hub (or a mirror) into the shared hub cache, with
//! progress events, cancellation, resume, and errors that say what to do.
//!
//! Only what Loft loads is fetched: config, tokenizer and template files, and safetensors weights.
//! Pickle weights (`.bin`, `.pt`) are never downloaded; a repo that has nothing else is refused.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use super::cache;
use super::error::{read_json, ModelError, Result};
use super::weights::pickle_extension;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The non-weight files a model needs, fetched first (small, and they fail fast on gated repos).
const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "tokenizer.model",
];
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Attempts per file; a dropped connection resumes from the partial file on the next attempt.
const ATTEMPTS: u32 = 4;
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
/// At most ~20 `Bytes` events per second per file: enough for a smooth bar, cheap for a channel.
const EVENT_INTERVAL: Duration = Duration::from_millis(50);

/// What a download reports, in this order: `Listing`, `Started`, then per file `File`, one or more
/// `Bytes` (the last with `done == total`) and `FileDone`, and finally `Finished`.
/// Files already in the cache report `File`, one `Bytes` and `FileDone` without transferring.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    Listing {
        repo_id: String,
    },
    /// `total_bytes` is `None` when the hub did not list every file's size.
    Started {
        files: usize,
        total_bytes: Option<u64>,
    },
    File {
        name: String,
        index: usize,
        size: u64,
    },
    Bytes {
        name: String,
        done: u64,
        total: u64,
    },
    FileDone {
        name: String,
    },
    Finished {
        snapshot: PathBuf,
    },
}

/// Where and how to download. `None` fields take the standard Hugging Face settings.
#[derive(Clone, Default)]
pub struct HubOptions {
    /// `None`: `HF_ENDPOINT`, else https://huggingface.co.
    pub endpoint: Option<String>,
    /// `None`: `HF_TOKEN` or the token file (see [`cache::hf_token`]).
    pub token: Option<String>,
    /// `None`: the standard hub cache (see [`cache::hub_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// A branch, tag or commit sha; `None` is `main`.
    pub revision: Option<String>,
}

/// Written by hand so that the token never reaches a log through `{:?}`.
impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .field("revision", &self.revision)
            .finish()
    }
}

/// Download what Loft needs of model repo `repo_id` into the hub cache and return its snapshot
/// folder (`<cache>/models--org--name/snapshots/<commit>`). Files already there are not fetched
/// again; a partial file left by an interrupted run is resumed.
///
/// `cancel` is checked between files and while bytes arrive: a cancelled download stops within
/// one read and returns [`ModelError::Cancelled`], keeping the partial file for the next run.
/// (hf-hub offers no way to stop a transfer, so the stop unwinds out of its read loop; in a
/// build with `panic = "abort"` that is impossible and the current file finishes first.)
pub fn download_model(
    repo_id: &str,
    opts: &HubOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    download(repo_id, opts, on_event, cancel, |pinned, listing| {
        pinned.hub.plan(pinned, listing, cancel)
    })
}

/// Download only the small files that describe model repo `repo_id` (config.json, the tokenizer and
/// its chat template; no weights) into the hub cache, and return the snapshot folder. Enough to
/// estimate a run's memory or encode data for a model that is not downloaded: a 70B model's
/// description is a few megabytes. A later full download reuses these files.
pub fn download_config(
    repo_id: &str,
    opts: &HubOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
    cancel: &AtomicBool,
) -> Result<PathBuf> {
    download(repo_id, opts, on_event, cancel, |pinned, listing| {
        let files: Vec<String> = MODEL_FILES
            .iter()
            .filter(|f| listing.siblings.iter().any(|s| s.rfilename == **f))
            .map(|f| f.to_string())
            .collect();
        if !files.iter().any(|f| f == "config.json") {
            return Err(ModelError::Hub(format!(
                "{} has no config.json, so Loft cannot tell what model it is",
                pinned.hub.repo_url()
            )));
        }
        let total_bytes = files
            .iter()
            .map(|f| {
                listing
                    .siblings
                    .iter()
                    .find(|s| s.rfilename == *f)
                    .and_then(|s| s.size)
            })
            .sum();
        Ok(Plan { files, total_bytes })
    })
}

/// List repo `repo_id`, fetch the files `plan` picks from the listing into its snapshot, and record
/// the revision's ref: the one download sequence behind the full and the description-only downloads.
fn download(
    repo_id: &str,
    opts: &HubOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
    cancel: &AtomicBool,
    plan: impl FnOnce(&Pinned, &Listing) -> Result<Plan>,
) -> Result<PathBuf> {
    let hub = Hub::new(repo_id, opts)?;
    check_cancel(cancel)?;
    on_event(DownloadEvent::Listing {
        repo_id: repo_id.to_string(),
    });
    let listing = hub.list()?;
    let pinned = hub.pinned(&listing.sha);
    let fetched =
        plan(&pinned, &listing).and_then(|plan| fetch_all(&pinned, &plan, on_event, cancel));
    // Downloading by sha makes hf-hub write `refs/<sha>`, which the Python client never does and
    // which would show as a ref named like a commit; it goes whether or not the download finished.
    let _ = std::fs::remove_file(hub.repo_dir.join("refs").join(&listing.sha));
    fetched?;
    hub.write_ref(&listing.sha)?;
    on_event(DownloadEvent::Finished {
        snapshot: pinned.snapshot.clone(),
    });
    Ok(pinned.snapshot)
}

fn fetch_all(
    pinned: &Pinned,
    plan: &Plan,
    on_event: &mut dyn FnMut(DownloadEvent),
    cancel: &AtomicBool,
) -> Result<()> {
    on_event(DownloadEvent::Started {
        files: plan.files.len(),
        total_bytes: plan.total_bytes,
    });
    for (index, file) in plan.files.iter().enumerate() {
        check_cancel(cancel)?;
        pinned.fetch(file, index, on_event, cancel)?;
    }
    Ok(())
}

/// The repo listing, as `GET /api/models/{id}/revision/{rev}?blobs=true` answers it.
#[derive(Debug, Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    /// Present when the listing is asked with `blobs=true`.
    #[serde(default)]
    size: Option<u64>,
}

/// Which files to fetch, in order.
#[derive(Debug, PartialEq)]
struct Plan {
    files: Vec<String>,
    total_bytes: Option<u64>,
}

/// What a request was for, to word its errors.
#[derive(Clone, Copy)]
enum What<'a> {
    Listing,
    File(&'a str),
}

/// One download's settings, resolved from `HubOptions` and the environment.
struct Hub {
    repo_id: String,
    revision: String,
    endpoint: String,
    token_sent: bool,
    repo_dir: PathBuf,
    api: Api,
}

/// The repo pinned at the listed commit, so every file comes from the same snapshot even if the
/// branch moves during the download.
struct Pinned<'h> {
    hub: &'h Hub,
    repo: ApiRepo,
    sha: String,
    snapshot: PathBuf,
}

impl Hub {
    fn new(repo_id: &str, opts: &HubOptions) -> Result<Hub> {
        if !cache::is_safe_repo_name(repo_id) {
            return Err(ModelError::Hub(format!(
                "`{repo_id}` is not a Hugging Face repo id (like `HuggingFaceTB/SmolLM2-135M-Instruct`)"
            )));
        }
        let revision = opts.revision.clone().unwrap_or_else(|| "main".to_string());
        if !cache::is_safe_ref(&revision) {
            return Err(ModelError::Hub(format!(
                "`{revision}` is not a branch, tag or commit name"
            )));
        }
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim()
            .trim_end_matches('/')
            .to_string();
        let token = opts
            .token
            .clone()
            .or_else(cache::hf_token)
            .filter(|t| !t.trim().is_empty());
        let cache_dir = opts.cache_dir.clone().unwrap_or_else(cache::hub_cache_dir);
        let api = ApiBuilder::from_cache(Cache::new(cache_dir.clone()))
            .with_endpoint(endpoint.clone())
            .with_token(token.clone())
            .with_progress(false)
            // Retries are ours (see `Pinned::fetch`): hf-hub's resume from the wrong offset when
            // a retry follows an attempt that wrote nothing.
            .with_retries(0)
            .build()
            .map_err(|e| {
                ModelError::Hub(format!("could not set up downloads from {endpoint}: {e}"))
            })?;
        Ok(Hub {
            repo_dir: cache_dir.join(cache::repo_folder_name(repo_id)),
            repo_id: repo_id.to_string(),
            revision,
            endpoint,
            token_sent: token.is_some(),
            api,
        })
    }

    fn list(&self) -> Result<Listing> {
        let repo =
            Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone());
        let response = self
            .api
            .repo(repo)
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| self.request_error(e, What::Listing))?;
        let listing: Listing = response
            .into_json()
            .map_err(|e| self.odd_answer(&e.to_string()))?;
        // The sha becomes a folder name: anything but a commit hash could escape the cache.
        if listing.sha.len() != 40 || !cache::is_hex(&listing.sha) {
            return Err(self.odd_answer(&format!("commit `{}` is not a sha", listing.sha)));
        }
        Ok(listing)
    }

    fn pinned(&self, sha: &str) -> Pinned<'_> {
        let repo = Repo::with_revision(self.repo_id.clone(), RepoType::Model, sha.to_string());
        Pinned {
            hub: self,
            repo: self.api.repo(repo),
            sha: sha.to_string(),
            snapshot: self.repo_dir.join("snapshots").join(sha),
        }
    }

    /// The files to fetch: model files, then weights. A shard index is fetched first (quietly)
    /// because it, not the file list, says which shards make the model — repos like Mistral's
    /// also carry a `consolidated.safetensors` copy that would double the download.
    fn plan(&self, pinned: &Pinned, listing: &Listing, cancel: &AtomicBool) -> Result<Plan> {
        let names: BTreeSet<&str> = listing
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .collect();
        let mut files: Vec<String> = MODEL_FILES
            .iter()
            .filter(|f| names.contains(**f))
            .map(|f| f.to_string())
            .collect();
        let weights = if names.contains(SHARD_INDEX) {
            pinned.fetch(SHARD_INDEX, 0, &mut |_| {}, cancel)?;
            files.push(SHARD_INDEX.to_string());
            self.indexed_shards(&pinned.snapshot.join(SHARD_INDEX), &names)?
        } else {
            safetensors_weights(&names)
        };
        if weights.is_empty() {
            return Err(self.no_weights(&names));
        }
        files.extend(weights);
        let total_bytes = files
            .iter()
            .map(|f| {
                listing
                    .siblings
                    .iter()
                    .find(|s| &s.rfilename == f)
                    .and_then(|s| s.size)
            })
            .sum();
        Ok(Plan { files, total_bytes })
    }

    fn indexed_shards(&self, index: &Path, names: &BTreeSet<&str>) -> Result<Vec<String>> {
        let json = read_json(index)?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::field(index, "weight_map", "is missing or not an object"))?;
        let mut shards = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().filter(|f| is_plain_name(f)).ok_or_else(|| {
                ModelError::field(
                    index,
                    format!("weight_map.{tensor}"),
                    "must be a file name in the repo",
                )
            })?;
            if !names.contains(file) {
                return Err(ModelError::Hub(format!(
                    "{}: the shard index lists `{file}`, which the repo does not have; the repo is incomplete",
                    self.repo_url()
                )));
            }
            shards.insert(file.to_string());
        }
        Ok(shards.into_iter().collect())
    }

    /// The refusal for a repo without safetensors weights: pickle weights get the pickle
    /// explanation; GGUF-only repos are pointed at downloading one .gguf file.
    fn no_weights(&self, names: &BTreeSet<&str>) -> ModelError {
        let ext_of = |n: &str| {
            Path::new(n)
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
        };
        if let Some(ext) = names.iter().find_map(|n| pickle_extension(Path::new(n))) {
            return ModelError::Pickle {
                path: PathBuf::from(self.repo_url()),
                ext,
            };
        }
        if names.iter().any(|n| ext_of(n).as_deref() == Some("gguf")) {
            return ModelError::Hub(format!(
                "{} holds GGUF files only; Loft downloads safetensors repos. Download one .gguf file from the model page and open it as a file",
                self.repo_url()
            ));
        }
        ModelError::Hub(format!(
            "{} has no model weights (no .safetensors files); pick a repo that has them",
            self.repo_url()
        ))
    }

    /// Point `refs/<revision>` at the commit, as the Python hub client does, so that the cache
    /// finds this snapshot by branch or tag name offline. A commit asked for by sha gets no ref.
    fn write_ref(&self, sha: &str) -> Result<()> {
        let by_sha =
            cache::is_hex(&self.revision) && sha.starts_with(&self.revision.to_ascii_lowercase());
        if by_sha {
            return Ok(());
        }
        write_atomic(
            &self.repo_dir.join("refs").join(&self.revision),
            sha.as_bytes(),
        )
    }

    fn repo_url(&self) -> String {
        match self.revision.as_str() {
            "main" => format!("{}/{}", self.endpoint, self.repo_id),
            rev => format!("{}/{}/tree/{rev}", self.endpoint, self.repo_id),
        }
    }

    fn odd_answer(&self, detail: &str) -> ModelError {
        ModelError::Hub(format!(
            "{} sent a repo listing Loft cannot read ({detail}); check that HF_ENDPOINT points at a Hugging Face hub",
            self.endpoint
        ))
    }

    fn describe(&self, what: What) -> String {
        match what {
            What::Listing => format!("the file list of `{}`", self.repo_id),
            What::File(file) => format!("`{file}` of `{}`", self.repo_id),
        }
    }

    fn api_error(&self, err: ApiError, what: What) -> ModelError {
        let endpoint = &self.endpoint;
        match err {
            ApiError::RequestError(e) => self.request_error(*e, what),
            ApiError::TooManyRetries(inner) => self.api_error(*inner, what),
            ApiError::IoError(e) if is_network_io(&e) => ModelError::Hub(format!(
                "the connection to {endpoint} broke while downloading {} ({e}); run again to resume where it stopped",
                self.describe(what)
            )),
            ApiError::IoError(e) => ModelError::io(&self.repo_dir, e),
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => ModelError::Hub(format!(
                "{endpoint} answered {} without a valid `{h}` header; check that HF_ENDPOINT points at a Hugging Face hub",
                self.describe(what)
            )),
            ApiError::InvalidResume => ModelError::Hub(format!(
                "the partial download of {} in {} is longer than the file: delete the .part files there and run again",
                self.describe(what),
                self.repo_dir.join("blobs").display()
            )),
            ApiError::LockAcquisition(lock) => ModelError::Hub(format!(
                "another program is downloading {} (lock file {}); wait for it, or delete the lock file if nothing is",
                self.describe(what),
                lock.display()
            )),
            other => ModelError::Hub(format!("downloading {} from {endpoint} failed: {other}", self.describe(what))),
        }
    }

    fn request_error(&self, err: ureq::Error, what: What) -> ModelError {
        match err {
            ureq::Error::Status(code, response) => {
                ModelError::Hub(self.status_advice(code, response.header("x-error-code"), what))
            }
            ureq::Error::Transport(t) => ModelError::Hub(match t.kind() {
                ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => format!(
                    "`{}` is not a valid http(s) address for the hub; check HF_ENDPOINT or --endpoint",
                    self.endpoint
                ),
                _ => format!(
                    "could not reach {} ({t}): check your network connection, or HF_ENDPOINT if you use a mirror",
                    self.endpoint
                ),
            }),
        }
    }

    /// Plain advice for an HTTP error. The hub's `x-error-code` header is more precise than the
    /// status: it answers 401 for a missing repo too, so as not to reveal private ones.
    fn status_advice(&self, code: u16, hub_code: Option<&str>, what: What) -> String {
        let (endpoint, repo, rev) = (&self.endpoint, &self.repo_id, &self.revision);
        match (code, hub_code, what) {
            (_, Some("RepoNotFound"), _) if !self.token_sent => format!(
                "no repo `{repo}` on {endpoint}: check the spelling (if it is private, set HF_TOKEN or run `huggingface-cli login`)"
            ),
            (_, Some("RepoNotFound"), _) | (404, None, What::Listing) => {
                format!("no repo `{repo}` (or no revision `{rev}`) on {endpoint}: check the spelling")
            }
            (_, Some("RevisionNotFound"), _) => {
                format!("repo `{repo}` has no revision `{rev}` on {endpoint}: check the branch, tag or commit")
            }
            (_, Some("GatedRepo"), _) | (401 | 403, _, _) => self.gated_advice(),
            (404, _, What::File(file)) => {
                format!("{endpoint} lists `{file}` in `{repo}` but does not serve it (HTTP 404); try again later")
            }
            (429, _, _) => format!(
                "{endpoint} is limiting requests (HTTP 429): wait a few minutes and run again; a token (HF_TOKEN) raises the limit"
            ),
            (500..=599, _, _) => format!(
                "{endpoint} answered HTTP {code} for {}: the hub is having trouble; try again later",
                self.describe(what)
            ),
            _ => format!("{endpoint} answered HTTP {code} for {}", self.describe(what)),
        }
    }

    fn gated_advice(&self) -> String {
        let mut advice = format!(
            "repo `{}` is gated or private: accept its licence on {} and set HF_TOKEN (or run `huggingface-cli login`)",
            self.repo_id,
            self.repo_url()
        );
        if self.token_sent {
            advice.push_str(
                "; a token was sent and refused: check that it is valid and belongs to the account that accepted the licence",
            );
        }
        advice
    }
}

impl Pinned<'_> {
    /// Fetch one file into the snapshot (unless it is there already), retrying dropped
    /// connections. Each attempt resumes from the `.part` file the last one left.
    fn fetch(
        &self,
        file: &str,
        index: usize,
        on_event: &mut dyn FnMut(DownloadEvent),
        cancel: &AtomicBool,
    ) -> Result<()> {
        // hf-hub's `CacheRepo::get` looks a commit up through `refs/<revision>`, which does not
        // exist for a commit sha, so the snapshot entry is checked directly. `is_file` follows the
        // symlink: a dangling one (blob deleted) is fetched again.
        let target = self.snapshot.join(file);
        if target.is_file() {
            report_cached(&target, file, index, on_event);
            return Ok(());
        }
        let mut state = FileState::default();
        let mut attempt = 1;
        loop {
            let progress = FileProgress {
                name: file,
                index,
                state: &mut state,
                on_event: &mut *on_event,
                cancel,
            };
            match catch_cancel(|| self.repo.download_with_progress(file, progress))? {
                Ok(path) => break self.check_download(file, &path, state.total)?,
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                    wait_before_retry(attempt, cancel)?;
                    attempt += 1;
                }
                Err(e) => return Err(self.hub.api_error(e, What::File(file))),
            }
        }
        on_event(DownloadEvent::FileDone {
            name: file.to_string(),
        });
        Ok(())
    }

    /// hf-hub trusts the server for the snapshot folder and never checks a file's length; a short
    /// or long file (say, a resume from a wrong offset) is removed rather than loaded later.
    fn check_download(&self, file: &str, path: &Path, expected: u64) -> Result<()> {
        let target = self.snapshot.join(file);
        if path != target {
            return Err(ModelError::Hub(format!(
                "{} served `{file}` from another commit than {} while downloading; run again",
                self.hub.endpoint, self.sha
            )));
        }
        let got = std::fs::metadata(&target)
            .map_err(|e| ModelError::io(&target, e))?
            .len();
        if got == expected {
            return Ok(());
        }
        if let Ok(blob) = std::fs::canonicalize(&target) {
            let _ = std::fs::remove_file(blob);
        }
        let _ = std::fs::remove_file(&target);
        Err(ModelError::Hub(format!(
            "`{file}` from {} arrived with {got} bytes instead of {expected}; it was removed, run again to fetch it anew",
            self.hub.endpoint
        )))
    }
}

fn report_cached(target: &Path, file: &str, index: usize, on_event: &mut dyn FnMut(DownloadEvent)) {
    let size = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
    let name = file.to_string();
    on_event(DownloadEvent::File {
        name: name.clone(),
        index,
        size,
    });
    on_event(DownloadEvent::Bytes {
        name: name.clone(),
        done: size,
        total: size,
    });
    on_event(DownloadEvent::FileDone { name });
}

/// Per-file progress that outlives one attempt, so a retry neither re-announces the file nor
/// loses the expected size.
#[derive(Default)]
struct FileState {
    announced: bool,
    total: u64,
    done: u64,
    reported: Option<(Instant, u64)>,
}

/// The bridge from hf-hub's progress callbacks to `DownloadEvent`s and the cancel flag.
struct FileProgress<'a> {
    name: &'a str,
    index: usize,
    state: &'a mut FileState,
    on_event: &'a mut dyn FnMut(DownloadEvent),
    cancel: &'a AtomicBool,
}

impl FileProgress<'_> {
    fn report(&mut self, now: Instant) {
        self.state.reported = Some((now, self.state.done));
        (self.on_event)(DownloadEvent::Bytes {
            name: self.name.to_string(),
            done: self.state.done,
            total: self.state.total,
        });
    }
}

impl Progress for FileProgress<'_> {
    /// Called at the start of each request, with the whole file's size.
    fn init(&mut self, size: usize, _filename: &str) {
        self.state.total = size as u64;
        self.state.done = 0;
        if !self.state.announced {
            self.state.announced = true;
            (self.on_event)(DownloadEvent::File {
                name: self.name.to_string(),
                index: self.index,
                size: size as u64,
            });
        }
    }

    /// Called with the resume offset first, then with each chunk read.
    fn update(&mut self, size: usize) {
        if self.cancel.load(Ordering::Relaxed) {
            stop_mid_file();
            return;
        }
        self.state.done += size as u64;
        let now = Instant::now();
        let due = match self.state.reported {
            None => true,
            Some((at, _)) => {
                now.duration_since(at) >= EVENT_INTERVAL || self.state.done >= self.state.total
            }
        };
        if due {
            self.report(now);
        }
    }

    fn finish(&mut self) {
        if self.state.reported.map(|(_, done)| done) != Some(self.state.done) {
            self.report(Instant::now());
        }
    }
}

/// The unwinding payload that carries a cancel out of hf-hub's read loop.
struct CancelledMidFile;

#[cfg(panic = "unwind")]
fn stop_mid_file() {
    // `resume_unwind` skips the panic hook: nothing is printed, and `catch_cancel` catches it.
    std::panic::resume_unwind(Box::new(CancelledMidFile))
}

#[cfg(not(panic = "unwind"))]
fn stop_mid_file() {}

/// Run a download, turning a mid-file cancel into `ModelError::Cancelled`. Any other panic goes on.
fn catch_cancel<T>(download: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(download)).map_err(|payload| {
        if payload.is::<CancelledMidFile>() {
            ModelError::Cancelled
        } else {
            std::panic::resume_unwind(payload)
        }
    })
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(ModelError::Cancelled)
    } else {
        Ok(())
    }
}

/// Back off before another attempt (0.5 s, 1 s, 2 s …), staying responsive to cancel.
fn wait_before_retry(attempt: u32, cancel: &AtomicBool) -> Result<()> {
    let until = Instant::now() + FIRST_RETRY_WAIT * 2u32.pow(attempt - 1);
    while Instant::now() < until {
        check_cancel(cancel)?;
        std::thread::sleep(Duration::from_millis(25));
    }
    check_cancel(cancel)
}

/// Worth another attempt: a dropped connection or a hub that is briefly overloaded. Not: a
/// refusal, a missing file, or a local disk problem.
fn is_transient(err: &ApiError) -> bool {
    match err {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::Status(code, _) => matches!(code, 500 | 502 | 503 | 504),
            ureq::Error::Transport(t) => t.kind() == ureq::ErrorKind::Io,
        },
        ApiError::IoError(e) => is_network_io(e),
        _ => false,
    }
}

/// An I/O error from the response body (the connection), as opposed to one from the disk.
fn is_network_io(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | TimedOut | BrokenPipe | Interrupted
    )
}

/// The weights when there is no shard index: `model.safetensors` if present (other top-level
/// safetensors are then variants), else every top-level `.safetensors`. Subfolders (`original/`,
/// `onnx/`) hold other formats of the same model and are skipped.
fn safetensors_weights(names: &BTreeSet<&str>) -> Vec<String> {
    if names.contains("model.safetensors") {
        return vec!["model.safetensors".to_string()];
    }
    names
        .iter()
        .filter(|n| is_plain_name(n) && n.ends_with(".safetensors"))
        .map(|n| n.to_string())
        .collect()
}

/// A top-level file name that cannot leave the snapshot folder.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', ':', '\0'])
}

/// Write via a temporary file and a rename, so a crash never leaves a half-written ref.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let leaf = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{leaf}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(token: Option<&str>, revision: Option<&str>) -> Hub {
        let opts = HubOptions {
            endpoint: Some("http://127.0.0.1:9/".into()),
            token: token.map(str::to_string),
            cache_dir: Some(std::env::temp_dir().join("loft-hub-unit")),
            revision: revision.map(str::to_string),
        };
        Hub::new("org/tiny", &opts).unwrap()
    }

    fn status(code: u16, hub_code: Option<&str>) -> ureq::Error {
        let header = hub_code
            .map(|c| format!("x-error-code: {c}\r\n"))
            .unwrap_or_default();
        let response: ureq::Response = format!("HTTP/1.1 {code} Whatever\r\n{header}\r\n")
            .parse()
            .unwrap();
        ureq::Error::Status(code, response)
    }

    fn message(hub: &Hub, err: ureq::Error, what: What) -> String {
        hub.request_error(err, what).to_string()
    }

    #[test]
    fn endpoint_is_trimmed_and_options_hide_the_token() {
        assert_eq!(hub(None, None).endpoint, "http://127.0.0.1:9");
        let opts = HubOptions {
            token: Some("hf_secret".into()),
            ..HubOptions::default()
        };
        assert!(!format!("{opts:?}").contains("hf_secret"));
    }

    #[test]
    fn bad_repo_ids_and_revisions_are_refused_before_any_request() {
        let opts = HubOptions::default();
        let cancel = AtomicBool::new(false);
        for bad in ["../x", "a/b/c", "", "org/na me"] {
            let err = download_model(bad, &opts, &mut |_| {}, &cancel).unwrap_err();
            assert!(
                err.to_string().contains("not a Hugging Face repo id"),
                "{bad}: {err}"
            );
        }
        let opts = HubOptions {
            revision: Some("../../etc".into()),
            ..HubOptions::default()
        };
        let err = download_model("org/x", &opts, &mut |_| {}, &cancel).unwrap_err();
        assert!(err.to_string().contains("not a branch"), "{err}");
    }

    #[test]
    fn http_errors_become_advice() {
        let anon = hub(None, None);
        let msg = message(
            &anon,
            status(401, Some("GatedRepo")),
            What::File("config.json"),
        );
        assert!(
            msg.contains("gated or private") && msg.contains("HF_TOKEN"),
            "{msg}"
        );
        let msg = message(&anon, status(403, None), What::File("config.json"));
        assert!(msg.contains("accept its licence"), "{msg}");
        let msg = message(&hub(Some("t"), None), status(403, None), What::File("x"));
        assert!(msg.contains("token was sent and refused"), "{msg}");
        // The hub answers 401 for a repo that does not exist, to hide private ones.
        let msg = message(&anon, status(401, Some("RepoNotFound")), What::Listing);
        assert!(
            msg.contains("no repo `org/tiny`") && msg.contains("if it is private"),
            "{msg}"
        );
        let msg = message(&hub(None, Some("dev")), status(404, None), What::Listing);
        assert!(
            msg.contains("(or no revision `dev`)") && msg.contains("check the spelling"),
            "{msg}"
        );
        let msg = message(&anon, status(404, Some("RevisionNotFound")), What::Listing);
        assert!(msg.contains("has no revision `main`"), "{msg}");
        let msg = message(&anon, status(503, None), What::Listing);
        assert!(
            msg.contains("HTTP 503") && msg.contains("try again later"),
            "{msg}"
        );
        let msg = message(&anon, status(418, None), What::File("config.json"));
        assert!(
            msg.contains("HTTP 418") && msg.contains("http://127.0.0.1:9"),
            "{msg}"
        );
    }

    #[test]
    fn transient_errors_are_told_from_final_ones() {
        let req = |e: ureq::Error| ApiError::RequestError(Box::new(e));
        assert!(is_transient(&req(status(503, None))));
        assert!(!is_transient(&req(status(401, None))));
        assert!(!is_transient(&req(status(404, None))));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed early");
        assert!(is_transient(&ApiError::IoError(eof)));
        let disk = std::io::Error::other("disk full");
        assert!(!is_transient(&ApiError::IoError(disk)));
    }

    #[test]
    fn weights_prefer_model_safetensors_and_skip_subfolders() {
        let names = |list: &[&'static str]| list.iter().copied().collect::<BTreeSet<&str>>();
        let only = names(&[
            "model.safetensors",
            "model.fp16.safetensors",
            "original/consolidated.safetensors",
        ]);
        assert_eq!(safetensors_weights(&only), vec!["model.safetensors"]);
        let many = names(&[
            "a.safetensors",
            "b.safetensors",
            "onnx/model.safetensors",
            "pytorch_model.bin",
        ]);
        assert_eq!(
            safetensors_weights(&many),
            vec!["a.safetensors", "b.safetensors"]
        );
        assert!(safetensors_weights(&names(&["pytorch_model.bin"])).is_empty());
    }

    #[test]
    fn progress_reports_are_rate_limited_but_always_end_complete() {
        let mut events = Vec::new();
        let mut state = FileState::default();
        let cancel = AtomicBool::new(false);
        let mut progress = FileProgress {
            name: "w",
            index: 2,
            state: &mut state,
            on_event: &mut |e| events.push(e),
            cancel: &cancel,
        };
        progress.init(1000, "w");
        progress.init(1000, "w");
        progress.update(0);
        for _ in 0..99 {
            progress.update(10);
        }
        progress.update(10);
        progress.finish();
        let bytes: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                DownloadEvent::Bytes { done, .. } => Some(*done),
                _ => None,
            })
            .collect();
        assert_eq!(
            events[0],
            DownloadEvent::File {
                name: "w".into(),
                index: 2,
                size: 1000
            }
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, DownloadEvent::File { .. }))
                .count(),
            1
        );
        assert_eq!(bytes.first(), Some(&0));
        assert_eq!(bytes.last(), Some(&1000));
        assert!(bytes.len() <= 3, "{bytes:?}");
    }

    #[test]
    fn cancel_inside_a_read_unwinds_to_cancelled() {
        let cancel = AtomicBool::new(true);
        let mut state = FileState::default();
        let result = catch_cancel(|| {
            let mut progress = FileProgress {
                name: "w",
                index: 0,
                state: &mut state,
                on_event: &mut |_| {},
                cancel: &cancel,
            };
            progress.update(10);
        });
        assert!(matches!(result, Err(ModelError::Cancelled)));
    }
}
