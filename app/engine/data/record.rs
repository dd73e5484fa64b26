//! One JSON record → a conversation: detect the format (instruction, chat, ShareGPT), check every field,
//! and say precisely what is wrong and how to fix it.

use super::json::Json;
use super::report::ErrorKind;
use super::Format;
use crate::engine::chat::ChatMessage;

/// A problem with one record's content. Location (row, line) is added by the caller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub kind: ErrorKind,
    pub field: Option<String>,
    pub message: String,
}

fn problem(kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        kind,
        field: Some(field.into()),
        message: message.into(),
    }
}

/// A record turned into messages; `fields[i]` names where message `i`'s text came from
/// (`messages[2].content`, `output`…), so later findings can point at it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub messages: Vec<ChatMessage>,
    pub fields: Vec<String>,
}

/// The format of a record (when it can be told) and its messages, or every problem found in it.
pub(crate) fn interpret(json: &Json) -> (Option<Format>, Result<Parsed, Vec<Problem>>) {
    let Json::Object(_) = json else {
        return (
            None,
            Err(vec![Problem {
                kind: ErrorKind::RecordShape,
                field: None,
                message: format!(
                    "this record is {}, not an object; each record must be a JSON object such as {{\"messages\": [{{\"role\": \"user\", \"content\": \"…\"}}, {{\"role\": \"assistant\", \"content\": \"…\"}}]}}",
                    json.kind()
                ),
            }]),
        );
    };
    let chat = json.get("messages").is_some();
    let sharegpt = json.get("conversations").is_some();
    let instruction = json.get("instruction").is_some() || json.get("output").is_some();
    let found: Vec<&str> = [
        (chat, "messages"),
        (sharegpt, "conversations"),
        (instruction, "instruction/output"),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, name)| *name)
    .collect();
    if found.len() > 1 {
        return (
            None,
            Err(vec![Problem {
                kind: ErrorKind::AmbiguousFormat,
                field: None,
                message: format!(
                    "this record has the fields of two formats ({}); keep one: `messages` (chat), `conversations` (ShareGPT) or `instruction`/`input`/`output`",
                    found.join(" and ")
                ),
            }]),
        );
    }
    if chat {
        (Some(Format::Chat), read_turns(json, Format::Chat))
    } else if sharegpt {
        (Some(Format::Sharegpt), read_turns(json, Format::Sharegpt))
    } else if instruction {
        (Some(Format::Instruction), read_instruction(json))
    } else {
        (None, Err(vec![unknown_format(json)]))
    }
}

fn unknown_format(json: &Json) -> Problem {
    let keys = json.keys();
    let has = |k: &str| keys.contains(&k);
    let hint = if has("prompt") && (has("completion") || has("response")) {
        "; for prompt/completion records, rename `prompt` to `instruction` and `completion` to `output`".to_string()
    } else if has("question") && has("answer") {
        "; for question/answer records, rename `question` to `instruction` and `answer` to `output`"
            .to_string()
    } else if has("input") && (has("response") || has("target")) {
        "; rename `input` to `instruction` and the answer field to `output`".to_string()
    } else if has("role") && has("content") {
        "; this looks like a single message: wrap a whole conversation as {\"messages\": [ … ]}"
            .to_string()
    } else if has("text") {
        "; plain `text` records (pretraining style) have no assistant turn to learn; write them as instruction/output or chat messages".to_string()
    } else if let Some(key) = json.entries().iter().find_map(|(k, v)| {
        matches!(v, Json::Array(items) if items.iter().any(|i| matches!(i, Json::Object(_))))
            .then_some(k)
    }) {
        format!("; the records seem to be inside `{key}`: put them at the top level (a .json file holding the array itself, or one per line in .jsonl)")
    } else if let Some((typo, meant)) = keys.iter().find_map(|k| {
        ["messages", "conversations", "instruction", "output"]
            .iter()
            .find(|m| near(k, m))
            .map(|m| (*k, *m))
    }) {
        format!("; did you mean `{meant}` instead of `{typo}`?")
    } else {
        String::new()
    };
    let listed = if keys.is_empty() {
        "it has no fields".to_string()
    } else {
        let shown: Vec<String> = keys.iter().take(8).map(|k| format!("`{k}`")).collect();
        format!(
            "its fields are {}{}",
            shown.join(", "),
            if keys.len() > 8 { ", …" } else { "" }
        )
    };
    Problem {
        kind: ErrorKind::UnknownFormat,
        field: None,
        message: format!(
            "not a format Loft reads ({listed}); use {{\"messages\": [{{\"role\", \"content\"}}, …]}} (chat), {{\"conversations\": [{{\"from\", \"value\"}}, …]}} (ShareGPT) or {{\"instruction\", \"input\", \"output\"}}{hint}"
        ),
    }
}

