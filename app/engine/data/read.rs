//! Streaming readers for .json arrays and .jsonl files. Neither holds the file in memory: JSON Lines are
//! read line by line, and a JSON array is cut into its elements by a small byte scanner (strings, escapes
//! and nesting), each element parsed on its own. That keeps one record in memory at a time (capped),
//! gives every record its line and byte offset, lets invalid UTF-8 be reported at its exact byte offset,
//! and lets reading go on past a bad record.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::json::Json;
use super::report::{ErrorKind, RowError};
use super::{DataError, Layout, Progress, Stage};

/// How much of the start of a file is looked at to recognise binary files and other formats.
const SNIFF_BYTES: usize = 8192;
/// Progress is reported every this many bytes.
const PROGRESS_BYTES: u64 = 1 << 20;
/// In a .json array, reading stops after this many syntax errors: past a broken string the scanner can
/// no longer tell records apart, and later errors would be noise.
const MAX_ARRAY_SYNTAX_ERRORS: usize = 10;

pub(crate) struct ReadOptions {
    pub max_record_bytes: usize,
}

/// What the readers hand to their sink, in file order.
pub(crate) enum Event {
    /// A record that is valid JSON.
    Record { row: usize, line: u64, json: Json },
    /// A problem; `row: Some` is a record that could not be read, `row: None` concerns the whole file.
    Problem(RowError),
}

/// A position in the file: byte offset, 1-based line, 1-based column in characters.
#[derive(Debug, Clone, Copy)]
struct Pos {
    offset: u64,
    line: u64,
    col: u64,
}

impl Pos {
    fn advance(&mut self, b: u8) {
        self.offset += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xC0 != 0x80 {
            self.col += 1;
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Read records from `reader`, calling `sink` with each record or problem; `sink` returns false to stop.
/// Returns the layout, or `None` when the file holds no data at all (an `Empty` problem was sent).
pub(crate) fn read_records<R: Read>(
    mut reader: R,
    path: &Path,
    size: Option<u64>,
    options: &ReadOptions,
    sink: &mut dyn FnMut(Event) -> bool,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Option<Layout>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut sample = Vec::with_capacity(SNIFF_BYTES);
    reader
        .by_ref()
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut sample)
        .map_err(io)?;
    check_is_text(&sample, path)?;
    let total_bytes = size.unwrap_or(0);
    let sample_len = sample.len();
    let mut reader = BufReader::with_capacity(1 << 16, std::io::Cursor::new(sample).chain(reader));

    let mut pos = Pos {
        offset: 0,
        line: 1,
        col: 1,
    };
    let has_bom = {
        let buf = reader.fill_buf().map_err(io)?;
        buf.starts_with(b"\xEF\xBB\xBF")
    };
    if has_bom {
        reader.consume(3);
        pos.offset = 3;
    }
    // Skip leading whitespace to see what the data starts with.
    let first = loop {
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            break None;
        }
        match buf.iter().position(|&b| !is_ws(b)) {
            Some(i) => {
                for &b in &buf[..i] {
                    pos.advance(b);
                }
                let first = buf[i];
                reader.consume(i);
                break Some(first);
            }
            None => {
                let n = buf.len();
                for &b in buf {
                    pos.advance(b);
                }
                reader.consume(n);
            }
        }
    };
    let Some(first) = first else {
        let message = if pos.offset == 0 && sample_len == 0 {
            "the file is empty (0 bytes); add records: one JSON object per line (.jsonl) or a JSON array of objects (.json)"
        } else if pos.offset == 3 && has_bom {
            "the file holds nothing but a byte-order mark; add records: one JSON object per line (.jsonl) or a JSON array of objects (.json)"
        } else {
            "the file holds only whitespace; add records: one JSON object per line (.jsonl) or a JSON array of objects (.json)"
        };
        sink(Event::Problem(file_error(
            ErrorKind::Empty,
            None,
            message.into(),
        )));
        return Ok(None);
    };
    let mut ctx = Ctx {
        path,
        options,
        sink,
        progress,
        cancel,
        total_bytes,
        next_progress: PROGRESS_BYTES,
    };
    if first == b'[' {
        read_array(&mut reader, pos, &mut ctx)?;
        Ok(Some(Layout::Json))
    } else {
        read_lines(&mut reader, pos, &mut ctx)?;
        Ok(Some(Layout::Jsonl))
    }
}

struct Ctx<'a, 'b> {
    path: &'a Path,
    options: &'a ReadOptions,
    sink: &'b mut dyn FnMut(Event) -> bool,
    progress: &'b mut dyn FnMut(Progress),
    cancel: &'a AtomicBool,
    total_bytes: u64,
    next_progress: u64,
}

impl Ctx<'_, '_> {
    fn io(&self, source: std::io::Error) -> DataError {
        DataError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn tick(&mut self, offset: u64) -> Result<(), DataError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(DataError::Cancelled);
        }
        if offset >= self.next_progress {
            self.next_progress = offset + PROGRESS_BYTES;
            (self.progress)(Progress {
                stage: Stage::Reading,
                done: offset,
                total: (self.total_bytes > 0).then_some(self.total_bytes),
            });
        }
        Ok(())
    }
}

