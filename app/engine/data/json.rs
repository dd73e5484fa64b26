//! A JSON value that keeps every key of an object in order, duplicates included, so that Loft can
//! warn about them (serde_json, like Python's `json`, silently keeps the last one).

use std::collections::HashSet;
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

    /// An object's keys and values in order, duplicates included (empty for other values).
    pub(crate) fn entries(&self) -> &[(String, Json)] {
        match self {
            Json::Object(entries) => entries,
            _ => &[],
        }
    }

    pub(crate) fn keys(&self) -> Vec<&str> {
        match self {
            Json::Object(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Paths (`messages[1].content`) of keys that appear more than once in one object, anywhere inside,
    /// in the order the repeats appear, each once. Linear in the size of the value: one record of 16 MiB
    /// can hold an object of a million keys.
    pub(crate) fn duplicate_keys(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut reported = HashSet::new();
        let mut path = String::new();
        self.collect_duplicates(&mut path, &mut found, &mut reported);
        found
    }

    fn collect_duplicates(
        &self,
        path: &mut String,
        found: &mut Vec<String>,
        reported: &mut HashSet<String>,
    ) {
        let len = path.len();
        match self {
            Json::Object(entries) => {
                let mut keys = SeenKeys::with_capacity(entries.len());
                for (key, value) in entries {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    if !keys.insert(key) && !reported.contains(path.as_str()) {
                        reported.insert(path.clone());
                        found.push(path.clone());
                    }
                    if matches!(value, Json::Object(_) | Json::Array(_)) {
                        value.collect_duplicates(path, found, reported);
                    }
                    path.truncate(len);
                }
            }
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if matches!(item, Json::Object(_) | Json::Array(_)) {
                        use std::fmt::Write;
                        let _ = write!(path, "[{i}]");
                        item.collect_duplicates(path, found, reported);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The keys of one object seen so far: a short list for the few keys records usually have, a hash set
/// past that, so an object of many keys costs linear time, not quadratic.
enum SeenKeys<'a> {
    Few(Vec<&'a str>),
    Many(HashSet<&'a str>),
}

impl<'a> SeenKeys<'a> {
    const FEW: usize = 16;

    fn with_capacity(n: usize) -> Self {
        if n <= Self::FEW {
            SeenKeys::Few(Vec::with_capacity(n))
        } else {
            SeenKeys::Many(HashSet::with_capacity(n))
        }
    }

    /// Whether `key` is new (and now seen).
    fn insert(&mut self, key: &'a str) -> bool {
        match self {
            SeenKeys::Few(keys) if keys.contains(&key) => false,
            SeenKeys::Few(keys) => {
                keys.push(key);
                true
            }
            SeenKeys::Many(keys) => keys.insert(key),
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
    fn each_repeated_key_is_reported_once_in_the_order_it_repeats() {
        let v: Json = serde_json::from_str(
            r#"{"x": 1, "m": [{"k": 1, "k": 2, "k": 3}], "x": 2, "x": 3, "m": [{"k": 0}]}"#,
        )
        .unwrap();
        assert_eq!(v.duplicate_keys(), ["m[0].k", "x", "m"]);
        // The same path in two copies of an object is one finding.
        let v: Json =
            serde_json::from_str(r#"{"a": {"b": 1, "b": 2}, "a": {"b": 1, "b": 2}}"#).unwrap();
        assert_eq!(v.duplicate_keys(), ["a.b", "a"]);
    }

    #[test]
    fn an_object_of_many_keys_is_checked_in_linear_time() {
        // 300 000 keys in one object (about 4 MB of JSON): a quadratic check would compare 4.5e10 pairs
        // and stall validation; the hash set makes it one pass.
        let n = 300_000;
        let mut text = String::from("{");
        for i in 0..n {
            text.push_str(&format!("\"k{i}\": {i}, "));
        }
        text.push_str("\"k7\": 0, \"k299999\": 1, \"k7\": 2}");
        let v: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(v.keys().len(), n + 3);
        assert_eq!(v.duplicate_keys(), ["k7", "k299999"]);
        assert_eq!(v.get("k7"), Some(&Json::Number(2.0)));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = "[".repeat(100_000);
        let err = serde_json::from_str::<Json>(&text).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
