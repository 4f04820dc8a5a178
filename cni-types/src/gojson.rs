//! JSON decoding with Go's `encoding/json` rules for struct fields.
//!
//! Runtimes and hand-written configs rely on Go's decoder: an object key matches a struct field
//! exactly or, failing that, case-insensitively (`HostPort` fills `hostPort`); when several keys
//! land on one field the last one wins; `null` leaves a field at its default; unknown keys are
//! ignored. serde matches keys exactly and rejects duplicates, so every typed decode in this
//! workspace goes through [`from_value`], which rewrites keys to the field names serde expects,
//! using the field list serde hands to `deserialize_struct`, at every nesting level.

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Decodes `value` into `T`, matching struct fields the way Go does. A type error names the
/// path of the offending value (`ipam.ranges[0][0].subnet: invalid type …`).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    from_ref(&value)
}

/// Decodes a borrowed `value` into `T` as [`from_value`] does, without copying the value (a
/// configuration may be decoded several times, each into its own struct).
pub fn from_ref<T: DeserializeOwned>(value: &Value) -> Result<T, serde_json::Error> {
    T::deserialize(Folded(value)).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix(PATH_MARK).and_then(|rest| rest.split_once(PATH_MARK)) {
            Some((path, msg)) => de::Error::custom(format!("{path}: {msg}")),
            None => e,
        }
    })
}

/// Brackets the path carried inside an error while it travels up through nested values.
const PATH_MARK: char = '\u{1}';

/// Adds one path segment (`key` or `[3]`) in front of the path an inner error carries.
fn with_segment(err: serde_json::Error, segment: &str) -> serde_json::Error {
    let text = err.to_string();
    let (inner_path, msg) = match text.strip_prefix(PATH_MARK).and_then(|rest| rest.split_once(PATH_MARK)) {
        Some((p, m)) => (p.to_string(), m.to_string()),
        None => (String::new(), text),
    };
    let sep = if inner_path.is_empty() || inner_path.starts_with('[') { "" } else { "." };
    de::Error::custom(format!("{PATH_MARK}{segment}{sep}{inner_path}{PATH_MARK}{msg}"))
}

/// Parses `bytes` as JSON and decodes it into `T`, matching struct fields the way Go does.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    from_value(serde_json::from_slice(bytes)?)
}

/// One character folded as Go's decoder folds field names: upper case of lower case, so that
/// `ſ` (U+017F) folds to `S` and the Kelvin sign (U+212A) to `K`, as they do in Go.
fn go_fold(c: char) -> char {
    let mut lower = c.to_lowercase();
    let l = match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    };
    let mut upper = l.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => l,
    }
}

/// Whether `key` names `field` under Go's rules (exact, else case folding, `ſ` and `K` included).
pub fn go_key_matches(key: &str, field: &str) -> bool {
    if key.is_ascii() {
        return key.eq_ignore_ascii_case(field);
    }
    key.chars().map(go_fold).eq(field.chars().map(go_fold))
}

/// Rewrites the keys of `map` that Go would decode into one of `fields` to that field's exact
/// name, keeping the value Go keeps (the last non-`null` one); other keys stay as they are. After
/// this, an exact lookup, a case-insensitive one and [`from_value`] all see the same value, so a
/// value validated is the value used.
pub fn canonicalize(map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::with_capacity(map.len());
    for (key, value) in map {
        let field = fields.iter().find(|f| **f == key).or_else(|| fields.iter().find(|f| go_key_matches(&key, f)));
        match field {
            Some(_) if value.is_null() => {}
            Some(field) => {
                out.insert((*field).to_string(), value);
            }
            None => {
                out.insert(key, value);
            }
        }
    }
    out
}

/// The entries of a struct's object with keys renamed to the field names, `null`s dropped, the
/// last of several keys that name one field kept (in the first one's place), and unknown keys left
/// for serde to ignore.
fn fold_keys<'a>(map: &'a Map<String, Value>, fields: &'static [&'static str]) -> Vec<(&'a str, &'a Value)> {
    let mut out: Vec<(&'a str, &'a Value)> = Vec::with_capacity(map.len());
    let mut placed: Vec<Option<usize>> = vec![None; fields.len()];
    for (key, value) in map {
        if value.is_null() {
            continue;
        }
        let field = fields.iter().position(|f| f == key).or_else(|| fields.iter().position(|f| go_key_matches(key, f)));
        match field {
            Some(i) => match placed[i] {
                Some(at) => out[at].1 = value,
                None => {
                    placed[i] = Some(out.len());
                    out.push((fields[i], value));
                }
            },
            None => out.push((key.as_str(), value)),
        }
    }
    out
}

/// The JSON field names of the struct `T` decodes into (what serde hands to `deserialize_struct`).
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe;
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fields probed")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }
    impl<'de> Deserializer<'de> for Probe {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

struct Folded<'a>(&'a Value);

