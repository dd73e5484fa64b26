//! Dataset benchmark: generate N chat rows (100k by default) as JSON Lines, then validate and encode them
//! with SmolLM2-135M-Instruct's tokenizer and chat template. Prints rows/s, tokens and peak memory; then
//! validates one record of 700 000 keys (13 MB, the worst case for the duplicate-key check).
//!
//! ```sh
//! cargo bench --bench data                                   # 100k rows
//! cargo bench --bench data -- --rows 20000 --out rows.jsonl  # keep the file for scripts/bench_data_reference.py
//! ```
//! Figures, not assertions: nothing here fails on a slow machine.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use loft::engine::chat::ChatTemplate;
use loft::engine::data::{encode_dataset, validate_file, EncodeOptions, ValidateOptions};

const WORDS: &[&str] = &[
    "the",
    "order",
    "coffee",
    "please",
    "shipping",
    "account",
    "refund",
    "grinder",
    "subscription",
    "thanks",
    "when",
    "will",
    "my",
    "package",
    "arrive",
    "how",
    "do",
    "I",
    "change",
    "address",
    "payment",
    "card",
    "delivery",
    "week",
    "roast",
    "beans",
    "ground",
    "espresso",
    "kettle",
    "warranty",
    "return",
    "label",
    "email",
    "support",
    "team",
    "help",
    "you",
    "can",
    "we",
    "is",
    "are",
    "was",
    "a",
    "to",
    "of",
    "and",
    "in",
    "for",
    "on",
    "with",
    "that",
    "it",
    "this",
    "your",
    "from",
    "by",
    "at",
    "be",
    "or",
    "an",
    "not",
    "have",
    "has",
    "all",
    "one",
    "days",
    "business",
    "tracking",
    "number",
    "click",
    "page",
    "settings",
    "pause",
    "skip",
    "cancel",
    "fresh",
    "bag",
    "grams",
    "water",
    "temperature",
    "brew",
    "filter",
    "pour-over",
    "French",
    "press",
    "cold",
    "taste",
    "bitter",
    "sour",
    "sweet",
    "chocolate",
    "fruit",
    "light",
    "dark",
    "medium",
    "decaf",
    "organic",
    "farm",
    "Ethiopia",
    "Colombia",
    "Brazil",
    "Kenya",
    "Guatemala",
    "price",
    "discount",
    "code",
    "gift",
    "card",
    "balance",
    "password",
    "reset",
    "link",
    "sign",
    "profile",
    "hours",
    "Monday",
    "Friday",
    "Portland",
    "store",
    "visit",
    "wholesale",
    "office",
    "plan",
    "pounds",
    "ratio",
    "grind",
    "size",
    "coarse",
    "fine",
    "burr",
    "clean",
    "brush",
    "minutes",
    "seconds",
    "sorry",
    "great",
    "happy",
    "sure",
    "course",
];
const SYSTEMS: &[&str] = &[
    "You are a helpful customer support assistant.",
    "You are the support assistant of a coffee roaster. Be warm and brief.",
    "Answer customer questions clearly, in at most three sentences.",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.range(0, WORDS.len() - 1)]);
        if rng.range(0, 11) == 0 {
            s.push(if rng.range(0, 1) == 0 { ',' } else { '.' });
        }
    }
    s.push('.');
    s
}

