//! Where each message's text lies in a rendered conversation, found by construction rather than by
//! searching for it.
//!
//! The conversation is rendered twice: once as it is, and once with each message's content replaced by a
//! placeholder that no data and no template can contain (private-use characters around a number). In the
//! placeholder rendering everything between placeholders is the template's own markup. Walking the real
//! rendering, that markup must appear exactly, and between two pieces of markup lies a message's content
//! as the template wrote it: as given, or trimmed the way templates trim (`trim`, `strip('\n')`…). So
//! every content gets an exact byte range, which can never fall inside a special token or a role header:
//! an answer "a" cannot be mistaken for the "a" of `<|im_start|>assistant`.
//!
//! A reasoning answer (`<think>…</think>answer`) gets two placeholders, one for the reasoning and one for
//! the answer, with the `<think>` tags left as written: templates that split reasoning from the answer
//! (Qwen3 keeps it only in the last turns) then take the same branches as with the real text, and each
//! part is found wherever the template puts it, or found missing when the template leaves it out.
//!
//! When the real rendering does not fit the markup — the template rewrites a content in some other way,
//! or branches on its exact text — there is no exact answer, and the caller gets an error that says so
//! rather than a guess.

use std::collections::HashSet;
use std::ops::Range;

use crate::engine::chat::{ChatMessage, ChatTemplate};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// The real rendering of a conversation and, for each message, the byte ranges of its content there.
pub(crate) struct Aligned {
    pub text: String,
    pub messages: Vec<MessageRanges>,
}

/// Where one message's content was found (empty when the template does not show it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MessageRanges {
    /// The reasoning of a `<think>…</think>` answer, when the template shows it; from the `<think>`
    /// before it when the message writes that tag (the tag is then the message's text, not markup).
    pub reasoning: Option<Range<usize>>,
    /// The content (for a reasoning answer: the answer after `</think>`), once per time it is shown.
    pub content: Vec<Range<usize>>,
}

/// What one placeholder stands for.
struct Piece<'a> {
    message: usize,
    text: &'a str,
    reasoning: bool,
    /// A reasoning piece that `<think>` opens in the message as written.
    think_tag: bool,
}

/// The two private-use characters that open and close placeholders.
struct Marks {
    open: char,
    close: char,
}

impl Marks {
    /// A pair of characters found in no message and not in the template (a template cannot write a
    /// character it does not contain, except from the messages).
    fn choose(messages: &[ChatMessage], template: &ChatTemplate) -> Option<Marks> {
        (0..64u32)
            .filter_map(|k| {
                Some(Marks {
                    open: char::from_u32(0xF0000 + 2 * k)?,
                    close: char::from_u32(0xF0001 + 2 * k)?,
                })
            })
            .find(|marks| {
                std::iter::once(template.source.as_str())
                    .chain(messages.iter().map(|m| m.content.as_str()))
                    .all(|text| !text.contains(marks.open) && !text.contains(marks.close))
            })
    }

    fn placeholder(&self, piece: usize) -> String {
        format!("{}{piece}{}", self.open, self.close)
    }
}

/// A reasoning answer split as templates split it: up to the last `</think>` is reasoning (after the last
/// `<think>` before it, if any), the rest is the answer. `None` for an answer without `</think>`.
struct Reasoning<'a> {
    /// Up to where the reasoning starts (`<think>` included, when there is one).
    before: &'a str,
    reasoning: &'a str,
    answer: &'a str,
}

fn split_reasoning(content: &str) -> Option<Reasoning<'_>> {
    let close = content.rfind(THINK_CLOSE)?;
    let head = &content[..close];
    let start = head.rfind(THINK_OPEN).map_or(0, |p| p + THINK_OPEN.len());
    Some(Reasoning {
        before: &content[..start],
        reasoning: &head[start..],
        answer: &content[close + THINK_CLOSE.len()..],
    })
}

