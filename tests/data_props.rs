//! Property tests for the dataset readers: arbitrary bytes never panic and always give a consistent
//! report; well-formed data reads back exactly as written, whatever its layout.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use loft::engine::data::{split_indices, validate_reader, SplitSpec, ValidateOptions, Validated};
use proptest::prelude::*;

fn run(bytes: &[u8], name: &str) -> Option<Validated> {
    let cancel = AtomicBool::new(false);
    let options = ValidateOptions {
        max_record_bytes: 4096,
        ..ValidateOptions::default()
    };
    validate_reader(
        Cursor::new(bytes),
        Path::new(name),
        Some(bytes.len() as u64),
        &options,
        &mut |_| {},
        &cancel,
    )
    .ok()
}

/// Every record is usable, an error row, or a removed duplicate — never lost, never counted twice.
fn consistent(v: &Validated) {
    let r = &v.report;
    assert_eq!(
        r.rows,
        r.usable_rows + r.error_rows + r.stats.duplicates_removed,
        "rows {} usable {} errors {} duplicates {}: {:#?}",
        r.rows,
        r.usable_rows,
        r.error_rows,
        r.stats.duplicates_removed,
        r.errors
    );
    assert_eq!(v.dataset.len(), r.usable_rows);
    assert_eq!(
        r.is_usable(),
        r.error_counts.is_empty() && r.usable_rows > 0
    );
    assert!(r.errors.len() <= r.error_count());
    for e in &r.errors {
        assert!(!e.message.is_empty());
        if let Some(c) = e.column {
            assert!(c >= 1);
        }
    }
}

/// Bytes that look like JSON often enough to reach deep into the scanner and the parser.
fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "\"",
        "\\",
        "\\\"",
        " ",
        "\n",
        "\r\n",
        "\"messages\"",
        "\"role\"",
        "\"content\"",
        "\"user\"",
        "\"assistant\"",
        "\"instruction\"",
        "\"output\"",
        "\"conversations\"",
        "\"from\"",
        "\"value\"",
        "\"gpt\"",
        "\"human\"",
        "null",
        "true",
        "1.5e3",
        "NaN",
        "é",
        "\u{feff}",
        "\u{7}",
        "\u{fffd}",
    ]);
    prop::collection::vec(pieces, 0..200).prop_map(|v| v.concat().into_bytes())
}

fn text() -> impl Strategy<Value = String> {
    // Any characters, including quotes, backslashes, control characters and non-BMP ones.
    prop::collection::vec(any::<char>(), 1..40).prop_map(|v| v.into_iter().collect::<String>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        for name in ["data.jsonl", "data.json"] {
            if let Some(v) = run(&bytes, name) {
                consistent(&v);
            }
        }
    }

    #[test]
    fn json_like_soup_never_panics(bytes in json_soup(), array in any::<bool>()) {
        let mut bytes = bytes;
        if array {
            bytes.insert(0, b'[');
        }
        for name in ["data.jsonl", "data.json"] {
            if let Some(v) = run(&bytes, name) {
                consistent(&v);
            }
        }
    }

    #[test]
    fn conversations_read_back_as_written(
        rows in prop::collection::vec(prop::collection::vec((text(), text()), 1..4), 1..12),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        pretty in any::<bool>(),
    ) {
        let records: Vec<serde_json::Value> = rows
            .iter()
            .map(|turns| {
                let messages: Vec<serde_json::Value> = turns
                    .iter()
                    .flat_map(|(u, a)| {
                        [
                            serde_json::json!({"role": "user", "content": u}),
                            serde_json::json!({"role": "assistant", "content": a}),
                        ]
                    })
                    .collect();
                serde_json::json!({ "messages": messages })
            })
            .collect();
        let newline = if crlf { "\r\n" } else { "\n" };
        let prefix = if bom { "\u{feff}" } else { "" };
        let jsonl: String = records.iter().map(|r| format!("{r}{newline}")).collect();
        let array = if pretty {
            serde_json::to_string_pretty(&records).unwrap().replace('\n', newline)
        } else {
            serde_json::to_string(&records).unwrap()
        };
        for (name, body) in [("data.jsonl", jsonl), ("data.json", array)] {
            let options = ValidateOptions { keep_duplicates: true, ..ValidateOptions::default() };
            let cancel = AtomicBool::new(false);
            let bytes = format!("{prefix}{body}").into_bytes();
            let v = validate_reader(Cursor::new(&bytes), Path::new(name), None, &options, &mut |_| {}, &cancel).unwrap();
            consistent(&v);
            // Whitespace-only answers are errors; everything else must come back exactly.
            let expected: Vec<&Vec<(String, String)>> = rows
                .iter()
                .filter(|turns| turns.iter().all(|(_, a)| !a.trim().is_empty()))
                .collect();
            prop_assert_eq!(v.dataset.len(), expected.len(), "{}: {:#?}", name, v.report.errors);
            for (conversation, turns) in v.dataset.conversations.iter().zip(expected) {
                let got: Vec<(&str, &str)> = conversation.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
                let want: Vec<(&str, &str)> = turns.iter().flat_map(|(u, a)| [("user", u.as_str()), ("assistant", a.as_str())]).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn splits_are_disjoint_complete_and_seeded(n in 2usize..500, fraction in 0.01f64..0.99, seed in any::<u64>()) {
        let spec = SplitSpec::Fraction(fraction);
        let Ok((train, eval)) = split_indices(n, &spec, seed) else {
            // Only refused when nothing would be left to train on.
            prop_assert!((n as f64 * fraction).round() as usize >= n);
            return Ok(());
        };
        prop_assert!(!train.is_empty() && !eval.is_empty());
        let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
        prop_assert_eq!(split_indices(n, &spec, seed).unwrap(), (train, eval));
    }
}
