//! The bad-file corpus: every kind of broken dataset gets the right error or warning, at the right
//! place, without a panic or a hang. Files are generated here (the 5 MB line too), not committed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use loft::engine::data::{
    validate_file, DataError, ErrorKind, Format, Layout, RowError, RowNumbering, ValidateOptions,
    Validated, Warning, WarningKind,
};

struct Case {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write(name: &str, bytes: &[u8]) -> Case {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write case");
    Case { _dir: dir, path }
}

fn run_with(path: &Path, options: &ValidateOptions) -> Result<Validated, DataError> {
    let cancel = AtomicBool::new(false);
    validate_file(path, options, &mut |_| {}, &cancel)
}

fn validate(name: &str, bytes: &[u8]) -> Validated {
    let case = write(name, bytes);
    run_with(&case.path, &ValidateOptions::default())
        .unwrap_or_else(|e| panic!("{name}: unexpected fatal error: {e}"))
}

fn fatal(name: &str, bytes: &[u8]) -> DataError {
    let case = write(name, bytes);
    match run_with(&case.path, &ValidateOptions::default()) {
        Ok(v) => panic!(
            "{name}: expected a fatal error, got a report: {:#?}",
            v.report.errors
        ),
        Err(e) => e,
    }
}

/// The only error of a report, checked for kind.
fn only_error(v: &Validated, kind: ErrorKind) -> RowError {
    let errors = &v.report.errors;
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}"
    );
    assert_eq!(errors[0].kind, kind, "{errors:#?}");
    assert!(!v.report.is_usable());
    errors[0].clone()
}

fn errors_of(v: &Validated, kind: ErrorKind) -> Vec<RowError> {
    v.report
        .errors
        .iter()
        .filter(|e| e.kind == kind)
        .cloned()
        .collect()
}

fn warnings_of(v: &Validated, kind: WarningKind) -> Vec<Warning> {
    v.report
        .warnings
        .iter()
        .filter(|w| w.kind == kind)
        .cloned()
        .collect()
}

const CHAT: &str = r#"{"messages": [{"role": "user", "content": "How do I reset my password?"}, {"role": "assistant", "content": "Click Forgot password on the sign-in page."}]}"#;

fn chat(user: &str, assistant: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})
        .to_string()
}

/// `n` distinct valid chat lines.
fn chat_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            chat(
                &format!("Question number {i} about topic {}", i * 7),
                &format!("Answer {i}: here is what to do, step {}.", i * 3),
            ) + "\n"
        })
        .collect()
}

// ---------------------------------------------------------------- files that cannot be read at all

#[test]
fn missing_file_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_with(&dir.path().join("nope.jsonl"), &ValidateOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
}

#[test]
fn a_folder_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_with(dir.path(), &ValidateOptions::default()).unwrap_err();
    assert!(err.to_string().contains("folder"), "{err}");
}

#[test]
fn binary_file_is_fatal_with_the_offset() {
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.extend([0u8; 64]);
    let err = fatal("data.jsonl", &bytes);
    assert_eq!(err.offset(), Some(7));
    assert!(err.to_string().contains("binary"), "{err}");
}

#[test]
fn random_bytes_without_nul_are_binary() {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    let err = fatal("data.jsonl", &bytes);
    assert!(err.to_string().contains("binary"), "{err}");
}

#[test]
fn png_parquet_gzip_and_csv_are_named() {
    assert!(fatal("x.json", b"\x89PNG\r\n\x1a\n....")
        .to_string()
        .contains("PNG"));
    assert!(fatal("x.jsonl", b"PAR1\x15\x04")
        .to_string()
        .contains("Parquet"));
    assert!(fatal("x.jsonl", b"\x1f\x8b\x08\x00")
        .to_string()
        .contains("gzip"));
    let csv = fatal("x.csv", b"instruction,output\nhi,hello\n").to_string();
    assert!(csv.contains("CSV") && csv.contains("read_csv"), "{csv}");
}

