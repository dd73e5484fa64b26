//! Chat templates: the model's own Jinja template (chat_template.jinja, tokenizer_config.json, or
//! GGUF metadata) rendered with minijinja in its sandbox, in the runtime transformers gives
//! `apply_chat_template` (built in [`super::jinja`]), so Loft produces exactly the text transformers
//! produces. A model without a template gets ChatML, marked as a fallback. Errors say whether the
//! template is broken, cannot render a conversation, or refuses it on purpose.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::gguf_file::Value as GgufValue;
use minijinja::value::{Serde, Value};
use minijinja::Environment;
use serde::{Deserialize, Serialize};

use super::error::{read_json, ModelError, Result};
use super::jinja;
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
    /// tokenizer_config.json's `chat_template` (a string, or a list of named templates of which
    /// "default" is used). bos/eos come from tokenizer_config.json, else special_tokens_map.json
    /// beside it (older repositories keep them there).
    pub fn from_model_files(
        tokenizer_config: Option<&Path>,
        chat_template_jinja: Option<&Path>,
    ) -> Result<ChatTemplate> {
        let config = match tokenizer_config {
            Some(path) => Some((path, read_json(path)?)),
            None => None,
        };
        let source = match (chat_template_jinja, &config) {
            (Some(path), _) => {
                Some(std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?)
            }
            (None, Some((path, c))) => template_from_config(path, c.get("chat_template"))?,
            (None, None) => None,
        };
        let specials = config
            .as_ref()
            .and_then(|(path, _)| special_tokens_map(path));
        let token = |key: &str| -> String {
            [config.as_ref().map(|(_, c)| c), specials.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|c| c.get(key).and_then(token_text))
                .unwrap_or_default()
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
    pub fn from_gguf(md: &HashMap<String, GgufValue>, special: &SpecialTokens) -> ChatTemplate {
        let text =
            |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
        match md.get("tokenizer.chat_template") {
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

    /// Whether the template compiles, without rendering anything (for showing a broken template
    /// as soon as a model is picked).
    pub fn check(&self) -> Result<()> {
        compiled(&self.source).map(|_| ())
    }

    /// The conversation as the model reads it; with `add_generation_prompt`, followed by the start of
    /// an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = compiled(&self.source)?;
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| render_error(&e))?;
        // The variables transformers passes: tools and documents are there, as None.
        let context = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template.render(context).map_err(|e| render_error(&e))
    }
}

fn template_from_config(path: &Path, value: Option<&serde_json::Value>) -> Result<Option<String>> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        // Named templates: transformers uses "default" unless asked for another (like "tool_use");
        // with no "default" it refuses, and Loft falls back to ChatML, which the UI shows.
        Some(serde_json::Value::Array(items)) => Ok(items.iter().find_map(|t| {
            (t.get("name")?.as_str()? == "default")
                .then(|| t.get("template")?.as_str().map(str::to_string))?
        })),
        Some(_) => Err(ModelError::field(
            path,
            "chat_template",
            "must be a string or a list of {\"name\", \"template\"} objects",
        )),
    }
}

/// special_tokens_map.json beside tokenizer_config.json, if there is a readable one.
fn special_tokens_map(tokenizer_config: &Path) -> Option<serde_json::Value> {
    let path = tokenizer_config.with_file_name("special_tokens_map.json");
    path.is_file().then(|| read_json(&path).ok()).flatten()
}

/// A special token in tokenizer_config.json: a string, or an object with `content`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled template with its environment. Encoding a dataset renders the same template many
/// times per conversation, so compiled templates are kept (a handful per process at most).
fn compiled(source: &str) -> Result<Arc<Environment<'static>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Environment<'static>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = lock().get(source) {
        return Ok(env.clone());
    }
    let env = Arc::new(jinja::environment(TEMPLATE_NAME, source).map_err(|e| syntax_error(&e))?);
    let mut map = lock();
    if map.len() >= 16 {
        map.clear();
    }
    map.insert(source.to_string(), env.clone());
    Ok(env)
}

const FALLBACK_HINT: &str = "Loft will use ChatML if you choose the fallback";