fn file_error(kind: ErrorKind, at: Option<Pos>, message: String) -> RowError {
    RowError {
        kind,
        row: None,
        line: at.map(|p| p.line),
        column: at.map(|p| p.col),
        offset: at.map(|p| p.offset),
        field: None,
        message,
    }
}

/// Refuse what is clearly not a UTF-8 JSON text file, from its first bytes.
fn check_is_text(sample: &[u8], path: &Path) -> Result<(), DataError> {
    let not_data = |offset: Option<u64>, message: &str| DataError::NotData {
        path: path.to_path_buf(),
        offset,
        message: message.to_string(),
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let convert = "Loft reads .json (an array of records) and .jsonl (one record per line)";
    if sample.starts_with(b"PAR1") || ext == "parquet" {
        return Err(not_data(Some(0), &format!("this is a Parquet file; {convert}. Convert it in Python: pandas.read_parquet(\"in.parquet\").to_json(\"out.jsonl\", orient=\"records\", lines=True, force_ascii=False)")));
    }
    if matches!(ext.as_str(), "csv" | "tsv") {
        return Err(not_data(None, &format!("this is a {} file; {convert}. Convert it in Python: pandas.read_csv(\"in.{ext}\"{}).to_json(\"out.jsonl\", orient=\"records\", lines=True, force_ascii=False), then rename its columns to instruction/input/output", ext.to_uppercase(), if ext == "tsv" { ", sep=\"\\t\"" } else { "" })));
    }
    let magic: [(&[u8], &str); 6] = [
        (b"\x1F\x8B", "a gzip archive; decompress it first (gunzip)"),
        (
            b"PK\x03\x04",
            "a zip archive (or an Excel/Office file); extract or export the data as .jsonl first",
        ),
        (
            b"\x28\xB5\x2F\xFD",
            "a zstd archive; decompress it first (unzstd)",
        ),
        (
            b"ARROW1",
            "an Arrow file; export it as JSON Lines first (datasets: ds.to_json(\"out.jsonl\"))",
        ),
        (
            b"SQLite format 3\0",
            "an SQLite database; export the table as JSON Lines first",
        ),
        (b"\x89PNG", "a PNG image, not a dataset"),
    ];
    for (prefix, what) in magic {
        if sample.starts_with(prefix) {
            return Err(not_data(Some(0), &format!("this is {what}. {convert}.")));
        }
    }
    let utf16_bom = sample.starts_with(b"\xFF\xFE") || sample.starts_with(b"\xFE\xFF");
    let utf16_pattern = sample.len() >= 4
        && ((sample[1] == 0 && sample[3] == 0 && sample[0] != 0)
            || (sample[0] == 0 && sample[2] == 0 && sample[1] != 0));
    if utf16_bom || utf16_pattern {
        return Err(not_data(Some(0), "the file is UTF-16 encoded (Windows PowerShell's `>` writes UTF-16); Loft reads UTF-8. Re-save it as UTF-8 (in PowerShell: Get-Content in.jsonl | Set-Content -Encoding utf8 out.jsonl)"));
    }
    if let Some(nul) = sample.iter().position(|&b| b == 0) {
        return Err(not_data(Some(nul as u64), &format!("this looks like a binary file, not text (a NUL byte at byte offset {nul}). {convert}.")));
    }
    // Mostly control bytes or invalid UTF-8: binary. (A few stray Latin-1 bytes are reported per row instead.)
    let controls = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !is_ws(b)) || b == 0x7F)
        .count();
    let mut invalid = 0usize;
    let mut rest = sample;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(_) => break,
            Err(e) => {
                let skip = e.error_len().unwrap_or(rest.len() - e.valid_up_to());
                if e.error_len().is_some() {
                    invalid += skip;
                }
                rest = &rest[e.valid_up_to() + skip..];
            }
        }
    }
    if !sample.is_empty() && (controls + invalid) * 10 > sample.len() {
        return Err(not_data(Some(0), &format!("this looks like a binary file, not text ({} of its first {} bytes are control bytes or invalid UTF-8). {convert}.", controls + invalid, sample.len())));
    }
    Ok(())
}