#[test]
fn utf16_is_fatal_with_advice() {
    let text = format!("{CHAT}\n");
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    let err = fatal("data.jsonl", &bytes);
    assert!(err.to_string().contains("UTF-16"), "{err}");
    // Without a BOM too.
    let err = fatal("data.jsonl", &bytes[2..]);
    assert!(err.to_string().contains("UTF-16"), "{err}");
}

// ---------------------------------------------------------------- empty files

#[test]
fn empty_file() {
    let v = validate("data.jsonl", b"");
    let e = only_error(&v, ErrorKind::Empty);
    assert_eq!(e.row, None);
    assert!(e.message.contains("0 bytes"), "{}", e.message);
    assert_eq!(v.report.rows, 0);
}

#[test]
fn whitespace_only() {
    let v = validate("data.json", b"  \n\t\r\n   \n");
    let e = only_error(&v, ErrorKind::Empty);
    assert!(e.message.contains("only whitespace"), "{}", e.message);
}

#[test]
fn bom_only() {
    let v = validate("data.jsonl", b"\xEF\xBB\xBF");
    let e = only_error(&v, ErrorKind::Empty);
    assert!(e.message.contains("byte-order mark"), "{}", e.message);
}

#[test]
fn empty_array() {
    let v = validate("data.json", b"[ ]\n");
    only_error(&v, ErrorKind::Empty);
    assert_eq!(v.report.layout, Some(Layout::Json));
}

// ---------------------------------------------------------------- invalid JSON, with line and column