/// The conversation with placeholders for contents, and what each placeholder stands for.
fn with_placeholders<'a>(
    messages: &'a [ChatMessage],
    marks: &Marks,
) -> (Vec<ChatMessage>, Vec<Piece<'a>>) {
    let mut pieces = Vec::new();
    let mut placeholder = |message: usize, text: &'a str, reasoning: bool, think_tag: bool| {
        pieces.push(Piece {
            message,
            text,
            reasoning,
            think_tag,
        });
        marks.placeholder(pieces.len() - 1)
    };
    let marked = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // An empty content stays empty: a placeholder would change what `{% if content %}` sees.
            let content = if m.content.is_empty() {
                String::new()
            } else {
                match split_reasoning(&m.content).filter(|_| m.role == "assistant") {
                    // Blank reasoning stays as written: templates treat an empty think block apart.
                    Some(r) if r.reasoning.trim().is_empty() => format!(
                        "{}{THINK_CLOSE}{}",
                        &m.content[..m.content.len() - r.answer.len() - THINK_CLOSE.len()],
                        placeholder(i, r.answer, false, false)
                    ),
                    Some(r) => {
                        let reasoning = placeholder(i, r.reasoning, true, !r.before.is_empty());
                        let answer = placeholder(i, r.answer, false, false);
                        format!("{}{reasoning}{THINK_CLOSE}{answer}", r.before)
                    }
                    None => placeholder(i, &m.content, false, false),
                }
            };
            ChatMessage {
                role: m.role.clone(),
                content,
            }
        })
        .collect();
    (marked, pieces)
}

/// A placeholder found in the placeholder rendering.
struct Found {
    range: Range<usize>,
    piece: usize,
}

fn find_placeholders(text: &str, marks: &Marks, pieces: usize) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (start, _) in text.match_indices(marks.open) {
        let digits_start = start + marks.open.len_utf8();
        let piece = text[digits_start..]
            .find(marks.close)
            .and_then(|len| {
                let piece: usize = text[digits_start..digits_start + len].parse().ok()?;
                Some((piece, digits_start + len + marks.close.len_utf8()))
            })
            .filter(|&(piece, _)| piece < pieces);
        match piece {
            Some((piece, end)) => found.push(Found {
                range: start..end,
                piece,
            }),
            None => return Err(format!("the chat template changes the text of messages in a way Loft cannot follow, so it cannot tell which tokens are the answer; {TRAIN_ON_ALL}")),
        }
    }
    Ok(found)
}

const TRAIN_ON_ALL: &str =
    "train on all tokens instead, or use a model whose template writes messages as they are given";

