//! A request's protobuf bytes checked before prost decodes them (issue #14).
//!
//! prost builds everything it reads: a 4 MiB `SendBatch` of 838,000 five-byte `SendRequest`s is
//! ~1.4 GB of structs before any rule can count them, and a `Send` with 2 million empty
//! `contacts` ~1.35 GB. [`scan`] walks the wire bytes against the schema (the descriptor set
//! reflection serves) without building anything and refuses, before the decode:
//! - malformed protobuf (a truncated varint or length, a field whose wire type does not fit the
//!   schema, groups) and strings that are not UTF-8: 1009 with what was wrong, where prost would
//!   answer `INTERNAL`;
//! - the bounds of `ferry_model::message_limits` (the JSON API's): at most
//!   [`MAX_ENTRIES`](ferry_model::message_limits::MAX_ENTRIES) entries in any repeated field or
//!   map, at most [`MAX_VALUES`](ferry_model::message_limits::MAX_VALUES) embedded messages and
//!   entries per `SendRequest`;
//! - a `SendBatchRequest` with more than [`MAX_BATCH`] messages, or more than
//!   [`MAX_BATCH_VALUES`] values in all.
//!
//! It also returns an estimate of what the decoded request will take in memory
//! ([`Scanned::decoded_bytes`]), which the gRPC port charges to its in-flight budget.

use std::collections::HashMap;
use std::sync::OnceLock;

use ferry_model::message_limits::{MAX_ENTRIES, MAX_VALUES, too_many_entries, too_many_values};
use ferry_model::{ApiError, ErrorCode};
use prost_types::field_descriptor_proto::{Label, Type};

use crate::v1;

/// Most messages in one `SendBatch`.
pub const MAX_BATCH: usize = 1_000;
/// Most values (embedded messages, repeated elements, map entries) in one `SendBatchRequest`, all
/// its messages together: 50 per message on average; a batch of many big messages is split.
pub const MAX_BATCH_VALUES: usize = 50_000;

/// What [`scan`] found in a request that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Embedded messages, repeated elements and map entries.
    pub values: usize,
    /// Estimated bytes of the decoded request: the Rust size of every heap-allocated element plus
    /// every string's bytes (an upper-bound estimate, not a measurement).
    pub decoded_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    Str,
    Bytes,
    Message(usize),
}

#[derive(Debug)]
struct Field {
    number: u32,
    name: String,
    kind: Kind,
    repeated: bool,
}

#[derive(Debug)]
struct MessageType {
    name: String,
    fields: Vec<Field>,
    /// Rust size of one value, charged per repeated element (singular embedded messages are
    /// inline in their parent).
    size: usize,
}

struct Schema {
    types: Vec<MessageType>,
    by_name: HashMap<String, usize>,
}