#[test]
fn truncated_jsonl_line() {
    let text = format!("{CHAT}\n{}", &CHAT[..60]);
    let v = validate("data.jsonl", text.as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!((e.row, e.line), (Some(2), Some(2)));
    assert_eq!(e.column, Some(61));
    assert!(e.message.contains("ends before"), "{}", e.message);
    assert_eq!(v.report.usable_rows, 1);
}

#[test]
fn truncated_json_array_inside_a_record() {
    let text = format!("[\n  {CHAT},\n  {}", &CHAT[..50]);
    let v = validate("data.json", text.as_bytes());
    let e = only_error(&v, ErrorKind::Truncated);
    assert_eq!((e.row, e.line, e.column), (Some(1), Some(3), Some(3)));
    assert_eq!(v.report.numbering, RowNumbering::Index);
    assert_eq!(v.report.usable_rows, 1);
}

#[test]
fn json_array_without_closing_bracket() {
    let text = format!("[\n{CHAT},\n{CHAT}\n");
    let v = validate("data.json", text.as_bytes());
    let e = only_error(&v, ErrorKind::Truncated);
    assert_eq!(e.row, None);
    assert_eq!(e.line, Some(4));
    // Two identical rows were still read.
    assert_eq!(v.report.rows, 2);
}

#[test]
fn trailing_garbage_after_the_array() {
    let text = format!("[{CHAT}]\n\nthis is not JSON\n");
    let v = validate("data.json", text.as_bytes());
    let e = only_error(&v, ErrorKind::TrailingContent);
    assert_eq!((e.line, e.column), (Some(3), Some(1)));
}

#[test]
fn trailing_garbage_on_a_line() {
    let text = format!("{CHAT} extra\n");
    let v = validate("data.jsonl", text.as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!(
        (e.row, e.column),
        (Some(1), Some(CHAT.chars().count() as u64 + 2))
    );
    assert!(e.message.contains("trailing characters"), "{}", e.message);
}

#[test]
fn nan_and_infinity_are_errors_with_a_location() {
    let text = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"score\": NaN}\n{\"a\": -Infinity}\n";
    let v = validate("data.jsonl", text.as_bytes());
    let errors = errors_of(&v, ErrorKind::InvalidJson);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!((errors[0].row, errors[0].column), (Some(1), Some(59)));
    assert!(errors[0].message.contains("NaN"), "{}", errors[0].message);
    assert_eq!((errors[1].row, errors[1].column), (Some(2), Some(7)));
}

#[test]
fn missing_comma_between_array_records_points_at_the_second() {
    let text = format!("[\n{CHAT}\n{CHAT},\n{CHAT}\n]");
    let v = validate("data.json", text.as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!((e.row, e.line, e.column), (Some(0), Some(3), Some(1)));
    // Reading went on: the record after it was read.
    assert_eq!(v.report.rows, 2);
}

#[test]
fn trailing_comma_in_the_array() {
    let text = format!("[{CHAT},\n]");
    let v = validate("data.json", text.as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!((e.row, e.line, e.column), (None, Some(2), Some(1)));
    assert!(e.message.contains("trailing comma"), "{}", e.message);
}

#[test]
fn python_dict_syntax_gets_a_hint() {
    let v = validate("data.jsonl", b"{'instruction': 'hi', 'output': 'hello'}\n");
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!(e.column, Some(2));
    assert!(e.message.contains("double quotes"), "{}", e.message);
}

#[test]
fn raw_tab_inside_a_string() {
    let v = validate(
        "data.jsonl",
        b"{\"instruction\": \"a\tb\", \"output\": \"c\"}\n",
    );
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!(e.column, Some(19));
    assert!(e.message.contains("control character"), "{}", e.message);
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes; the error is the 12th character.
    let v = validate("data.jsonl", "{\"a\": \"éé\" x}\n".as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!(e.column, Some(12));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        "{{\"messages\": {}{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let v = validate("data.jsonl", deep.as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert!(
        e.message.contains("recursion limit") && e.message.contains("128"),
        "{}",
        e.message
    );
    // And inside a .json array.
    let deep = format!(
        "[{{\"messages\": {}{}}}]",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let v = validate("data.json", deep.as_bytes());
    only_error(&v, ErrorKind::InvalidJson);
    // Unclosed nesting: the file is simply cut off.
    let v = validate("data.json", "[".repeat(200_000).as_bytes());
    only_error(&v, ErrorKind::Truncated);
}

#[test]
fn too_many_syntax_errors_in_an_array_stop_reading() {
    let text = format!("[{}]", vec!["{\"a\": }"; 30].join(","));
    let v = validate("data.json", text.as_bytes());
    assert_eq!(errors_of(&v, ErrorKind::InvalidJson).len(), 10);
    assert_eq!(errors_of(&v, ErrorKind::TooManyErrors).len(), 1);
}

// ---------------------------------------------------------------- encodings

#[test]
fn invalid_utf8_in_a_line_gives_the_byte_offset() {
    let mut bytes = format!("{CHAT}\n").into_bytes();
    let line2_start = bytes.len();
    bytes.extend(b"{\"instruction\": \"caf");
    let bad = bytes.len();
    bytes.push(0xE9); // Latin-1 é
    bytes.extend(b"\", \"output\": \"ok\"}\n");
    let v = validate("data.jsonl", &bytes);
    let e = only_error(&v, ErrorKind::InvalidUtf8);
    assert_eq!(e.offset, Some(bad as u64));
    assert_eq!(
        (e.row, e.line, e.column),
        (Some(2), Some(2), Some((bad - line2_start + 1) as u64))
    );
    assert!(
        e.message.contains(&bad.to_string()) && e.message.contains("0xE9"),
        "{}",
        e.message
    );
}

#[test]
fn invalid_utf8_in_a_json_array_gives_the_byte_offset() {
    let mut bytes = format!("[\n{CHAT},\n").into_bytes();
    bytes.extend(b"{\"instruction\": \"na");
    let bad = bytes.len();
    bytes.extend([0xC3, 0x28]); // a broken two-byte sequence
    bytes.extend(b"ve\", \"output\": \"ok\"}\n]");
    let v = validate("data.json", &bytes);
    let e = only_error(&v, ErrorKind::InvalidUtf8);
    assert_eq!(
        (e.row, e.line, e.offset),
        (Some(1), Some(3), Some(bad as u64))
    );
}

#[test]
fn bom_and_crlf_are_fine() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(chat_lines(3).replace('\n', "\r\n").as_bytes());
    let v = validate("data.jsonl", &bytes);
    assert!(v.report.errors.is_empty(), "{:#?}", v.report.errors);
    assert_eq!((v.report.rows, v.report.usable_rows), (3, 3));
    assert!(!v.dataset.conversations[2].messages[1]
        .content
        .ends_with('\r'));
    // The same as a pretty-printed .json array with CRLF.
    let rows: Vec<serde_json::Value> = chat_lines(3)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(
        serde_json::to_string_pretty(&rows)
            .unwrap()
            .replace('\n', "\r\n")
            .as_bytes(),
    );
    let v = validate("data.json", &bytes);
    assert!(v.report.errors.is_empty(), "{:#?}", v.report.errors);
    assert_eq!((v.report.rows, v.report.usable_rows), (3, 3));
    assert_eq!(v.dataset.conversations[1].row, 1);
    assert_eq!(v.dataset.conversations[1].line, 14);
}

#[test]
fn a_bom_in_the_middle_of_the_file_is_explained() {
    let text = format!("{CHAT}\n\u{feff}{CHAT}\n");
    let v = validate("data.jsonl", text.as_bytes());
    let e = only_error(&v, ErrorKind::InvalidJson);
    assert_eq!((e.row, e.column), (Some(2), Some(1)));
    assert!(e.message.contains("byte-order mark"), "{}", e.message);
}

#[test]
fn blank_lines_are_skipped_and_rows_keep_their_line_numbers() {
    let text = format!(
        "\n{}\n\n{}",
        chat("a question", "an answer"),
        chat("b question", "b answer")
    );
    let v = validate("data.jsonl", text.as_bytes());
    assert!(v.report.errors.is_empty());
    let rows: Vec<usize> = v.dataset.conversations.iter().map(|c| c.row).collect();
    assert_eq!(rows, [2, 4]);
}

// ---------------------------------------------------------------- shapes and types

#[test]
fn a_json_file_with_a_scalar_at_the_top() {
    let v = validate("data.json", b"\"just a string\"\n");
    let e = only_error(&v, ErrorKind::TopLevelShape);
    assert!(
        e.message.contains("a string") && e.message.contains("array of records"),
        "{}",
        e.message
    );
}

#[test]
fn a_pretty_printed_object_is_not_json_lines() {
    let v = validate(
        "data.jsonl",
        b"{\n  \"messages\": []\n}\n{\n  \"messages\": []\n}\n",
    );
    let e = only_error(&v, ErrorKind::TopLevelShape);
    assert!(
        e.message.contains("several lines") && e.message.contains("jq -c"),
        "{}",
        e.message
    );
}

#[test]
fn records_wrapped_in_an_object_get_a_hint() {
    let v = validate("data.json", format!("{{\"data\": [{CHAT}]}}").as_bytes());
    let e = only_error(&v, ErrorKind::UnknownFormat);
    assert!(e.message.contains("inside `data`"), "{}", e.message);
}

#[test]
fn records_that_are_not_objects() {
    let v = validate("data.json", b"[1, \"two\", null, [3]]");
    let errors = errors_of(&v, ErrorKind::RecordShape);
    let rows: Vec<Option<usize>> = errors.iter().map(|e| e.row).collect();
    assert_eq!(rows, [Some(0), Some(1), Some(2), Some(3)]);
    assert!(errors[1].message.contains("a string"));
    let v = validate("data.jsonl", format!("{CHAT}\n[1, 2]\n").as_bytes());
    assert_eq!(only_error(&v, ErrorKind::RecordShape).row, Some(2));
}

#[test]
fn missing_and_wrongly_typed_fields() {
    let text = [
        r#"{"instruction": "Say hi"}"#,
        r#"{"instruction": 5, "output": "x"}"#,
        r#"{"instruction": "a", "input": ["b"], "output": "c"}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let got: Vec<(ErrorKind, Option<usize>, Option<String>)> = v
        .report
        .errors
        .iter()
        .map(|e| (e.kind, e.row, e.field.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (ErrorKind::MissingField, Some(1), Some("output".into())),
            (ErrorKind::WrongType, Some(2), Some("instruction".into())),
            (ErrorKind::WrongType, Some(3), Some("input".into())),
        ]
    );
    assert_eq!(v.report.usable_rows, 0);
}

#[test]
fn wrong_types_in_chat_records() {
    let text = [
        r#"{"messages": "hello"}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 42}]}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}]}"#,
        r#"{"messages": [{"role": ["user"], "content": "hi"}, "not a message"]}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let got: Vec<(Option<usize>, Option<String>)> = errors_of(&v, ErrorKind::WrongType)
        .iter()
        .map(|e| (e.row, e.field.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(1), Some("messages".into())),
            (Some(2), Some("messages[1].content".into())),
            (Some(3), Some("messages[1].content".into())),
            (Some(4), Some("messages[0].role".into())),
            (Some(4), Some("messages[1]".into())),
        ]
    );
}

#[test]
fn unknown_roles() {
    let text = [
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}"#,
        r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "hello"}]}"#,
        r#"{"messages": [{"role": "User", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let errors = errors_of(&v, ErrorKind::UnknownRole);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_eq!(errors[0].field.as_deref(), Some("messages[1].role"));
    assert!(
        errors[0].message.contains("`assistant`"),
        "{}",
        errors[0].message
    );
    assert_eq!(errors[1].field.as_deref(), Some("conversations[1].from"));
    assert!(
        errors[1].message.contains("human or gpt"),
        "{}",
        errors[1].message
    );
    assert!(
        errors[2].message.contains("write `user`"),
        "{}",
        errors[2].message
    );
}

#[test]
fn no_assistant_turn_and_empty_answers() {
    let text = [
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"messages": []}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "   "}]}"#,
        r#"{"instruction": "Say hi", "output": ""}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let no: Vec<Option<usize>> = errors_of(&v, ErrorKind::NoAssistant)
        .iter()
        .map(|e| e.row)
        .collect();
    assert_eq!(no, [Some(1), Some(2)]);
    let empty: Vec<(Option<usize>, Option<String>)> = errors_of(&v, ErrorKind::EmptyAssistant)
        .iter()
        .map(|e| (e.row, e.field.clone()))
        .collect();
    // Row 4 is instruction format in a chat file: its empty output is reported, and so is the mix.
    assert_eq!(
        empty,
        [
            (Some(3), Some("messages[1].content".into())),
            (Some(4), Some("output".into()))
        ]
    );
    assert_eq!(v.report.error_rows, 4);
}