/// Write `rows` chat rows: 0–1 system message, 1–3 exchanges, ~1% exact duplicates.
fn generate(path: &Path, rows: usize) -> std::io::Result<u64> {
    let mut rng = Rng(2024);
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut last = String::new();
    for i in 0..rows {
        if i > 0 && rng.range(0, 99) == 0 {
            out.write_all(last.as_bytes())?;
            continue;
        }
        let mut messages = Vec::new();
        if rng.range(0, 9) < 4 {
            messages.push(serde_json::json!({"role": "system", "content": SYSTEMS[rng.range(0, SYSTEMS.len() - 1)]}));
        }
        for _ in 0..rng.range(1, 3) {
            let q = rng.range(5, 40);
            let a = rng.range(10, 120);
            messages.push(serde_json::json!({"role": "user", "content": format!("{} (ticket {i})", sentence(&mut rng, q))}));
            messages
                .push(serde_json::json!({"role": "assistant", "content": sentence(&mut rng, a)}));
        }
        last = format!("{}\n", serde_json::json!({ "messages": messages }));
        out.write_all(last.as_bytes())?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    loft::engine::sysmem::peak_resident().map_or(f64::NAN, |b| b as f64 / (1u64 << 20) as f64)
}

/// Reset the peak to the current RSS (Linux only), so each phase reports its own peak; elsewhere a
/// phase reports the peak of the process so far.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let mut rows = 100_000usize;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows = args.next().and_then(|v| v.parse().ok()).expect("--rows N"),
            "--out" => out = args.next().map(PathBuf::from),
            _ => {} // cargo bench passes --bench
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = out.unwrap_or_else(|| tmp.path().join("chat.jsonl"));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("smollm2");
    let tokenizer = loft::engine::tokenizer::load_tokenizer_json(&fixtures.join("tokenizer.json"))
        .expect("tokenizer");
    let template = ChatTemplate::from_model_files(
        Some(&fixtures.join("tokenizer_config.json")),
        Some(&fixtures.join("chat_template.jinja")),
    )
    .expect("template");

    let t = Instant::now();
    let bytes = generate(&path, rows).expect("write rows");
    println!(
        "generated {rows} chat rows, {:.1} MB, in {:.2} s → {}",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        path.display()
    );
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("threads: {threads} (encoding runs on all; reading and validation on one)");
    let cancel = AtomicBool::new(false);

    // 1. Validation only (the memory-bounded path: conversations are not kept).
    reset_peak();
    let base = peak_rss_mib();
    let t = Instant::now();
    let options = ValidateOptions {
        keep_conversations: false,
        ..ValidateOptions::default()
    };
    let v = validate_file(&path, &options, &mut |_| {}, &cancel).expect("validate");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "validate (streaming):  {:>8.2} s  {:>9.0} rows/s  {:>6.1} MB/s  peak RSS {:.0} MiB (+{:.0} over the {:.0} MiB before)  [{} usable, {} duplicates removed, {} errors, {} warnings]",
        secs,
        rows as f64 / secs,
        bytes as f64 / 1e6 / secs,
        peak_rss_mib(),
        peak_rss_mib() - base,
        base,
        v.report.usable_rows,
        v.report.stats.duplicates_removed,
        v.report.error_count(),
        v.report.warning_count()
    );

    // 2. Validation keeping the conversations, then encoding.
    reset_peak();
    let t = Instant::now();
    let v =
        validate_file(&path, &ValidateOptions::default(), &mut |_| {}, &cancel).expect("validate");
    let read_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let options = EncodeOptions {
        max_seq_len: 2048,
        ..EncodeOptions::default()
    };
    let encoded = encode_dataset(
        &v.dataset,
        &tokenizer,
        &template,
        &options,
        &mut |_| {},
        &cancel,
    )
    .expect("encode");
    let encode_secs = t.elapsed().as_secs_f64();
    let s = &encoded.summary;
    println!(
        "validate (keep rows):  {:>8.2} s  {:>9.0} rows/s",
        read_secs,
        rows as f64 / read_secs
    );
    println!(
        "encode:                {:>8.2} s  {:>9.0} rows/s  {:>9.0} tokens/s  [{} examples, {} tokens, {} trained, {} over 2048]",
        encode_secs,
        v.dataset.len() as f64 / encode_secs,
        s.tokens as f64 / encode_secs,
        s.encoded_rows,
        s.tokens,
        s.trained_tokens,
        s.over_max_seq_len
    );
    println!(
        "validate + encode:     {:>8.2} s  {:>9.0} rows/s  peak RSS {:.0} MiB",
        read_secs + encode_secs,
        rows as f64 / (read_secs + encode_secs),
        peak_rss_mib()
    );
    println!(
        "padding at batch size {}: {:.1}% grouped by length, {:.1}% in random order",
        s.batch_size,
        100.0 * s.padding_waste.unwrap_or(0.0),
        100.0 * s.padding_waste_random_order.unwrap_or(0.0)
    );

    // 3. One record whose object has very many keys (each checked for repeats).
    let keys = 700_000;
    let wide = tmp.path().join("wide.jsonl");
    let mut fields = String::new();
    for i in 0..keys {
        fields.push_str(&format!("\"k{i}\": {i}, "));
    }
    let line = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}, {{\"role\": \"assistant\", \"content\": \"hello\"}}], {fields}\"k1\": 0}}\n"
    );
    std::fs::write(&wide, &line).expect("write wide record");
    let t = Instant::now();
    let v =
        validate_file(&wide, &ValidateOptions::default(), &mut |_| {}, &cancel).expect("validate");
    println!(
        "one record of {keys} keys ({:.1} MB): validated in {:.2} s [{} warnings]",
        line.len() as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        v.report.warning_count()
    );
}