/// Whether two short names are one typo apart (edit distance ≤ 2, case-insensitive).
fn near(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    if a == b {
        return false;
    }
    if a.len().abs_diff(b.len()) > 2 || a.len() > 40 {
        return false;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

/// Text of a `content`/`value` field: a string, or an array of text parts (OpenAI style).
fn text_of(value: &Json, field: &str) -> Result<String, Problem> {
    match value {
        Json::String(s) => Ok(s.clone()),
        Json::Array(parts) => {
            let mut out = String::new();
            for (i, part) in parts.iter().enumerate() {
                let here = format!("{field}[{i}]");
                match (part.get("type"), part.get("text")) {
                    (Some(Json::String(t)), Some(Json::String(text))) if t == "text" => out.push_str(text),
                    (Some(Json::String(t)), _) if t != "text" => {
                        return Err(problem(
                            ErrorKind::WrongType,
                            here,
                            format!("a `{t}` part: Loft trains on text only; remove non-text parts"),
                        ))
                    }
                    _ => {
                        return Err(problem(
                            ErrorKind::WrongType,
                            here,
                            format!(
                                "{} where a text part {{\"type\": \"text\", \"text\": \"…\"}} should be; write the content as a string",
                                part.kind()
                            ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Json::Null => Err(problem(
            ErrorKind::WrongType,
            field,
            "null, but every message needs text (tool calls and function results are not supported); write the text as a string or remove the message",
        )),
        other => Err(problem(
            ErrorKind::WrongType,
            field,
            format!("{}, expected a string; put the text in quotes", other.kind()),
        )),
    }
}

fn read_turns(json: &Json, format: Format) -> Result<Parsed, Vec<Problem>> {
    let (list, role_key, text_key) = match format {
        Format::Chat => ("messages", "role", "content"),
        _ => ("conversations", "from", "value"),
    };
    let Some(Json::Array(items)) = json.get(list) else {
        let kind = json.get(list).map(Json::kind).unwrap_or("missing");
        return Err(vec![problem(
            ErrorKind::WrongType,
            list,
            format!("`{list}` is {kind}, expected an array of {{\"{role_key}\": …, \"{text_key}\": …}} objects"),
        )]);
    };
    let mut problems = Vec::new();
    let mut messages = Vec::with_capacity(items.len());
    let mut fields = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let here = format!("{list}[{i}]");
        if !matches!(item, Json::Object(_)) {
            problems.push(problem(
                ErrorKind::WrongType,
                here,
                format!(
                    "{}, expected an object {{\"{role_key}\": …, \"{text_key}\": …}}",
                    item.kind()
                ),
            ));
            continue;
        }
        let role = match item.get(role_key) {
            None => {
                let hint = match format {
                    Format::Chat if item.get("from").is_some() => " (this message uses ShareGPT's `from`/`value`: use `role`/`content` inside `messages`, or rename `messages` to `conversations`)",
                    Format::Sharegpt if item.get("role").is_some() => " (this message uses `role`/`content`: use `from`/`value` inside `conversations`, or rename `conversations` to `messages`)",
                    _ => "",
                };
                problems.push(problem(
                    ErrorKind::MissingField,
                    format!("{here}.{role_key}"),
                    format!("no `{role_key}`; every message needs one{hint}"),
                ));
                None
            }
            Some(Json::String(r)) => match map_role(r, format) {
                Ok(role) => Some(role),
                Err(message) => {
                    problems.push(problem(
                        ErrorKind::UnknownRole,
                        format!("{here}.{role_key}"),
                        message,
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(problem(
                    ErrorKind::WrongType,
                    format!("{here}.{role_key}"),
                    format!("{}, expected a string", other.kind()),
                ));
                None
            }
        };
        let field = format!("{here}.{text_key}");
        let text = match item.get(text_key) {
            None => {
                problems.push(problem(
                    ErrorKind::MissingField,
                    field.clone(),
                    format!("no `{text_key}`; every message needs its text"),
                ));
                None
            }
            Some(value) => match text_of(value, &field) {
                Ok(text) => Some(text),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
        };
        if let (Some(role), Some(content)) = (role, text) {
            messages.push(ChatMessage {
                role: role.to_string(),
                content,
            });
            fields.push(field);
        }
    }
    if problems.is_empty() {
        Ok(Parsed { messages, fields })
    } else {
        Err(problems)
    }
}

fn map_role(role: &str, format: Format) -> Result<&'static str, String> {
    match (format, role) {
        (_, "system") => return Ok("system"),
        (Format::Chat, "user") | (Format::Sharegpt, "human" | "user") => return Ok("user"),
        (Format::Chat, "assistant") | (Format::Sharegpt, "gpt" | "assistant") => {
            return Ok("assistant")
        }
        _ => {}
    }
    let allowed = match format {
        Format::Chat => "system, user or assistant",
        _ => "system, human or gpt",
    };
    let lower = role.trim().to_lowercase();
    let (user, assistant) = match format {
        Format::Chat => ("user", "assistant"),
        _ => ("human", "gpt"),
    };
    let hint = match lower.as_str() {
        "system" => "; roles are lowercase: write `system`".to_string(),
        "user" | "human" => format!("; write `{user}`"),
        "assistant" | "gpt" | "bot" | "model" | "ai" | "chatbot" | "chatgpt" => format!("; for the model's answers write `{assistant}`"),
        "tool" | "function" | "ipython" | "observation" => {
            "; tool and function messages are not supported: remove them, or fold their result into the next user message".to_string()
        }
        _ => String::new(),
    };
    Err(format!("unknown role `{role}`; use {allowed}{hint}"))
}

fn read_instruction(json: &Json) -> Result<Parsed, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut text = |key: &str, required: bool| -> Option<String> {
        match json.get(key) {
            Some(Json::String(s)) => Some(s.clone()),
            None | Some(Json::Null) if !required => None,
            None => {
                let hint = json
                    .keys()
                    .into_iter()
                    .find(|k| near(k, key))
                    .map(|k| format!(" (found `{k}`: a typo?)"))
                    .unwrap_or_default();
                let what = if key == "output" {
                    "the answer the model should learn"
                } else {
                    "the task or question"
                };
                problems.push(problem(
                    ErrorKind::MissingField,
                    key,
                    format!("no `{key}`; instruction records need `instruction` and `output` ({what}){hint}"),
                ));
                None
            }
            Some(other) => {
                problems.push(problem(
                    ErrorKind::WrongType,
                    key,
                    format!(
                        "{}, expected a string; put the text in quotes",
                        other.kind()
                    ),
                ));
                None
            }
        }
    };
    let system = text("system", false);
    let instruction = text("instruction", true);
    let input = text("input", false);
    let output = text("output", true);
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(instruction), Some(output)) = (instruction, output) else {
        return Err(problems);
    };
    let mut messages = Vec::with_capacity(3);
    let mut fields = Vec::with_capacity(3);
    if let Some(system) = system.filter(|s| !s.trim().is_empty()) {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system,
        });
        fields.push("system".into());
    }
    let user = match input.filter(|s| !s.trim().is_empty()) {
        Some(input) => format!("{instruction}\n\n{input}"),
        None => instruction,
    };
    messages.push(ChatMessage {
        role: "user".into(),
        content: user,
    });
    fields.push("instruction".into());
    messages.push(ChatMessage {
        role: "assistant".into(),
        content: output,
    });
    fields.push("output".into());
    Ok(Parsed { messages, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<Format>, Result<Parsed, Vec<Problem>>) {
        interpret(&serde_json::from_str::<Json>(text).unwrap())
    }

    #[test]
    fn instruction_becomes_system_user_assistant() {
        let (format, parsed) = parse(
            r#"{"system": "Be brief.", "instruction": "Translate", "input": "bonjour", "output": "hello"}"#,
        );
        assert_eq!(format, Some(Format::Instruction));
        let p = parsed.unwrap();
        let roles: Vec<&str> = p.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(p.messages[1].content, "Translate\n\nbonjour");
        assert_eq!(p.fields, ["system", "instruction", "output"]);
    }

    #[test]
    fn empty_input_and_system_are_left_out() {
        let (_, parsed) =
            parse(r#"{"system": "", "instruction": "Say hi", "input": "", "output": "hi"}"#);
        let p = parsed.unwrap();
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[0].content, "Say hi");
    }

    #[test]
    fn sharegpt_roles_map_to_chat_roles() {
        let (format, parsed) = parse(
            r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}"#,
        );
        assert_eq!(format, Some(Format::Sharegpt));
        let p = parsed.unwrap();
        assert_eq!(p.messages[0].role, "user");
        assert_eq!(p.messages[1].role, "assistant");
        assert_eq!(p.fields[1], "conversations[1].value");
    }

    #[test]
    fn text_parts_are_joined() {
        let (_, parsed) = parse(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": "c"}]}"#,
        );
        assert_eq!(parsed.unwrap().messages[0].content, "ab");
    }

    #[test]
    fn problems_name_the_field() {
        let (_, parsed) = parse(
            r#"{"messages": [{"role": "bot", "content": "x"}, {"role": "user", "content": 3}, {"content": "y"}]}"#,
        );
        let problems = parsed.unwrap_err();
        let got: Vec<(ErrorKind, &str)> = problems
            .iter()
            .map(|p| (p.kind, p.field.as_deref().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (ErrorKind::UnknownRole, "messages[0].role"),
                (ErrorKind::WrongType, "messages[1].content"),
                (ErrorKind::MissingField, "messages[2].role"),
            ]
        );
        assert!(
            problems[0].message.contains("assistant"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn unknown_formats_get_hints() {
        let (format, parsed) = parse(r#"{"prompt": "a", "completion": "b"}"#);
        assert_eq!(format, None);
        let p = &parsed.unwrap_err()[0];
        assert_eq!(p.kind, ErrorKind::UnknownFormat);
        assert!(p.message.contains("rename `prompt`"), "{}", p.message);
        let (_, parsed) = parse(r#"{"mesages": []}"#);
        assert!(parsed.unwrap_err()[0]
            .message
            .contains("did you mean `messages`"));
        let (_, parsed) = parse(r#"{"instruction": "a", "ouptut": "b"}"#);
        let p = &parsed.unwrap_err()[0];
        assert_eq!(
            (p.kind, p.field.as_deref()),
            (ErrorKind::MissingField, Some("output"))
        );
        assert!(p.message.contains("`ouptut`"), "{}", p.message);
    }

    #[test]
    fn two_formats_in_one_record_is_an_error() {
        let (_, parsed) = parse(r#"{"messages": [], "instruction": "a", "output": "b"}"#);
        assert_eq!(parsed.unwrap_err()[0].kind, ErrorKind::AmbiguousFormat);
    }
}