#[test]
fn mixed_formats_flag_the_minority() {
    let mut text = chat_lines(3);
    text.push_str(r#"{"instruction": "Say hi", "output": "Hi!"}"#);
    text.push('\n');
    text.push_str(r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}"#);
    let v = validate("data.jsonl", text.as_bytes());
    assert_eq!(v.report.format, Some(Format::Chat));
    let rows: Vec<Option<usize>> = errors_of(&v, ErrorKind::MixedFormats)
        .iter()
        .map(|e| e.row)
        .collect();
    assert_eq!(rows, [Some(4), Some(5)]);
    assert_eq!(v.report.usable_rows, 3);
    assert_eq!(v.dataset.len(), 3);
}

#[test]
fn ambiguous_and_unknown_formats() {
    let text = [
        r#"{"messages": [], "instruction": "a", "output": "b"}"#,
        r#"{"prompt": "a", "completion": "b"}"#,
        r#"{}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    assert_eq!(errors_of(&v, ErrorKind::AmbiguousFormat)[0].row, Some(1));
    let unknown = errors_of(&v, ErrorKind::UnknownFormat);
    assert_eq!(unknown.len(), 2);
    assert!(
        unknown[0].message.contains("rename `prompt`"),
        "{}",
        unknown[0].message
    );
    assert!(
        unknown[1].message.contains("no fields"),
        "{}",
        unknown[1].message
    );
}

#[test]
fn duplicate_keys_are_warned_about_and_the_last_wins() {
    let text = r#"{"instruction": "a", "output": "first", "output": "second"}"#;
    let v = validate("data.jsonl", text.as_bytes());
    assert!(v.report.errors.is_empty());
    let w = warnings_of(&v, WarningKind::DuplicateKey);
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].rows.as_slice(), w[0].field.as_deref()),
        (&[1][..], Some("output"))
    );
    assert_eq!(v.dataset.conversations[0].messages[1].content, "second");
}