/// The Rust size of the generated types a request can hold (others: a conservative default).
fn rust_size(name: &str) -> usize {
    macro_rules! sizes {
        ($($t:ident),*) => {
            match name {
                $(concat!("ferry.v1.", stringify!($t)) => std::mem::size_of::<v1::$t>(),)*
                // Map entries: a (String, String) in a HashMap, with its control byte.
                n if n.ends_with("Entry") => 2 * std::mem::size_of::<String>() + 8,
                _ => 512,
            }
        };
    }
    sizes!(
        SendRequest,
        TextMessage,
        MediaMessage,
        MediaProvider,
        ContactsMessage,
        Contact,
        ContactAddress,
        ContactEmail,
        ContactName,
        ContactOrg,
        ContactPhone,
        ContactUrl,
        LocationMessage,
        TemplateMessage,
        TemplateLanguage,
        TemplateComponent,
        TemplateParameter,
        TemplateCurrency,
        TemplateDateTime,
        InteractiveMessage,
        InteractiveHeader,
        InteractiveText,
        InteractiveAction,
        InteractiveButton,
        InteractiveReply,
        InteractiveSection,
        InteractiveRow,
        InteractiveProductItem,
        InteractiveActionParameters,
        FlowActionPayload,
        ReactionMessage,
        AddressMessage,
        SavedAddress,
        Context,
        SendBatchRequest
    )
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("a valid descriptor set");
        let mut raw = Vec::new();
        fn collect(
            prefix: &str,
            m: &prost_types::DescriptorProto,
            out: &mut Vec<(String, prost_types::DescriptorProto)>,
        ) {
            let name = format!("{prefix}.{}", m.name());
            for nested in &m.nested_type {
                collect(&name, nested, out);
            }
            out.push((name, m.clone()));
        }
        for file in &set.file {
            for m in &file.message_type {
                collect(file.package(), m, &mut raw);
            }
        }
        let by_name: HashMap<String, usize> = raw.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        let types = raw
            .iter()
            .map(|(name, m)| MessageType {
                name: name.clone(),
                size: rust_size(name),
                fields: m
                    .field
                    .iter()
                    .map(|f| Field {
                        number: f.number() as u32,
                        name: f.name().to_owned(),
                        repeated: f.label() == Label::Repeated,
                        kind: match f.r#type() {
                            Type::Double | Type::Fixed64 | Type::Sfixed64 => Kind::Fixed64,
                            Type::Float | Type::Fixed32 | Type::Sfixed32 => Kind::Fixed32,
                            Type::String => Kind::Str,
                            Type::Bytes => Kind::Bytes,
                            // A type outside ferry's protos (none today) is skipped like bytes.
                            Type::Message | Type::Group => match by_name.get(f.type_name().trim_start_matches('.')) {
                                Some(&i) => Kind::Message(i),
                                None => Kind::Bytes,
                            },
                            _ => Kind::Varint,
                        },
                    })
                    .collect(),
            })
            .collect();
        Schema { types, by_name }
    })
}

/// Checks `bytes`, an encoded message of type `full_name` (e.g. `ferry.v1.SendBatchRequest`),
/// against the bounds of the module docs.
///
/// # Errors
/// 1009 (`INVALID_ARGUMENT`) naming the field: malformed bytes, a list over its bound, too many
/// values, too many messages in a batch. Panics on a `full_name` the schema does not have.
pub fn scan(full_name: &str, bytes: &[u8]) -> Result<Scanned, ApiError> {
    let schema = schema();
    let ty = *schema.by_name.get(full_name).unwrap_or_else(|| panic!("{full_name} is not in ferry's protos"));
    let mut w = Walker { schema, values: 0, decoded: schema.types[ty].size, path: Vec::new(), message_values: 0 };
    w.message(ty, bytes)?;
    Ok(Scanned { values: w.values, decoded_bytes: w.decoded })
}

struct Walker<'s> {
    schema: &'s Schema,
    values: usize,
    /// Values in the current `SendRequest` (a batch resets it per message).
    message_values: usize,
    decoded: usize,
    path: Vec<String>,
}

fn malformed(field: String, what: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        field.clone(),
        format!(
            "the request is not valid protobuf{}: {what}",
            if field.is_empty() { String::new() } else { format!(" at `{field}`") }
        ),
    )
}

