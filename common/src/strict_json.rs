//! JSON as the API reads it: one value per key. `serde_json` keeps the last of duplicate
//! keys, so `{"kill_payment": false, "kill_payment": true}` would kill a payment that a
//! reviewer (or a proxy, or a log) reading the first key believes was left alone.
//! Defends against such request smuggling between parsers that disagree.

use std::{collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The body parsed as JSON, refused if any object in it (at any depth) repeats a key.
/// The error says which key, for a 400.
pub fn parse(body: &[u8]) -> Result<serde_json::Value, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    Unique
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Walks a JSON document, failing on the first repeated key of an object.
#[derive(Clone, Copy)]
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Unique)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_at_any_depth_is_refused_naming_it() {
        let e = parse(br#"{"kill_payment": false, "kill_payment": true}"#).unwrap_err();
        assert!(e.contains("duplicate key \"kill_payment\""), "{e}");
        let e = parse(br#"{"a": [{"b": 1, "b": 2}]}"#).unwrap_err();
        assert!(e.contains("\"b\""), "{e}");
        // Escapes spell the same key.
        assert!(parse(br#"{"a": 1, "\u0061": 2}"#).is_err());
    }

    #[test]
    fn everything_else_parses_as_serde_json_does() {
        let v =
            parse(br#"{"a": 1, "b": {"a": 2}, "c": [1, "x", null, true, 1.5, {"a": 3}]}"#).unwrap();
        assert_eq!(v["b"]["a"], 2);
        assert!(parse(b"[1, 2]").is_ok());
        assert!(parse(b"{").is_err());
        assert!(parse(b"{} {}").is_err());
        assert!(parse(br#""just a string""#).is_ok());
    }
}