#[test]
fn a_line_of_700_000_keys_is_checked_without_stalling() {
    // One 13 MB line (under the 16 MiB record limit): an object of 700 000 keys, two of them repeated.
    // Checking each key against the ones before it was 2.5·10^11 comparisons; a hash set makes it one
    // pass. The second line is a record of unknown format with as many keys, whose hint looks at each.
    let keys = 700_000;
    let mut fields = String::with_capacity(19 * keys);
    for i in 0..keys {
        fields.push_str(&format!("\"k{i}\": {i}, "));
    }
    let mut text = format!(
        r#"{{"messages": [{{"role": "user", "content": "hi"}}, {{"role": "assistant", "content": "hello"}}], {fields}"k5": 0, "k699999": 0}}"#
    );
    text.push('\n');
    text.push_str(&format!("{{{fields}\"last\": 0}}\n"));
    let v = validate("data.jsonl", text.as_bytes());
    let w = warnings_of(&v, WarningKind::DuplicateKey);
    let fields: Vec<_> = w.iter().map(|w| w.field.as_deref()).collect();
    assert_eq!(fields, [Some("k5"), Some("k699999")]);
    assert_eq!(w[0].rows, [1]);
    let unknown = only_error(&v, ErrorKind::UnknownFormat);
    assert_eq!(unknown.row, Some(2));
    assert!(
        unknown.message.contains("`k0`, `k1`"),
        "{}",
        unknown.message
    );
    assert_eq!(v.report.usable_rows, 1);
}