impl Walker<'_> {
    fn field(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            if !out.is_empty() && !seg.starts_with('[') {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }

    fn varint(&self, bytes: &[u8], at: &mut usize) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = bytes.get(*at) else {
                return Err(malformed(self.field(), "a varint ends early"));
            };
            *at += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed(self.field(), "a varint longer than 10 bytes"))
    }

    fn take<'b>(&self, bytes: &'b [u8], at: &mut usize, n: u64) -> Result<&'b [u8], ApiError> {
        let end = usize::try_from(n).ok().and_then(|n| at.checked_add(n)).filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            return Err(malformed(self.field(), format_args!("a length of {n} bytes runs past the end")));
        };
        let out = &bytes[*at..end];
        *at = end;
        Ok(out)
    }

    fn count(&mut self) -> Result<(), ApiError> {
        self.values += 1;
        self.message_values += 1;
        if self.message_values > MAX_VALUES {
            return Err(too_many_values(&self.field()));
        }
        if self.values > MAX_BATCH_VALUES {
            return Err(ApiError::invalid(
                self.field(),
                format_args!("at most {MAX_BATCH_VALUES} values (objects, lists, entries) in one batch: split it"),
            ));
        }
        Ok(())
    }

    fn message(&mut self, ty: usize, bytes: &[u8]) -> Result<(), ApiError> {
        let schema = self.schema;
        let t = &schema.types[ty];
        let batch = t.name == "ferry.v1.SendBatchRequest";
        // Occurrences of each repeated field so far (fields are few: a linear list).
        let mut counts: Vec<(u32, usize)> = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let key = self.varint(bytes, &mut at)?;
            let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
            if number == 0 {
                return Err(malformed(self.field(), "field number 0"));
            }
            let Some(f) = t.fields.iter().find(|f| f.number == number) else {
                // Unknown field: skipped (as prost does), groups refused.
                match wire {
                    0 => drop(self.varint(bytes, &mut at)?),
                    1 => drop(self.take(bytes, &mut at, 8)?),
                    5 => drop(self.take(bytes, &mut at, 4)?),
                    2 => {
                        let n = self.varint(bytes, &mut at)?;
                        self.take(bytes, &mut at, n)?;
                    }
                    _ => return Err(malformed(self.field(), format_args!("field {number} has wire type {wire}"))),
                }
                continue;
            };
            let index = if f.repeated {
                let slot = match counts.iter_mut().find(|(n, _)| *n == number) {
                    Some((_, c)) => c,
                    None => {
                        counts.push((number, 0));
                        &mut counts.last_mut().expect("just pushed").1
                    }
                };
                *slot += 1;
                Some(*slot - 1)
            } else {
                None
            };
            let limit = if batch { MAX_BATCH } else { MAX_ENTRIES };
            // Past its bound, a repeated field's elements are only skipped (and counted, to say
            // how many there were).
            let skip = index.is_some_and(|i| i >= limit);
            let expected = match f.kind {
                Kind::Varint => 0,
                Kind::Fixed64 => 1,
                Kind::Fixed32 => 5,
                _ => 2,
            };
            // A repeated scalar may come packed (length-delimited).
            let packed = f.repeated && wire == 2 && matches!(f.kind, Kind::Varint | Kind::Fixed32 | Kind::Fixed64);
            if wire != expected && !packed {
                self.path.push(f.name.clone());
                let e = malformed(self.field(), format_args!("wire type {wire} where {expected} was expected"));
                self.path.pop();
                return Err(e);
            }
            if packed {
                let n = self.varint(bytes, &mut at)?;
                self.take(bytes, &mut at, n)?;
                self.decoded += n as usize * 8;
                continue;
            }
            match f.kind {
                Kind::Varint => drop(self.varint(bytes, &mut at)?),
                Kind::Fixed64 => drop(self.take(bytes, &mut at, 8)?),
                Kind::Fixed32 => drop(self.take(bytes, &mut at, 4)?),
                Kind::Str | Kind::Bytes => {
                    let n = self.varint(bytes, &mut at)?;
                    let s = self.take(bytes, &mut at, n)?;
                    if skip {
                        continue;
                    }
                    if f.kind == Kind::Str && std::str::from_utf8(s).is_err() {
                        self.path.push(f.name.clone());
                        let e = malformed(self.field(), "a string that is not valid UTF-8");
                        self.path.pop();
                        return Err(e);
                    }
                    if f.repeated {
                        self.count()?;
                        self.decoded += std::mem::size_of::<String>();
                    }
                    self.decoded += s.len();
                }
                Kind::Message(sub) => {
                    let n = self.varint(bytes, &mut at)?;
                    let inner = self.take(bytes, &mut at, n)?;
                    if skip {
                        continue;
                    }
                    // A repeated wrapper of the same name (`contacts.contacts`) is one level in
                    // the JSON shape: named once.
                    let same = self.path.last().is_some_and(|p| *p == f.name);
                    let pushed = usize::from(!same) + usize::from(index.is_some());
                    if !same {
                        self.path.push(f.name.clone());
                    }
                    if let Some(i) = index {
                        self.path.push(format!("[{i}]"));
                    }
                    if batch {
                        self.message_values = 0;
                    }
                    self.count()?;
                    if f.repeated {
                        self.decoded += schema.types[sub].size;
                    }
                    self.message(sub, inner)?;
                    for _ in 0..pushed {
                        self.path.pop();
                    }
                }
            }
        }
        for &(number, n) in &counts {
            let f = t.fields.iter().find(|f| f.number == number).expect("counted fields are known");
            if batch && (n > MAX_BATCH) {
                return Err(ApiError::invalid(
                    f.name.clone(),
                    format_args!("between 1 and {MAX_BATCH} messages in one batch, got {n}"),
                ));
            }
            if !batch && n > MAX_ENTRIES {
                let same = self.path.last().is_some_and(|p| *p == f.name);
                if !same {
                    self.path.push(f.name.clone());
                }
                let e = too_many_entries(&self.field(), n);
                if !same {
                    self.path.pop();
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn text(to: &str) -> v1::SendRequest {
        v1::SendRequest {
            to: to.into(),
            content: Some(v1::send_request::Content::Text(v1::TextMessage { body: "hi".into(), preview_url: false })),
            ..Default::default()
        }
    }

    #[test]
    fn valid_requests_pass_with_an_estimate() {
        let one = text("15550001").encode_to_vec();
        let s = scan("ferry.v1.SendRequest", &one).unwrap();
        assert!(s.decoded_bytes >= std::mem::size_of::<v1::SendRequest>(), "{s:?}");
        let batch = v1::SendBatchRequest { messages: vec![text("1"); MAX_BATCH] }.encode_to_vec();
        let s = scan("ferry.v1.SendBatchRequest", &batch).unwrap();
        assert_eq!(s.values, MAX_BATCH + MAX_BATCH, "each message and its text");
        assert!(s.decoded_bytes >= MAX_BATCH * std::mem::size_of::<v1::SendRequest>());
    }

    #[test]
    fn a_batch_of_too_many_messages_is_refused_before_decoding() {
        // 838,000 five-byte SendRequest{to:"1"} in 4 MiB: the input.
        let one = v1::SendRequest { to: "1".into(), ..Default::default() };
        let batch = v1::SendBatchRequest { messages: vec![one; 838_000] }.encode_to_vec();
        assert!(batch.len() <= 4 * 1024 * 1024);
        let e = scan("ferry.v1.SendBatchRequest", &batch).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "messages"));
        assert!(e.details.contains("between 1 and 1000 messages in one batch, got 838000"), "{}", e.details);
    }

    #[test]
    fn a_list_over_the_bound_is_refused_naming_it() {
        let contacts = v1::ContactsMessage { contacts: vec![v1::Contact::default(); 2_000] };
        let r = v1::SendRequest {
            to: "1".into(),
            content: Some(v1::send_request::Content::Contacts(contacts)),
            ..Default::default()
        };
        let e = scan("ferry.v1.SendRequest", &r.encode_to_vec()).unwrap_err();
        assert_eq!(e.field, "contacts");
        assert!(e.details.contains("at most 100 entries") && e.details.contains("got 2000"), "{}", e.details);
        // In a batch, the path names the message.
        let batch = v1::SendBatchRequest { messages: vec![text("1"), r] }.encode_to_vec();
        let e = scan("ferry.v1.SendBatchRequest", &batch).unwrap_err();
        assert_eq!(e.field, "messages[1].contacts");
    }

    #[test]
    fn malformed_bytes_and_bad_utf8_are_invalid_argument() {
        for (bytes, what) in [
            (vec![0x0a, 0x05, b'1'], "runs past the end"),
            (vec![0x0a, 0x02, 0xff, 0xfe], "not valid UTF-8"),
            (vec![0x08, 0x01], "wire type 0 where 2"),
            (vec![0x0a], "ends early"),
            (vec![0xfb, 0x01], "wire type 3"),
        ] {
            let e = scan("ferry.v1.SendRequest", &bytes).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParameter, "{bytes:?}");
            assert!(e.details.contains(what), "{bytes:?}: {}", e.details);
            assert!(v1::SendRequest::decode(bytes.as_slice()).is_err(), "prost accepts {bytes:?}");
        }
        // Unknown fields are skipped, as prost does.
        assert!(scan("ferry.v1.SendRequest", &[0xa0, 0x06, 0x01]).is_ok());
    }
}