fn read_lines<R: BufRead>(reader: &mut R, mut pos: Pos, ctx: &mut Ctx) -> Result<(), DataError> {
    let cap = ctx.options.max_record_bytes;
    let mut buf = Vec::new();
    let mut first_record = true;
    let dot_json = ctx
        .path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    // The first line may start after leading whitespace, at `pos.col`.
    let mut start_col = pos.col;
    loop {
        ctx.tick(pos.offset)?;
        buf.clear();
        let start = pos;
        let n = reader
            .by_ref()
            .take(cap as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| ctx.io(e))?;
        if n == 0 {
            return Ok(());
        }
        let line = start.line;
        pos.offset += n as u64;
        pos.line += 1;
        pos.col = 1;
        let col = std::mem::replace(&mut start_col, 1);
        if buf.last() != Some(&b'\n') && buf.len() > cap {
            let skipped = reader.skip_until(b'\n').map_err(|e| ctx.io(e))?;
            pos.offset += skipped as u64;
            let size = n + skipped;
            first_record = false;
            let keep = (ctx.sink)(Event::Problem(RowError {
                kind: ErrorKind::RecordTooLarge,
                row: Some(line as usize),
                line: Some(line),
                column: None,
                offset: Some(start.offset),
                field: None,
                message: format!(
                    "this line is {} long, over the {} limit for one record; split it into smaller conversations or remove it",
                    human_bytes(size as u64),
                    human_bytes(cap as u64)
                ),
            }));
            if !keep {
                return Ok(());
            }
            continue;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if buf.iter().all(|&b| is_ws(b)) {
            continue;
        }
        let at = Pos {
            offset: start.offset,
            line,
            col,
        };
        let event = match parse_record(&buf, at) {
            Ok(json) if first_record && dot_json && !matches!(json, Json::Object(_)) => {
                (ctx.sink)(Event::Problem(file_error(
                    ErrorKind::TopLevelShape,
                    Some(at),
                    format!(
                        "the file holds {} at the top level; a .json dataset is an array of records `[{{...}}, {{...}}]` (or use .jsonl: one record per line)",
                        json.kind()
                    ),
                )));
                return Ok(());
            }
            Ok(json) => Event::Record {
                row: line as usize,
                line,
                json,
            },
            Err(mut problem) => {
                problem.row = Some(line as usize);
                if first_record && problem.kind == ErrorKind::InvalidJson && is_eof_error(&buf) {
                    problem.row = None;
                    problem.kind = ErrorKind::TopLevelShape;
                    problem.message = "the first record does not end on its line: it is spread over several lines (pretty-printed JSON). In JSON Lines every record must be on one line (`jq -c . in.json > out.jsonl` rewrites it so); Loft also reads a .json file holding one array of records `[{...}, {...}]`".into();
                    (ctx.sink)(Event::Problem(problem));
                    return Ok(());
                }
                Event::Problem(problem)
            }
        };
        first_record = false;
        if !(ctx.sink)(event) {
            return Ok(());
        }
    }
}

/// Whether a line's JSON is merely incomplete (it ends inside a value).
fn is_eof_error(text: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde::de::IgnoredAny>(text),
        Err(e) if e.classify() == serde_json::error::Category::Eof
    )
}