#[test]
fn a_5_mb_line_is_read_and_a_limit_applies() {
    let big = "word ".repeat(1_000_000);
    let mut text = chat_lines(20);
    text.push_str(&chat("Summarise this", &big));
    text.push('\n');
    text.push_str(&chat("last question", "last answer"));
    text.push('\n');
    let case = write("data.jsonl", text.as_bytes());
    let v = run_with(&case.path, &ValidateOptions::default()).unwrap();
    assert!(v.report.errors.is_empty(), "{:#?}", v.report.errors);
    assert_eq!(v.report.usable_rows, 22);
    let long = warnings_of(&v, WarningKind::ExtremeLength);
    assert_eq!(long.len(), 1);
    assert_eq!(long[0].rows, [21]);
    // With a 1 MiB limit per record the line is refused, and reading continues after it.
    let options = ValidateOptions {
        max_record_bytes: 1 << 20,
        ..ValidateOptions::default()
    };
    let v = run_with(&case.path, &options).unwrap();
    let e = only_error(&v, ErrorKind::RecordTooLarge);
    assert_eq!(e.row, Some(21));
    assert!(e.message.contains("4.8 MiB"), "{}", e.message);
    assert_eq!(v.report.usable_rows, 21);
    // The same record inside a .json array.
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let case = write(
        "data.json",
        serde_json::to_string(&rows).unwrap().as_bytes(),
    );
    let v = run_with(&case.path, &options).unwrap();
    assert_eq!(only_error(&v, ErrorKind::RecordTooLarge).row, Some(20));
    assert_eq!(v.report.usable_rows, 21);
}

// ---------------------------------------------------------------- warnings

