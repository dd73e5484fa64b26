//! A JSON value that keeps every key of an object in order, duplicates included, so that Loft can
//! warn about them (serde_json, like Python's `json`, silently keeps the last one).

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What a user would call this value, for messages ("a string", "an array"...).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// The value of `key` in an object; with duplicate keys the last one wins, as in serde_json and Python.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn keys(&self) -> Vec<&str> {
        match self {
            Json::Object(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Paths (`messages[1].content`) of keys that appear more than once in one object, anywhere inside,
    /// in the order the repeats appear.
    pub(crate) fn duplicate_keys(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut path = String::new();
        self.collect_duplicates(&mut path, &mut found);
        found
    }

    fn collect_duplicates(&self, path: &mut String, found: &mut Vec<String>) {
        let len = path.len();
        match self {
            Json::Object(entries) => {
                for (i, (key, value)) in entries.iter().enumerate() {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    if entries[..i].iter().any(|(k, _)| k == key) && !found.contains(path) {
                        found.push(path.clone());
                    }
                    if matches!(value, Json::Object(_) | Json::Array(_)) {
                        value.collect_duplicates(path, found);
                    }
                    path.truncate(len);
                }
            }
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if matches!(item, Json::Object(_) | Json::Array(_)) {
                        use std::fmt::Write;
                        let _ = write!(path, "[{i}]");
                        item.collect_duplicates(path, found);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Json>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Json>()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicate_keys_and_reads_the_last() {
        let v: Json = serde_json::from_str(r#"{"a": 1, "b": {"c": 1, "c": 2}, "a": "x"}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Json::String("x".into())));
        // In the order the repeated keys appear.
        assert_eq!(v.duplicate_keys(), vec!["b.c".to_string(), "a".to_string()]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = "[".repeat(100_000);
        let err = serde_json::from_str::<Json>(&text).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