#[derive(Clone, Copy, PartialEq)]
enum ArrayState {
    BeforeElement { after_comma: bool },
    InElement,
    AfterArray,
}

/// Scan a JSON array element by element. `pos` is at the opening `[`, which is still unread.
fn read_array<R: BufRead>(reader: &mut R, mut pos: Pos, ctx: &mut Ctx) -> Result<(), DataError> {
    let cap = ctx.options.max_record_bytes;
    reader.consume(1);
    pos.advance(b'[');
    let mut state = ArrayState::BeforeElement { after_comma: false };
    let mut index = 0usize;
    let mut elem: Vec<u8> = Vec::new();
    let mut elem_start = pos;
    let mut elem_len: u64 = 0;
    let mut depth: u64 = 0;
    let mut in_string = false;
    let mut escape = false;
    let mut syntax_errors = 0usize;

    // Finish the current element; returns false when reading must stop.
    let mut finish = |elem: &mut Vec<u8>,
                      elem_start: Pos,
                      elem_len: u64,
                      index: usize,
                      ctx: &mut Ctx|
     -> bool {
        let event = if elem_len > cap as u64 {
            Event::Problem(RowError {
                kind: ErrorKind::RecordTooLarge,
                row: Some(index),
                line: Some(elem_start.line),
                column: Some(elem_start.col),
                offset: Some(elem_start.offset),
                field: None,
                message: format!(
                    "this record is {} long, over the {} limit for one record; split it into smaller conversations or remove it",
                    human_bytes(elem_len),
                    human_bytes(cap as u64)
                ),
            })
        } else {
            match parse_record(elem, elem_start) {
                Ok(json) => Event::Record {
                    row: index,
                    line: elem_start.line,
                    json,
                },
                Err(mut problem) => {
                    problem.row = Some(index);
                    if problem.kind == ErrorKind::InvalidJson {
                        syntax_errors += 1;
                    }
                    Event::Problem(problem)
                }
            }
        };
        elem.clear();
        if elem.capacity() > 1 << 20 {
            elem.shrink_to(1 << 16);
        }
        let keep = (ctx.sink)(event);
        if keep && syntax_errors >= MAX_ARRAY_SYNTAX_ERRORS {
            (ctx.sink)(Event::Problem(file_error(
                ErrorKind::TooManyErrors,
                Some(elem_start),
                format!("stopped reading after {MAX_ARRAY_SYNTAX_ERRORS} JSON syntax errors (past a broken string the records can no longer be told apart); fix the first ones and validate again"),
            )));
            return false;
        }
        keep
    };

    loop {
        ctx.tick(pos.offset)?;
        let buf = reader.fill_buf().map_err(|e| ctx.io(e))?;
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        let mut i = 0;
        let mut copy_from = 0;
        while i < len {
            let b = buf[i];
            match state {
                ArrayState::BeforeElement { after_comma } => {
                    if is_ws(b) {
                        pos.advance(b);
                        i += 1;
                        continue;
                    }
                    match b {
                        b']' => {
                            if after_comma {
                                let keep = (ctx.sink)(Event::Problem(file_error(
                                    ErrorKind::InvalidJson,
                                    Some(pos),
                                    "a comma before the closing ]: JSON allows no trailing comma; remove the last comma".into(),
                                )));
                                if !keep {
                                    return Ok(());
                                }
                            } else if index == 0 {
                                (ctx.sink)(Event::Problem(file_error(
                                    ErrorKind::Empty,
                                    Some(pos),
                                    "the array holds no records; add records like {\"messages\": [{\"role\": \"user\", \"content\": \"…\"}, {\"role\": \"assistant\", \"content\": \"…\"}]}".into(),
                                )));
                            }
                            state = ArrayState::AfterArray;
                            pos.advance(b);
                            i += 1;
                        }
                        b',' => {
                            let keep = (ctx.sink)(Event::Problem(file_error(
                                ErrorKind::InvalidJson,
                                Some(pos),
                                "a comma where a record should be: two commas in a row, or a comma right after [; remove it".into(),
                            )));
                            if !keep {
                                return Ok(());
                            }
                            state = ArrayState::BeforeElement { after_comma: true };
                            pos.advance(b);
                            i += 1;
                        }
                        _ => {
                            state = ArrayState::InElement;
                            elem_start = pos;
                            elem_len = 0;
                            depth = 0;
                            in_string = false;
                            escape = false;
                            copy_from = i;
                        }
                    }
                }
                ArrayState::InElement => {
                    let mut end = false;
                    let mut closes = false;
                    if in_string {
                        if escape {
                            escape = false;
                        } else if b == b'\\' {
                            escape = true;
                        } else if b == b'"' {
                            in_string = false;
                        }
                    } else {
                        match b {
                            b'"' => in_string = true,
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' if depth > 0 => depth -= 1,
                            b']' => {
                                end = true;
                                closes = true;
                            }
                            b',' if depth == 0 => end = true,
                            _ => {}
                        }
                    }
                    if end {
                        let piece = &buf[copy_from..i];
                        elem_len += piece.len() as u64;
                        if elem_len <= cap as u64 {
                            elem.extend_from_slice(piece);
                        }
                        if !finish(&mut elem, elem_start, elem_len, index, ctx) {
                            return Ok(());
                        }
                        index += 1;
                        state = if closes {
                            ArrayState::AfterArray
                        } else {
                            ArrayState::BeforeElement { after_comma: true }
                        };
                    }
                    pos.advance(b);
                    i += 1;
                }
                ArrayState::AfterArray => {
                    if is_ws(b) {
                        pos.advance(b);
                        i += 1;
                        continue;
                    }
                    (ctx.sink)(Event::Problem(file_error(
                        ErrorKind::TrailingContent,
                        Some(pos),
                        "there is more after the closing ] of the array; a .json file holds one array of records. Remove what follows, or put it inside the array".into(),
                    )));
                    return Ok(());
                }
            }
        }
        if state == ArrayState::InElement {
            let piece = &buf[copy_from..len];
            elem_len += piece.len() as u64;
            if elem_len <= cap as u64 {
                elem.extend_from_slice(piece);
            } else if !elem.is_empty() {
                elem = Vec::new();
            }
        }
        reader.consume(len);
    }
    match state {
        ArrayState::AfterArray => {}
        ArrayState::InElement
            if depth == 0
                && !in_string
                && elem_len <= cap as u64
                && parse_record(&elem, elem_start).is_ok() =>
        {
            // The last record is whole; only the closing bracket is missing.
            if finish(&mut elem, elem_start, elem_len, index, ctx) {
                (ctx.sink)(Event::Problem(file_error(
                    ErrorKind::Truncated,
                    Some(pos),
                    "the file ends before the closing ] of the array: it is cut off (an interrupted download or copy?); export it again, or add the missing ]".into(),
                )));
            }
        }
        ArrayState::InElement => {
            (ctx.sink)(Event::Problem(RowError {
                kind: ErrorKind::Truncated,
                row: Some(index),
                line: Some(elem_start.line),
                column: Some(elem_start.col),
                offset: Some(elem_start.offset),
                field: None,
                message: format!(
                    "the file ends inside this record, at line {} column {}: the file is cut off (an interrupted download or copy?); export it again",
                    pos.line, pos.col
                ),
            }));
        }
        ArrayState::BeforeElement { .. } => {
            (ctx.sink)(Event::Problem(file_error(
                ErrorKind::Truncated,
                Some(pos),
                "the file ends before the closing ] of the array: it is cut off (an interrupted download or copy?); export it again, or add the missing ]".into(),
            )));
        }
    }
    Ok(())
}