#[test]
fn exact_duplicates_are_removed_and_named() {
    let mut text = chat_lines(3);
    let first = text.lines().next().unwrap().to_string();
    text.push_str(&first);
    text.push('\n');
    let v = validate("data.jsonl", text.as_bytes());
    let w = warnings_of(&v, WarningKind::Duplicate);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].rows, [4, 1]);
    assert!(w[0].message.contains("line 1"), "{}", w[0].message);
    assert_eq!(v.report.stats.duplicates_removed, 1);
    assert_eq!(
        (v.report.rows, v.report.usable_rows, v.dataset.len()),
        (4, 3, 3)
    );
    assert!(v.report.is_usable());
    // Kept when asked.
    let case = write("data.jsonl", text.as_bytes());
    let options = ValidateOptions {
        keep_duplicates: true,
        ..ValidateOptions::default()
    };
    let v = run_with(&case.path, &options).unwrap();
    assert_eq!(
        (v.report.usable_rows, v.report.stats.duplicates_removed),
        (4, 0)
    );
}

#[test]
fn near_duplicates_and_contradictions() {
    let text = [
        chat(
            "How do I cancel my order?",
            "Go to Orders and click Cancel.",
        ),
        chat(
            "how do i cancel   my order",
            "Go to orders, and click cancel!",
        ),
        chat("How do I cancel my order?!", "You can't cancel orders."),
        chat("Something else entirely", "A different answer."),
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let near = warnings_of(&v, WarningKind::NearDuplicate);
    assert_eq!(near.len(), 1);
    assert_eq!(near[0].rows, [2, 1]);
    let contra = warnings_of(&v, WarningKind::Contradiction);
    assert_eq!(contra.len(), 1);
    assert_eq!(contra[0].rows, [3, 1]);
    // Warnings don't block.
    assert!(v.report.is_usable());
    assert_eq!(v.report.usable_rows, 4);
}

#[test]
fn turn_order_warnings() {
    let text = [
        // ends on a user turn
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}"#,
        // two user turns in a row
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]}"#,
        // system in the middle; starts with the assistant
        r#"{"messages": [{"role": "assistant", "content": "Hello!"}, {"role": "system", "content": "Be nice"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let ends = warnings_of(&v, WarningKind::EndsWithUser);
    assert_eq!(
        (ends[0].rows.as_slice(), ends[0].field.as_deref()),
        (&[1][..], Some("messages[2].content"))
    );
    let same = warnings_of(&v, WarningKind::ConsecutiveRoles);
    assert_eq!(
        (same[0].rows.as_slice(), same[0].field.as_deref()),
        (&[2][..], Some("messages[1].content"))
    );
    let order = warnings_of(&v, WarningKind::RoleOrder);
    assert_eq!(order.len(), 2);
    assert!(order.iter().all(|w| w.rows == [3]));
    assert!(v.report.is_usable());
}

#[test]
fn empty_inputs_and_control_characters() {
    let text = [
        r#"{"messages": [{"role": "system", "content": ""}, {"role": "user", "content": " "}, {"role": "assistant", "content": "b"}]}"#,
        r#"{"instruction": "", "input": "", "output": "something"}"#,
        r#"{"instruction": "bell\u0007 here", "output": "ok"}"#,
        r#"{"instruction": "caf\ufffd", "output": "ok"}"#,
    ]
    .join("\n");
    let v = validate("data.jsonl", text.as_bytes());
    let empty: Vec<(usize, Option<String>)> = warnings_of(&v, WarningKind::EmptyInput)
        .iter()
        .map(|w| (w.rows[0], w.field.clone()))
        .collect();
    assert_eq!(
        empty,
        [
            (1, Some("messages[0].content".into())),
            (1, Some("messages[1].content".into())),
            (2, Some("instruction".into()))
        ]
    );
    let control = warnings_of(&v, WarningKind::ControlCharacters);
    assert_eq!(control.len(), 2);
    assert!(
        control[0].message.contains("U+0007") && control[0].message.contains("character 5"),
        "{}",
        control[0].message
    );
    assert!(
        control[1].message.contains("U+FFFD"),
        "{}",
        control[1].message
    );
}