fn at_line(e: &minijinja::Error) -> String {
    e.line().map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn detail(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn syntax_error(e: &minijinja::Error) -> ModelError {
    ModelError::Template(format!(
        "{}{}. The model's chat template is broken; {FALLBACK_HINT}",
        at_line(e),
        detail(e)
    ))
}

fn render_error(e: &minijinja::Error) -> ModelError {
    if let Some(raised) = jinja::raised_message(e) {
        return ModelError::Template(format!(
            "the model's template refuses this conversation: {raised}"
        ));
    }
    ModelError::Template(format!(
        "{}{}. The model's chat template cannot render this conversation; {FALLBACK_HINT}",
        at_line(e),
        detail(e)
    ))
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

    fn user(content: &str) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    #[test]
    fn fallback_is_chatml() {
        let t = ChatTemplate::fallback();
        let messages = [
            ChatMessage::new("system", "Be brief."),
            user("Hi"),
            ChatMessage::new("assistant", "Hello!"),
        ];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        assert_eq!(
            t.render(&[user("Hi")], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.origin, TemplateOrigin::Fallback);
    }

    #[test]
    fn raise_exception_becomes_a_clear_error() {
        let t = template("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}ok");
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err();
        assert!(matches!(err, ModelError::Template(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("refuses this conversation: Conversation must start with the user"),
            "{msg}"
        );
        assert_eq!(t.render(&[user("x")], false).unwrap(), "ok");
    }

    #[test]
    fn python_string_methods_and_trim_blocks_work() {
        let t = template("{{ bos_token }}{% for m in messages %}\n  {% if m.role.startswith('us') %}[{{ m.content.strip() | upper }}|{{ m.content.split(',')[-1] }}]{% endif %}\n{% endfor %}{{ eos_token }}\n");
        assert_eq!(
            t.render(&[user("  hi,there ")], false).unwrap(),
            "<s>[HI,THERE|there ]</s>",
            "block lines vanish, the template's final newline is dropped"
        );
    }

    #[test]
    fn loop_controls_namespace_and_none_tools() {
        let t = template(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{% if ns.n > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}|{{ tools is none }}|{{ documents is none }}",
        );
        let messages = [ChatMessage::new("system", "S"), user("A"), user("B")];
        assert_eq!(t.render(&messages, false).unwrap(), "A|True|True");
    }

    /// A Llama 3 style header: today's date from strftime_now, the system message by index.
    #[test]
    fn llama3_style_template_with_date_and_indexing() {
        let t = template(concat!(
            "{{- bos_token }}\n",
            "{%- if messages[0]['role'] == 'system' %}\n",
            "    {%- set system_message = messages[0]['content']|trim %}\n",
            "    {%- set messages = messages[1:] %}\n",
            "{%- else %}\n",
            "    {%- set system_message = \"\" %}\n",
            "{%- endif %}\n",
            "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n",
            "{{- \"Today Date: \" + strftime_now(\"%d %b %Y\") + \"\\n\\n\" }}\n",
            "{{- system_message }}\n",
            "{{- \"<|eot_id|>\" }}\n",
            "{%- for message in messages %}\n",
            "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n",
            "{%- endfor %}\n",
            "{%- if add_generation_prompt %}\n",
            "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n",
            "{%- endif %}\n",
        ));
        let messages = [ChatMessage::new("system", " Be kind. "), user("Hi ")];
        // 2024-07-26 13:05:09 UTC.
        let text = crate::engine::clock::with_fixed_now(1_721_999_109, || {
            t.render(&messages, true).unwrap()
        });
        assert_eq!(
            text,
            "<s><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024\n\nBe kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let t = template(concat!(
            "{{ {'a': [1, 2], 'b': '<é>', 'c': {}} | tojson }}\n",
            "{{ {'z': 1, 'a': [true, none]} | tojson(indent=2, sort_keys=true) }}\n",
            "{{ 'é😀' | tojson(ensure_ascii=true) }} {{ [1, {'k': 'v'}] | tojson(separators=[',', ':']) }}",
        ));
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"a\": [1, 2], \"b\": \"<é>\", \"c\": {}}\n{\n  \"a\": [\n    true,\n    null\n  ],\n  \"z\": 1\n}\n\"\\u00e9\\ud83d\\ude00\" [1,{\"k\":\"v\"}]"
        );
        let msg = template("{{ 1 | tojson(colour=1) }}")
            .render(&[], false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let t = template("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}\n[{{ m.content }}]{%- endgeneration %}\n{% else %}({{ m.content }}){% endif %}{% endfor %}");
        let messages = [user("q"), ChatMessage::new("assistant", "a")];
        assert_eq!(t.render(&messages, false).unwrap(), "(q)[a]");
    }

    #[test]
    fn broken_template_is_an_error_not_a_panic() {
        let t = template("{% for m in messages %}\n{{ m.content }\n{% endfor %}");
        let msg = t.render(&[], false).unwrap_err().to_string();
        assert!(
            msg.contains("chat template")
                && msg.contains("line 2")
                && msg.contains("broken")
                && msg.contains("fallback"),
            "{msg}"
        );
        assert!(t.check().is_err());
        assert!(template("{% if %}").check().is_err());
        let msg = template("{{ messages[0].content.nope() }}")
            .render(&[user("x")], false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot render"), "{msg}");
    }

    #[test]
    fn config_forms_list_templates_and_token_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(&path, r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}{{ eos_token }}"}]}"#).unwrap();
        let t = ChatTemplate::from_model_files(Some(&path), None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "D<s></s>");
        assert_eq!(t.origin, TemplateOrigin::Model);
        std::fs::write(
            &path,
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_model_files(Some(&path), None).unwrap();
        assert_eq!(t.origin, TemplateOrigin::Fallback, "no default template");
        std::fs::write(&path, r#"{"eos_token": "</s>"}"#).unwrap();
        let t = ChatTemplate::from_model_files(Some(&path), None).unwrap();
        assert_eq!(t.origin, TemplateOrigin::Fallback);
        assert_eq!(
            t.eos_token, "<|im_end|>",
            "ChatML ends turns with its own token"
        );
        let jinja = dir.path().join("chat_template.jinja");
        std::fs::write(&jinja, "J{{ bos_token }}").unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"bos_token": {"content": "<|b|>"}}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_model_files(Some(&path), Some(&jinja)).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "J<|b|>");
        std::fs::write(&path, r#"{"chat_template": 3}"#).unwrap();
        let msg = ChatTemplate::from_model_files(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("chat_template"), "{msg}");
        assert_eq!(
            ChatTemplate::from_model_files(None, None).unwrap(),
            ChatTemplate::fallback()
        );
    }

    #[test]
    fn gguf_metadata_template_and_tokens() {
        let mut md = HashMap::new();
        let special = SpecialTokens {
            bos: Some(("<s>".into(), 1)),
            eos: Some(("</s>".into(), 2)),
            pad: None,
        };
        let t = ChatTemplate::from_gguf(&md, &special);
        assert_eq!(t.origin, TemplateOrigin::Fallback);
        md.insert(
            "tokenizer.chat_template".to_string(),
            GgufValue::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
        );
        let t = ChatTemplate::from_gguf(&md, &special);
        assert_eq!(t.origin, TemplateOrigin::Model);
        assert_eq!(t.render(&[user("x")], false).unwrap(), "<s>x</s>");
    }
}