/// Parse one record's bytes that start at `at` in the file. Problems come back with file positions.
fn parse_record(bytes: &[u8], at: Pos) -> Result<Json, RowError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.valid_up_to();
            let (line, col) = position_in(&bytes[..valid], at);
            let byte = bytes[valid];
            return Err(RowError {
                kind: ErrorKind::InvalidUtf8,
                row: None,
                line: Some(line),
                column: Some(col),
                offset: Some(at.offset + valid as u64),
                field: None,
                message: format!(
                    "invalid UTF-8 at byte offset {} (byte 0x{byte:02X}); the text is probably Latin-1 or Windows-1252. Re-save the file as UTF-8 (in Python: open(path, encoding=\"cp1252\").read() then write it with encoding=\"utf-8\")",
                    at.offset + valid as u64
                ),
            });
        }
    };
    serde_json::from_str::<Json>(text).map_err(|e| json_problem(text, &e, at))
}

/// Line and column (in characters) after `valid_prefix`, which starts at `at`.
fn position_in(valid_prefix: &[u8], at: Pos) -> (u64, u64) {
    let mut p = at;
    for &b in valid_prefix {
        p.advance(b);
    }
    (p.line, p.col)
}

/// Turn serde_json's error (line and byte column within `text`) into a finding with file positions and advice.
fn json_problem(text: &str, e: &serde_json::Error, at: Pos) -> RowError {
    let line_in = e.line().max(1);
    let line_start = text
        .match_indices('\n')
        .nth(line_in.saturating_sub(2))
        .map(|(i, _)| i + 1)
        .filter(|_| line_in > 1)
        .unwrap_or(0);
    let line_text = &text[line_start..];
    let line_text = &line_text[..line_text.find('\n').unwrap_or(line_text.len())];
    let eof = e.classify() == serde_json::error::Category::Eof;
    // serde_json's column is the 1-based byte of the offending character; at the end of the input, point
    // just past the last character.
    let mut byte = if eof {
        line_text.len()
    } else {
        e.column().saturating_sub(1).min(line_text.len())
    };
    while !line_text.is_char_boundary(byte) {
        byte -= 1;
    }
    // serde_json stops after the sign of `-Infinity`; point at the sign.
    if byte > 0
        && line_text[byte..].starts_with("Infinity")
        && matches!(line_text.as_bytes()[byte - 1], b'-' | b'+')
    {
        byte -= 1;
    }
    let char_col = line_text[..byte].chars().count() as u64 + 1;
    let (line, column) = if line_in == 1 {
        (at.line, at.col + char_col - 1)
    } else {
        (at.line + line_in as u64 - 1, char_col)
    };
    let offset = at.offset + (line_start + byte) as u64;
    let full = e.to_string();
    let bare = full
        .rfind(" at line ")
        .map(|i| full[..i].to_string())
        .unwrap_or(full);
    let here = &line_text[byte..];
    let hint = if here.starts_with('\u{feff}') {
        " — a byte-order mark (U+FEFF) in the middle of the file: were files with BOMs joined together? Remove it"
    } else if ["NaN", "Infinity", "-Infinity", "+Infinity"]
        .iter()
        .any(|w| here.starts_with(w))
    {
        " — NaN and Infinity are not valid JSON (Python's json.dump writes them unless allow_nan=False); replace them with null or a number"
    } else if here.starts_with('\'') {
        " — JSON needs double quotes; this looks like a Python dict written with str() or print(); write records with json.dumps()"
    } else if bare.contains("control character") {
        " — a raw tab, newline or other control character inside a string; write it escaped (\\t, \\n) — json.dumps() does"
    } else if bare.contains("recursion limit") {
        " — the record is nested more than 128 levels deep; a training record never needs that"
    } else if bare.contains("trailing characters") {
        " — there is more after the end of the record; put one record per line (or a comma between records in a .json array)"
    } else if eof {
        " — the record ends before it is complete (cut off, or a missing closing bracket or quote)"
    } else {
        ""
    };
    RowError {
        kind: ErrorKind::InvalidJson,
        row: None,
        line: Some(line),
        column: Some(column),
        offset: Some(offset),
        field: None,
        message: format!("invalid JSON: {bare}{hint}"),
    }
}

/// Sizes in messages read as everywhere else in Loft.
pub(crate) use crate::engine::units::bytes as human_bytes;