struct FoldedMap<'a> {
    iter: std::vec::IntoIter<(&'a str, &'a Value)>,
    pending: Option<(&'a str, &'a Value)>,
}

struct FoldedSeq<'a> {
    iter: std::slice::Iter<'a, Value>,
    index: usize,
}

impl<'de> MapAccess<'de> for FoldedMap<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((key, value)) => {
                self.pending = Some((key, value));
                seed.deserialize(de::value::BorrowedStrDeserializer::<serde_json::Error>::new(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let (key, value) = self.pending.take().ok_or_else(|| de::Error::custom("value requested before key"))?;
        seed.deserialize(Folded(value)).map_err(|e| with_segment(e, key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

impl<'de> SeqAccess<'de> for FoldedSeq<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Self::Error> {
        let Some(value) = self.iter.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(Folded(value)).map(Some).map_err(|e| with_segment(e, &format!("[{index}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

fn visit_entries<'de, V: Visitor<'de>>(
    entries: Vec<(&'de str, &'de Value)>,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    visitor.visit_map(FoldedMap { iter: entries.into_iter(), pending: None })
}

fn visit_map<'de, V: Visitor<'de>>(map: &'de Map<String, Value>, visitor: V) -> Result<V::Value, serde_json::Error> {
    visit_entries(map.iter().map(|(k, v)| (k.as_str(), v)).collect(), visitor)
}

macro_rules! forward_to_value {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(visitor)
        })*
    };
}

impl<'de> Deserializer<'de> for Folded<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_map(map, visitor),
            Value::Array(items) => visitor.visit_seq(FoldedSeq { iter: items.iter(), index: 0 }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Folded(other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_entries(fold_keys(map, fields), visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visit_map(map, visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(FoldedSeq { iter: items.iter(), index: 0 }),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_value! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_identifier deserialize_ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default)]
    struct Mapping {
        #[serde(rename = "hostPort")]
        host_port: i64,
        #[serde(rename = "containerPort")]
        container_port: i64,
        protocol: String,
        #[serde(rename = "hostIP")]
        host_ip: String,
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default)]
    struct Outer {
        name: String,
        mappings: Vec<Mapping>,
        inner: Option<Box<Outer>>,
        flag: bool,
        extra: std::collections::BTreeMap<String, Value>,
    }

    #[test]
    fn keys_match_case_insensitively_at_every_level() {
        let v = json!({"NAME": "a", "Mappings": [{"HostPort": 80, "ContainerPort": 8080, "Protocol": "tcp", "HostIp": "1.2.3.4"}],
                       "inner": {"Name": "b"}});
        let o: Outer = from_value(v).unwrap();
        assert_eq!(o.name, "a");
        assert_eq!(
            o.mappings[0],
            Mapping { host_port: 80, container_port: 8080, protocol: "tcp".into(), host_ip: "1.2.3.4".into() }
        );
        assert_eq!(o.inner.unwrap().name, "b");
    }

    #[test]
    fn last_duplicate_wins_and_null_is_default() {
        let o: Outer = from_value(json!({"name": "x", "NAME": "y", "flag": null})).unwrap();
        assert_eq!(o.name, "y");
        assert!(!o.flag);
    }

    #[test]
    fn folds_like_go_beyond_ascii() {
        assert!(go_key_matches("\u{17f}ubnet", "subnet"));
        assert!(go_key_matches("\u{212a}ey", "key"));
        assert!(!go_key_matches("nam\u{e9}", "name"));
        let o: Outer = from_value(json!({"name": "a", "NAME": "b", "N\u{41c}ME": "c"})).unwrap();
        assert_eq!(o.name, "b");
        assert_eq!(fields_of::<Mapping>(), ["hostPort", "containerPort", "protocol", "hostIP"]);
        let m = canonicalize(
            json!({"Name": "a", "x": null, "name": "b", "NAME": null, "Other": 1}).as_object().unwrap().clone(),
            &["name"],
        );
        assert_eq!(Value::Object(m), json!({"name": "b", "x": null, "Other": 1}));
    }

    #[test]
    fn map_keys_are_not_folded_and_unknown_keys_ignored() {
        let o: Outer = from_value(json!({"extra": {"Key": 1, "key": 2}, "unknownThing": [1, 2]})).unwrap();
        assert_eq!(o.extra.len(), 2);
    }

    #[test]
    fn type_errors_are_reported() {
        let err = from_value::<Outer>(json!({"flag": "true"})).unwrap_err();
        assert!(err.to_string().starts_with("flag: invalid type"), "{err}");
        let err = from_value::<Outer>(json!({"mappings": [{}, {"hostPort": "80"}]})).unwrap_err();
        assert!(err.to_string().starts_with("mappings[1].hostPort: invalid type"), "{err}");
        let err = from_value::<Outer>(json!({"inner": {"inner": {"flag": 1}}})).unwrap_err();
        assert!(err.to_string().starts_with("inner.inner.flag: invalid type"), "{err}");
    }
}