#[test]
fn few_rows_and_outlier_lengths() {
    let v = validate("data.jsonl", chat_lines(5).as_bytes());
    let few = warnings_of(&v, WarningKind::FewRows);
    assert_eq!(few.len(), 1);
    assert!(few[0].message.contains("only 5 usable rows"));
    let v = validate("data.jsonl", chat_lines(120).as_bytes());
    assert!(v.report.warnings.is_empty(), "{:#?}", v.report.warnings);
    // A very short answer among long ones.
    let long_answer = "This is a thorough answer that explains every step in detail. ".repeat(3);
    let mut lines: Vec<String> = (0..30)
        .map(|i| chat(&format!("question {i}"), &format!("{i} {long_answer}")))
        .collect();
    lines.push(chat("question x", "ok"));
    let v = validate("data.jsonl", lines.join("\n").as_bytes());
    let short = warnings_of(&v, WarningKind::ExtremeLength);
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].rows, [31]);
    assert!(short[0].message.contains("short"), "{}", short[0].message);
}

// ---------------------------------------------------------------- policies and bounds

#[test]
fn rows_with_errors_are_listed_and_skipped_only_when_asked() {
    let mut text = chat_lines(3);
    text.push_str("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n");
    let v = validate("data.jsonl", text.as_bytes());
    assert_eq!(
        (v.report.rows, v.report.usable_rows, v.report.error_rows),
        (4, 3, 1)
    );
    assert!(matches!(
        v.report.check_trainable(false),
        Err(DataError::Blocked { errors: 1, .. })
    ));
    assert!(v.report.check_trainable(true).is_ok());
    // A file-level problem blocks even when skipping rows.
    let v = validate("data.json", format!("[{CHAT}").as_bytes());
    assert!(v.report.check_trainable(true).is_err());
}

#[test]
fn findings_are_capped_per_kind_but_all_counted() {
    let text = "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n".repeat(50);
    let case = write("data.jsonl", text.as_bytes());
    let options = ValidateOptions {
        max_listed: 10,
        ..ValidateOptions::default()
    };
    let v = run_with(&case.path, &options).unwrap();
    assert_eq!(v.report.errors.len(), 10);
    assert_eq!(v.report.error_counts[&ErrorKind::UnknownRole], 50);
    assert_eq!(v.report.error_rows, 50);
}

#[test]
fn cancel_stops_reading() {
    let case = write("data.jsonl", chat_lines(100).as_bytes());
    let cancel = AtomicBool::new(true);
    let err = validate_file(
        &case.path,
        &ValidateOptions::default(),
        &mut |_| {},
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Cancelled));
}

#[test]
fn the_sample_datasets_are_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("samples");
    for name in ["support-chat.jsonl", "support-instruction.json"] {
        let v = run_with(&root.join(name), &ValidateOptions::default()).unwrap();
        assert!(v.report.errors.is_empty(), "{name}: {:#?}", v.report.errors);
        assert!(
            v.report.warnings.is_empty(),
            "{name}: {:#?}",
            v.report.warnings
        );
        assert!(
            v.report.usable_rows >= 100,
            "{name}: {}",
            v.report.usable_rows
        );
    }
}

#[test]
fn report_json_has_the_documented_shape() {
    let v = validate(
        "data.jsonl",
        format!("{CHAT}\n{{\"messages\": 1}}\n").as_bytes(),
    );
    let json = serde_json::to_value(&v.report).unwrap();
    for key in [
        "format",
        "rows",
        "usable_rows",
        "errors",
        "warnings",
        "stats",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    let e = &json["errors"][0];
    for key in ["row", "line", "column", "field", "message"] {
        assert!(e.get(key).is_some(), "error lacks {key}: {e}");
    }
    let w = &json["warnings"][0];
    for key in ["kind", "rows", "message"] {
        assert!(w.get(key).is_some(), "warning lacks {key}: {w}");
    }
    assert_eq!(json["format"], "chat");
    assert_eq!(json["stats"]["characters"]["count"], 1);
}
