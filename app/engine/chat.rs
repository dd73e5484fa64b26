//! Chat templates: the model's own Jinja template (tokenizer_config.json, chat_template.jinja, or GGUF
//! metadata) rendered with minijinja in a sandbox, configured as transformers configures Jinja2, so that
//! Loft produces exactly the text transformers' `apply_chat_template` produces. A model without a
//! template gets ChatML, marked as a fallback.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value as GgufValue;
use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use super::error::{read_json, ModelError, Result};
use super::tokenizer::SpecialTokens;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TemplateOrigin {
    /// The model's own template.
    Model,
    /// ChatML, because the model has none: the UI says so.
    Fallback,
}

pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Debug, Clone, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub origin: TemplateOrigin,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn fallback() -> ChatTemplate {
        ChatTemplate {
            source: CHATML.into(),
            origin: TemplateOrigin::Fallback,
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        }
    }

    /// From a Hugging Face folder: `chat_template.jinja` (transformers 5) wins over
    /// tokenizer_config.json's `chat_template` (a string, or a list of named templates).
    pub fn from_model_files(
        tokenizer_config: Option<&Path>,
        jinja: Option<&Path>,
    ) -> Result<ChatTemplate> {
        let config = match tokenizer_config {
            Some(path) => Some((path, read_json(path)?)),
            None => None,
        };
        let token = |key: &str| -> String {
            config
                .as_ref()
                .and_then(|(_, c)| c.get(key))
                .and_then(token_text)
                .unwrap_or_default()
        };
        let source = match jinja {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?),
            None => match &config {
                Some((path, c)) => template_from_config(path, c.get("chat_template"))?,
                None => None,
            },
        };
        Ok(match source {
            Some(source) => ChatTemplate {
                source,
                origin: TemplateOrigin::Model,
                bos_token: token("bos_token"),
                eos_token: token("eos_token"),
            },
            None => ChatTemplate {
                bos_token: token("bos_token"),
                ..ChatTemplate::fallback()
            },
        })
    }

    /// From GGUF metadata (`tokenizer.chat_template`).
    pub fn from_gguf(
        metadata: &HashMap<String, GgufValue>,
        special: &SpecialTokens,
    ) -> ChatTemplate {
        let text =
            |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
        match metadata.get("tokenizer.chat_template") {
            Some(GgufValue::String(source)) => ChatTemplate {
                source: source.clone(),
                origin: TemplateOrigin::Model,
                bos_token: text(&special.bos),
                eos_token: text(&special.eos),
            },
            _ => ChatTemplate {
                bos_token: text(&special.bos),
                ..ChatTemplate::fallback()
            },
        }
    }

    /// The conversation as the model reads it; with `add_generation_prompt`, followed by the start of
    /// an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error(&e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let template = env
            .template_from_str(&self.source)
            .map_err(|e| template_error(&e))?;
        let context = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        template.render(context).map_err(|e| template_error(&e))
    }
}

fn template_from_config(path: &Path, value: Option<&serde_json::Value>) -> Result<Option<String>> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            let named = |name: &str| {
                items.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == name)
                        .then(|| t.get("template")?.as_str().map(str::to_string))?
                })
            };
            Ok(named("default").or_else(|| {
                items
                    .first()
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string))
            }))
        }
        Some(_) => Err(ModelError::field(
            path,
            "chat_template",
            "must be a string or a list of {name, template}",
        )),
    }
}

/// A special token in tokenizer_config.json: a string, or an object with `content`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn template_error(e: &minijinja::Error) -> ModelError {
    let location = e
        .line()
        .map(|l| format!(" (template line {l})"))
        .unwrap_or_default();
    let message = match e.kind() {
        ErrorKind::InvalidOperation if e.detail().is_some() => {
            e.detail().unwrap_or_default().to_string()
        }
        _ => e.to_string(),
    };
    ModelError::Template(format!(
        "{message}{location}; if the model's template is broken, Loft can use the ChatML fallback instead"
    ))
}

/// `raise_exception(msg)`: how templates refuse a conversation (e.g. roles out of order).
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: today's date (UTC) for the formats templates use (Llama 3 writes
/// "Cutting Knowledge Date" and "Today Date" with it).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%Y", &format!("{y:04}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Days since 1970-01-01 → (year, month, day).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False)` — `", "` and
/// `": "` separators, no HTML escaping — optionally indented.
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, minijinja::Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            origin: TemplateOrigin::Model,
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn fallback_is_chatml() {
        let t = ChatTemplate::fallback();
        let text = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.origin, TemplateOrigin::Fallback);
    }

    #[test]
    fn raise_exception_becomes_a_clear_error() {
        let t = template("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}ok");
        let msg = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("Conversation must start with the user"),
            "{msg}"
        );
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], false).unwrap(),
            "ok"
        );
    }

    #[test]
    fn python_string_methods_and_trim_blocks_work() {
        let t = template("{{ bos_token }}{% for m in messages %}\n  {% if m.role.startswith('us') %}[{{ m.content.strip() | upper }}]{% endif %}\n{% endfor %}{{ eos_token }}");
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], false)
                .unwrap(),
            "<s>[HI]</s>"
        );
    }

    #[test]
    fn llama3_style_date_and_tojson() {
        let t = template(
            "{{ strftime_now('%d %b %Y') | length > 5 }} {{ {'a': [1, 2], 'b': '<x>'} | tojson }}",
        );
        assert_eq!(
            t.render(&[], false).unwrap(),
            "True {\"a\": [1, 2], \"b\": \"<x>\"}"
        );
    }

    #[test]
    fn broken_template_is_an_error_not_a_panic() {
        let msg = template("{% for m in messages %}{{ m.content }")
            .render(&[], false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("chat template") && msg.contains("ChatML fallback"),
            "{msg}"
        );
    }

    #[test]
    fn config_forms_list_templates_and_token_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(&path, r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}]}"#).unwrap();
        let t = ChatTemplate::from_model_files(Some(&path), None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "D<s>");
        assert_eq!(t.eos_token, "</s>");
        std::fs::write(&path, r#"{"eos_token": "</s>"}"#).unwrap();
        assert_eq!(
            ChatTemplate::from_model_files(Some(&path), None)
                .unwrap()
                .origin,
            TemplateOrigin::Fallback
        );
        let jinja = dir.path().join("chat_template.jinja");
        std::fs::write(&jinja, "J").unwrap();
        assert_eq!(
            ChatTemplate::from_model_files(Some(&path), Some(&jinja))
                .unwrap()
                .source,
            "J"
        );
    }
}