/// The ways templates write a content: as given first, then trimmed as Jinja's `trim` and Python's
/// `strip`/`lstrip`/`rstrip` (of whitespace or of newlines) would.
fn variants(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(7);
    for v in [
        text,
        text.trim(),
        text.trim_start(),
        text.trim_end(),
        text.trim_matches('\n'),
        text.trim_start_matches('\n'),
        text.trim_end_matches('\n'),
    ] {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Walk `real`: `fragments[0]`, then a variant of the first placeholder's text, then `fragments[1]`…,
/// ending exactly at the end. Returns each placeholder's byte range in `real`, or the index of the
/// placeholder after which no variant fits. Ambiguous variants (rare: trailing whitespace before
/// markup that starts with the same whitespace) are backtracked over.
fn walk(
    real: &str,
    fragments: &[&str],
    variants: &[Vec<&str>],
) -> Result<Vec<Range<usize>>, usize> {
    let n = variants.len();
    if !real.starts_with(fragments[0]) {
        return Err(0);
    }
    if n == 0 {
        return if real.len() == fragments[0].len() {
            Ok(Vec::new())
        } else {
            Err(0)
        };
    }
    struct Frame {
        start: usize,
        next: usize,
        len: usize,
    }
    let mut stack = vec![Frame {
        start: fragments[0].len(),
        next: 0,
        len: 0,
    }];
    // (placeholder, start) pairs from which no way to the end exists.
    let mut dead: HashSet<(usize, usize)> = HashSet::new();
    let mut deepest = 0;
    loop {
        let k = stack.len() - 1;
        if k == n {
            return Ok(stack[..n]
                .iter()
                .map(|f| f.start..f.start + f.len)
                .collect());
        }
        let Some(frame) = stack.last_mut() else {
            return Err(deepest);
        };
        let after = fragments[k + 1];
        let mut next_start = None;
        while let Some(v) = variants[k].get(frame.next) {
            frame.next += 1;
            let rest = &real[frame.start..];
            if !rest.starts_with(v) || !rest[v.len()..].starts_with(after) {
                continue;
            }
            let start = frame.start + v.len() + after.len();
            let complete = k + 1 < n || start == real.len();
            if complete && !dead.contains(&(k + 1, start)) {
                frame.len = v.len();
                next_start = Some(start);
                break;
            }
        }
        match next_start {
            Some(start) => {
                deepest = deepest.max(k + 1);
                stack.push(Frame {
                    start,
                    next: 0,
                    len: 0,
                });
            }
            None => {
                let start = frame.start;
                stack.pop();
                dead.insert((k, start));
                if stack.is_empty() {
                    return Err(deepest);
                }
            }
        }
    }
}

/// Render `messages` and find each message's content in the rendering. `need` says which messages must
/// be shown exactly once (the assistant's, when only they are trained): a template that leaves one out,
/// or writes it twice, is an error.
pub(crate) fn align(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    need: &dyn Fn(&ChatMessage) -> bool,
    render: &dyn Fn(&[ChatMessage]) -> Result<String, String>,
) -> Result<Aligned, String> {
    let text = render(messages)?;
    let marks = Marks::choose(messages, template).ok_or_else(|| {
        format!("the conversation uses too many private-use characters for Loft to mark where each message is; {TRAIN_ON_ALL}")
    })?;
    let (marked, pieces) = with_placeholders(messages, &marks);
    let marked_text = render(&marked)?;
    let found = find_placeholders(&marked_text, &marks, pieces.len())?;

    let mut ranges = vec![MessageRanges::default(); messages.len()];
    for (i, m) in messages.iter().enumerate() {
        let shown = |reasoning: bool| {
            found
                .iter()
                .filter(|f| pieces[f.piece].message == i && pieces[f.piece].reasoning == reasoning)
                .count()
        };
        let has_content = pieces.iter().any(|p| p.message == i && !p.reasoning);
        if need(m) && has_content && (shown(false) != 1 || shown(true) > 1) {
            let what = if shown(false) == 0 {
                "leaves out"
            } else {
                "writes more than once"
            };
            return Err(format!(
                "the chat template {what} message {} ({}), so Loft cannot tell which tokens are its answer; {TRAIN_ON_ALL}",
                i + 1,
                m.role
            ));
        }
    }

    let mut fragments = Vec::with_capacity(found.len() + 1);
    let mut at = 0;
    for f in &found {
        fragments.push(&marked_text[at..f.range.start]);
        at = f.range.end;
    }
    fragments.push(&marked_text[at..]);
    let options: Vec<Vec<&str>> = found
        .iter()
        .map(|f| variants(pieces[f.piece].text))
        .collect();
    let located = walk(&text, &fragments, &options).map_err(|k| {
        match found.get(k).or(found.last()) {
            Some(f) => {
                let i = pieces[f.piece].message;
                format!(
                    "the chat template changes the text of message {} ({}) or the text around it, so Loft cannot tell exactly which tokens are the answer; {TRAIN_ON_ALL}",
                    i + 1,
                    messages[i].role
                )
            }
            None => format!("the chat template renders this conversation differently when its messages change, so Loft cannot tell exactly which tokens are the answer; {TRAIN_ON_ALL}"),
        }
    })?;

    for (f, range) in found.iter().zip(located) {
        let piece = &pieces[f.piece];
        let r = &mut ranges[piece.message];
        if piece.reasoning {
            let before = text[..range.start].trim_end();
            let start = match before.strip_suffix(THINK_OPEN) {
                Some(kept) if piece.think_tag => kept.len(),
                _ => range.start,
            };
            r.reasoning = Some(start..range.end);
        } else {
            r.content.push(range);
        }
    }
    Ok(Aligned {
        text,
        messages: ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_distinct_and_as_given_first() {
        assert_eq!(variants("a"), ["a"]);
        assert_eq!(
            variants("\n a \n"),
            ["\n a \n", "a", "a \n", "\n a", " a ", " a \n", "\n a "]
        );
    }

    #[test]
    fn reasoning_splits_at_the_last_close_tag() {
        let r = split_reasoning("<think>\nwhy\n</think>\n\nanswer").unwrap();
        assert_eq!(
            (r.before, r.reasoning, r.answer),
            ("<think>", "\nwhy\n", "\n\nanswer")
        );
        let r = split_reasoning("why</think>a</think>b").unwrap();
        assert_eq!((r.before, r.reasoning, r.answer), ("", "why</think>a", "b"));
        assert!(split_reasoning("no tags").is_none());
    }

    #[test]
    fn the_walk_backtracks_over_ambiguous_whitespace() {
        // "x\n" as given fits before the "\n" markup, but then "\n\nz" fits nowhere: the walk goes
        // back and takes "x".
        let real = "<a>x\n\n\nz|";
        let options = [variants("x\n"), variants("\n\nz")];
        let ranges = walk(real, &["<a>", "\n", "|"], &options).unwrap();
        assert_eq!(&real[ranges[0].clone()], "x");
        assert_eq!(&real[ranges[1].clone()], "\n\nz");
        assert_eq!(walk("<a>x<b>", &["<a>", "<c>"], &[variants("x")]), Err(0));
        assert_eq!(walk("<a>", &["<a>"], &[]), Ok(vec![]));
        assert_eq!(walk("<a>z", &["<a>"], &[]), Err(0));
    }
}
