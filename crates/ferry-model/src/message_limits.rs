//! Bounds on a message request's *shape*, checked on the wire bytes before the model is built, so
//! that no request costs more memory than its size warrants (issue #14): a 1 MiB body of
//! `{"contacts":[{},{},…]}` is ~500,000 structs once decoded.
//!
//! The same bounds apply to the JSON API ([`scan_json`], before `serde` builds the model) and to
//! gRPC (`ferry_proto::wire`, before prost decodes):
//! - every list or object (a JSON array or object, a protobuf repeated field or map) has at most
//!   [`MAX_ENTRIES`] entries;
//! - one message has at most [`MAX_VALUES`] values (JSON: every object, array and scalar;
//!   protobuf: every embedded message, repeated element and map entry);
//! - JSON nests at most [`MAX_DEPTH`] levels;
//! - (JSON) no object names a key twice, at any level: one rule for every key (a duplicated `to`,
//!   `type` or `messaging_product` alike).
//!
//! Every valid message is far inside these bounds (the largest lists the rules allow are 30
//! product items and 10 list rows); a request outside them is refused with 1009 (`field` names the
//! list) and nothing of it is built.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::ApiError;

/// Most entries of any one list or object in a message.
pub const MAX_ENTRIES: usize = 100;
/// Most values in one message (see the module docs for what counts).
pub const MAX_VALUES: usize = 5_000;
/// Deepest JSON nesting of a message (objects and arrays).
pub const MAX_DEPTH: usize = 32;

/// The refusal of a list with `n` entries (more than [`MAX_ENTRIES`]) at `field`.
pub fn too_many_entries(field: &str, n: usize) -> ApiError {
    ApiError::invalid(
        field,
        format_args!(
            "at most {MAX_ENTRIES} entries in one list or object (ferry's bound on a message's shape), got {n}"
        ),
    )
}

/// The refusal of a message with more than [`MAX_VALUES`] values.
pub fn too_many_values(field: &str) -> ApiError {
    ApiError::invalid(
        field,
        format_args!(
            "at most {MAX_VALUES} values (objects, lists, entries) in one message (ferry's bound on a message's \
             shape), got more"
        ),
    )
}

/// Checks a JSON request body against the bounds of the module docs without building anything
/// (keys are held only while their object is open). `Ok` also when the body is not valid JSON:
/// the parser says what is wrong with it.
///
/// # Errors
/// [`too_many_entries`], [`too_many_values`], too deep, or a duplicate key (1009, field = the
/// path of the object).
pub fn scan_json(body: &[u8]) -> Result<(), ApiError> {
    let mut scanner = Scanner { values: 0, path: Vec::new(), error: None };
    let mut de = serde_json::Deserializer::from_slice(body);
    // serde_json's own recursion limit (128) is above MAX_DEPTH: ours answers first.
    let _ = Node { s: &mut scanner, depth: 0 }.deserialize(&mut de);
    match scanner.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

struct Scanner {
    values: usize,
    path: Vec<Seg>,
    error: Option<ApiError>,
}

impl Scanner {
    fn field(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => {
                    out.push_str(&format!("[{i}]"));
                }
            }
        }
        out
    }

    /// Records the refusal; the returned serde error only stops the walk.
    fn fail<E: de::Error>(&mut self, e: ApiError) -> E {
        self.error = Some(e);
        E::custom("bound exceeded")
    }

    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.values += 1;
        if self.values > MAX_VALUES {
            let e = too_many_values(&self.field());
            return Err(self.fail(e));
        }
        Ok(())
    }
}

struct Node<'a> {
    s: &'a mut Scanner,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Node<'_> {
    fn open<E: de::Error>(&mut self) -> Result<(), E> {
        self.s.count()?;
        if self.depth >= MAX_DEPTH {
            let e = ApiError::invalid(
                self.s.field(),
                format_args!("at most {MAX_DEPTH} levels of nested objects and lists in one message"),
            );
            return Err(self.s.fail(e));
        }
        Ok(())
    }
}

macro_rules! scalar {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<(), E> { self.s.count() })*
    };
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any json value")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.s.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.open()?;
        let mut n = 0;
        loop {
            if n < MAX_ENTRIES {
                self.s.path.push(Seg::Index(n));
                let more = seq.next_element_seed(Node { s: &mut *self.s, depth: self.depth + 1 })?;
                self.s.path.pop();
                if more.is_none() {
                    break;
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            n += 1;
        }
        if n > MAX_ENTRIES {
            let e = too_many_entries(&self.s.field(), n);
            return Err(self.s.fail(e));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.open()?;
        let mut keys: Vec<String> = Vec::new();
        let mut n = 0;
        while let Some(key) = map.next_key::<String>()? {
            if n < MAX_ENTRIES {
                if keys.contains(&key) {
                    let field = join(&self.s.field(), &key);
                    let e =
                        ApiError::invalid(field, format_args!("each key at most once in an object, got `{key}` twice"));
                    return Err(self.s.fail(e));
                }
                self.s.path.push(Seg::Key(key.clone()));
                map.next_value_seed(Node { s: &mut *self.s, depth: self.depth + 1 })?;
                self.s.path.pop();
                keys.push(key);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            n += 1;
        }
        if n > MAX_ENTRIES {
            let e = too_many_entries(&self.s.field(), n);
            return Err(self.s.fail(e));
        }
        Ok(())
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        scan_json(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn valid_shapes_pass_and_broken_json_is_left_to_the_parser() {
        assert!(scan_json(br#"{"to":"1","type":"text","text":{"body":"hi"}}"#).is_ok());
        assert!(scan_json(b"{not json").is_ok());
        let list = format!("{{\"c\":[{}]}}", vec!["{}"; MAX_ENTRIES].join(","));
        assert!(scan_json(list.as_bytes()).is_ok());
    }

    #[test]
    fn a_list_over_the_bound_is_refused_naming_it_and_its_length() {
        let body = format!("{{\"type\":\"contacts\",\"contacts\":[{}]}}", vec!["{}"; 5000].join(","));
        let e = err(&body);
        assert_eq!((e.code.code(), e.field.as_str()), (1009, "contacts"));
        assert!(e.details.contains("at most 100 entries") && e.details.contains("got 5000"), "{}", e.details);
        let e = err(&format!("{{\"a\":[{{\"b\":[{}]}}]}}", vec!["1"; 101].join(",")));
        assert_eq!(e.field, "a[0].b");
    }

    #[test]
    fn too_many_values_and_too_deep_are_refused() {
        let inner = vec!["1"; 99].join(",");
        let lists = vec![format!("[{inner}]"); 60].join(",");
        let e = err(&format!("{{\"a\":[{lists}]}}"));
        assert!(e.details.contains("at most 5000 values"), "{}", e.details);
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let e = err(&format!("{{\"a\":{deep}}}"));
        assert!(e.details.contains("at most 32 levels"), "{}", e.details);
    }

    #[test]
    fn a_duplicate_key_is_refused_at_any_level() {
        for (body, field) in [
            (r#"{"to":"1","to":"2"}"#, "to"),
            (r#"{"messaging_product":"whatsapp","messaging_product":"whatsapp"}"#, "messaging_product"),
            (r#"{"type":"text","type":"image"}"#, "type"),
            (r#"{"text":{"body":"a","body":"b"}}"#, "text.body"),
        ] {
            let e = err(body);
            assert_eq!((e.code.code(), e.field.as_str()), (1009, field), "{body}");
            assert!(e.details.contains("twice"), "{}", e.details);
        }
    }
}
