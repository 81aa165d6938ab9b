//! The CloudEvents view: validation of an inbound event (binary or structured mode, contract §2.2
//! and §2.3) and the binary-mode head that every subscriber receives (§3.2).
//!
//! Budget: never copies the body of a binary event, and never copies the `data` of a structured
//! event whose content type is JSON (the delivered body is a slice of the inbound buffer). The
//! attributes are copied once, into the event head shared by all subscribers. Structured JSON is
//! read with serde_json borrowing from the body; no tree is built.
//!
//! D6: `time` is validated as RFC 3339 and forwarded byte for byte (upstream re-writes it in UTC).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::http::{trim, HeaderRange};

/// Why an event was refused. Every variant is a 400 at the ingress; the text goes to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CeError {
    /// Neither structured nor binary: no `ce-specversion` header and no CloudEvents content type.
    UnknownEncoding,
    Batch,
    UnknownSpecVersion,
    Missing(&'static str),
    Blank(&'static str),
    Invalid(&'static str),
    InvalidExtensionName,
    ExtensionValue,
    Json(String),
    /// More attributes than `--max-attributes` (413).
    TooManyAttributes(usize),
    /// The binary-mode head the event would need is over `--max-header-bytes` (413).
    HeadTooLarge(usize),
}

impl CeError {
    /// Whether the event was refused for a size limit (413) rather than as invalid (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            CeError::TooManyAttributes(_) | CeError::HeadTooLarge(_)
        )
    }
}

/// The bounds an event must fit in, whatever its mode.
#[derive(Debug, Clone, Copy)]
pub struct CeLimits {
    /// Attributes (core and extensions) in one event.
    pub max_attributes: usize,
    /// Bytes of the binary-mode head written for the event (the attribute and passthrough lines).
    pub max_head: usize,
}

impl fmt::Display for CeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CeError::UnknownEncoding => f.write_str(
                "not a CloudEvent: no ce-specversion header and no CloudEvents content type",
            ),
            CeError::Batch => f.write_str("batched CloudEvents are not supported"),
            CeError::UnknownSpecVersion => f.write_str("unknown specversion (want 1.0 or 0.3)"),
            CeError::Missing(a) => write!(f, "required attribute `{a}` is missing"),
            CeError::Blank(a) => write!(f, "attribute `{a}` is empty"),
            CeError::Invalid(a) => write!(f, "attribute `{a}` is invalid"),
            CeError::InvalidExtensionName => f.write_str(
                "attribute names must be lower-case letters and digits (in structured mode) \
                 and an extension must not reuse a core attribute's name",
            ),
            CeError::ExtensionValue => {
                f.write_str("extension value must be a string, boolean or 32-bit integer")
            }
            CeError::Json(e) => write!(f, "structured event is not valid JSON: {e}"),
            CeError::TooManyAttributes(max) => {
                write!(
                    f,
                    "more than {max} attributes in one event (--max-attributes)"
                )
            }
            CeError::HeadTooLarge(max) => write!(
                f,
                "the event's attributes need a head over {max} bytes (--max-header-bytes)"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecVersion {
    V1,
    V03,
}

impl SpecVersion {
    fn parse(v: &[u8]) -> Result<Self, CeError> {
        match v {
            b"1.0" => Ok(SpecVersion::V1),
            b"0.3" => Ok(SpecVersion::V03),
            _ => Err(CeError::UnknownSpecVersion),
        }
    }

    /// Whether `name` (any case) is a core attribute of this version: `specversion`, `id`,
    /// `source`, `type`, `datacontenttype`, `subject`, `time`, `data`, and `dataschema` (1.0) or
    /// `schemaurl` and `datacontentencoding` (0.3). Dispatched on the length first: most names
    /// are out without a byte compared.
    fn is_core(self, name: &[u8]) -> bool {
        let is = |lower: &[u8]| is_named(name, lower);
        match name.len() {
            2 => is(b"id"),
            4 => is(b"type") || is(b"time") || is(b"data"),
            6 => is(b"source"),
            7 => is(b"subject"),
            9 => self == SpecVersion::V03 && is(b"schemaurl"),
            10 => self == SpecVersion::V1 && is(b"dataschema"),
            11 => is(b"specversion"),
            15 => is(b"datacontenttype"),
            19 => self == SpecVersion::V03 && is(b"datacontentencoding"),
            _ => false,
        }
    }
}

/// Whether `name` is `lower` ignoring ASCII case, for a `lower` made of lower-case ASCII letters
/// only (every core attribute name is): for such a letter `l`, `b | 0x20 == l` holds exactly when
/// `b` is `l` or its upper-case form, so the bytes are compared without a branch each (the loop
/// unrolls for a constant `lower`). Same result as `name.eq_ignore_ascii_case(lower)`.
#[inline(always)]
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(u8::is_ascii_lowercase));
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0, |d, (&b, &l)| d | ((b | 0x20) ^ l))
            == 0
}

/// The media type of a Content-Type value: lower-cased comparison, parameters dropped.
fn media_type(ct: &[u8]) -> &[u8] {
    let end = memchr::memchr(b';', ct).unwrap_or(ct.len());
    trim(&ct[..end])
}

/// Writes the binary-mode event headers for an inbound request into `out` (each line ends with
/// CRLF; the caller adds Content-Length and the blank line). Returns the body to deliver and the
/// length of the attribute lines (`Ce-*`, `Content-Type`), which the passthrough lines follow.
///
/// `head` is the frozen request head the ranges point into; `body` the inbound body. The event
/// must fit `limits`: at most `max_attributes` attributes, and a written head of at most
/// `max_head` bytes (a structured event's attributes become header lines: a 1 MB `id` would make
/// a 1 MB head no subscriber accepts).
pub fn write_binary_head(
    head: &[u8],
    headers: &[HeaderRange],
    content_type: Option<&[u8]>,
    body: Bytes,
    out: &mut BytesMut,
    limits: CeLimits,
) -> Result<(Bytes, usize), CeError> {
    let start = out.len();
    let mt = content_type.map(media_type).unwrap_or(b"");
    let data = if mt.eq_ignore_ascii_case(b"application/cloudevents+json") {
        write_structured(&body, out, limits.max_attributes)?
    } else if mt.eq_ignore_ascii_case(b"application/cloudevents-batch+json") {
        return Err(CeError::Batch);
    } else {
        write_binary(head, headers, content_type, out, limits.max_attributes)?;
        body
    };
    let attrs_len = out.len() - start;
    write_passthrough(head, headers, out);
    if out.len() - start > limits.max_head {
        out.truncate(start);
        return Err(CeError::HeadTooLarge(limits.max_head));
    }
    Ok((data, attrs_len))
}

/// Headers that reach subscribers from the inbound request (contract §2.5), plus the W3C trace
/// context, which passes through unchanged while tracing is off (§5.3). Names and all values kept.
pub fn is_passthrough(name: &[u8]) -> bool {
    fn starts_with_ci(s: &[u8], p: &[u8]) -> bool {
        s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
    }
    // Most headers of an event (`ce-*`, `content-*`, `host`) are out at the first letter: `k`,
    // `x`, `r`, `t` or `b` in either case, looked up in a table.
    static FIRST: [bool; 256] = {
        let mut t = [false; 256];
        let letters = b"kxrtbKXRTB";
        let mut i = 0;
        while i < letters.len() {
            t[letters[i] as usize] = true;
            i += 1;
        }
        t
    };
    if !name.first().is_some_and(|&b| FIRST[b as usize]) {
        return false;
    }
    starts_with_ci(name, b"knative-")
        || starts_with_ci(name, b"x-b3-")
        || name.eq_ignore_ascii_case(b"x-request-id")
        || name.eq_ignore_ascii_case(b"retry-after")
        || name.eq_ignore_ascii_case(b"traceparent")
        || name.eq_ignore_ascii_case(b"tracestate")
        || name.eq_ignore_ascii_case(b"baggage")
}

fn write_passthrough(head: &[u8], headers: &[HeaderRange], out: &mut BytesMut) {
    for h in headers {
        let name = &head[h.name.clone()];
        if is_passthrough(name) {
            put_header(out, name, &head[h.value.clone()]);
        }
    }
}

/// One header line, `name: value` and CRLF.
pub(crate) fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// `Ce-` + the attribute name with its first letter upper-cased and the rest lower-cased: the
/// form Go's canonical header keys give, so subscribers see what upstream sends.
///
/// One reservation for the line, the name copied in bulk and its case fixed in place: a
/// `put_u8` per byte of the name (a capacity check each) was most of this function's cost.
fn put_ce_header(out: &mut BytesMut, attr: &[u8], value: &[u8]) {
    out.reserve(3 + attr.len() + 2 + value.len() + 2);
    out.put_slice(b"Ce-");
    let at = out.len();
    out.put_slice(attr);
    if let Some((first, rest)) = out[at..].split_first_mut() {
        first.make_ascii_uppercase();
        // Names are usually lower-case already (structured mode allows nothing else): a scan
        // that writes nothing then.
        if rest.iter().any(u8::is_ascii_uppercase) {
            rest.make_ascii_lowercase();
        }
    }
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

const CE_PREFIX: &[u8] = b"ce-";

fn ce_name<'a>(head: &'a [u8], h: &HeaderRange) -> Option<&'a [u8]> {
    let name = &head[h.name.clone()];
    // `name[..3].eq_ignore_ascii_case(CE_PREFIX)`, spelled out: `c` and `e` in either case (see
    // `is_named`), then exactly `-`.
    match name {
        [c, e, b'-', attr @ ..] if !attr.is_empty() && is_named(&[*c, *e], b"ce") => Some(attr),
        _ => None,
    }
}

/// The attributes every mode must validate, as raw bytes.
#[derive(Default)]
struct Attrs<'a> {
    id: Option<&'a [u8]>,
    source: Option<&'a [u8]>,
    type_: Option<&'a [u8]>,
    subject: Option<&'a [u8]>,
    time: Option<&'a [u8]>,
    dataschema: Option<&'a [u8]>,
    datacontenttype: Option<&'a [u8]>,
}

impl Attrs<'_> {
    fn validate(&self, version: SpecVersion) -> Result<(), CeError> {
        let id = self.id.ok_or(CeError::Missing("id"))?;
        if trim(id).is_empty() {
            return Err(CeError::Blank("id"));
        }
        let source = self.source.ok_or(CeError::Missing("source"))?;
        if !is_uri_reference(source) {
            return Err(CeError::Invalid("source"));
        }
        let ty = self.type_.ok_or(CeError::Missing("type"))?;
        if trim(ty).is_empty() {
            return Err(CeError::Blank("type"));
        }
        if self.subject.is_some_and(|s| s.is_empty()) {
            return Err(CeError::Blank("subject"));
        }
        if self.time.is_some_and(|t| !is_rfc3339(t)) {
            return Err(CeError::Invalid("time"));
        }
        if let Some(s) = self.dataschema {
            let ok = match version {
                SpecVersion::V1 => is_absolute_uri(s),
                SpecVersion::V03 => is_uri_reference(s),
            };
            if !ok {
                return Err(CeError::Invalid("dataschema"));
            }
        }
        if self.datacontenttype.is_some_and(|ct| !is_media_type(ct)) {
            return Err(CeError::Invalid("datacontenttype"));
        }
        Ok(())
    }
}

fn write_binary(
    head: &[u8],
    headers: &[HeaderRange],
    content_type: Option<&[u8]>,
    out: &mut BytesMut,
    max_attributes: usize,
) -> Result<(), CeError> {
    let spec = headers
        .iter()
        .find(|h| ce_name(head, h).is_some_and(|n| is_named(n, b"specversion")))
        .map(|h| &head[h.value.clone()])
        .ok_or(CeError::UnknownEncoding)?;
    let version = SpecVersion::parse(spec)?;
    let mut attrs = Attrs {
        datacontenttype: content_type,
        ..Attrs::default()
    };
    let repeats = Repeats::new(head, headers);
    let mut count = 0;
    for (i, h) in headers.iter().enumerate() {
        let Some(attr) = ce_name(head, h) else {
            continue;
        };
        // Only the first value of a repeated header counts (contract §2.2).
        if repeats.seen_before(i) {
            continue;
        }
        count += 1;
        if count > max_attributes {
            return Err(CeError::TooManyAttributes(max_attributes));
        }
        let value = &head[h.value.clone()];
        // Matched case-insensitively in place (no lower-cased copy of the name per header), on
        // the length first: one compare per header instead of a chain of them.
        let is = |name: &[u8]| is_named(attr, name);
        let v1 = version == SpecVersion::V1;
        let slot = match attr.len() {
            2 if is(b"id") => &mut attrs.id,
            6 if is(b"source") => &mut attrs.source,
            4 if is(b"type") => &mut attrs.type_,
            7 if is(b"subject") => &mut attrs.subject,
            4 if is(b"time") => &mut attrs.time,
            10 if v1 && is(b"dataschema") => &mut attrs.dataschema,
            9 if !v1 && is(b"schemaurl") => &mut attrs.dataschema,
            11 if is(b"specversion") => {
                put_ce_header(out, attr, value);
                continue;
            }
            19 if !v1 && is(b"datacontentencoding") => {
                put_ce_header(out, attr, value);
                continue;
            }
            _ => {
                // An extension: letters and digits only, and no core attribute's name (e.g. a
                // `ce-datacontenttype` header collides with Content-Type). Attributes of the other
                // spec version (`schemaurl` in 1.0, `dataschema` in 0.3) are extensions here, as in
                // structured mode.
                if !attr.iter().all(u8::is_ascii_alphanumeric) || version.is_core(attr) {
                    return Err(CeError::InvalidExtensionName);
                }
                put_ce_header(out, attr, value);
                continue;
            }
        };
        *slot = Some(value);
        put_ce_header(out, attr, value);
    }
    attrs.validate(version)?;
    if let Some(ct) = content_type {
        put_header(out, b"Content-Type", ct);
    }
    Ok(())
}

/// Which `ce-*` headers repeat an earlier one (compared case-insensitively), found in time linear
/// in the headers. A typical event has a handful of `ce-*` headers and compares them pairwise,
/// which allocates nothing; past [`Repeats::PAIRWISE`] they are sorted once instead (one
/// allocation, rare), so that a head of hundreds of attributes costs `n log n`, not `n²`.
struct Repeats<'a> {
    head: &'a [u8],
    headers: &'a [HeaderRange],
    /// Indexes of headers that repeat an earlier one, sorted; `None`: compare pairwise.
    sorted: Option<Vec<usize>>,
}

impl<'a> Repeats<'a> {
    const PAIRWISE: usize = 16;

    fn new(head: &'a [u8], headers: &'a [HeaderRange]) -> Repeats<'a> {
        let ce = headers
            .iter()
            .filter(|h| ce_name(head, h).is_some())
            .count();
        if ce <= Self::PAIRWISE {
            return Repeats {
                head,
                headers,
                sorted: None,
            };
        }
        let lower = |i: &usize| {
            ce_name(head, &headers[*i])
                .unwrap_or_default()
                .iter()
                .map(u8::to_ascii_lowercase)
        };
        let mut order: Vec<usize> = (0..headers.len())
            .filter(|&i| ce_name(head, &headers[i]).is_some())
            .collect();
        // Stable: within one name, the first header stays first.
        order.sort_by(|a, b| lower(a).cmp(lower(b)));
        let mut repeated: Vec<usize> = order
            .windows(2)
            .filter(|w| lower(&w[0]).eq(lower(&w[1])))
            .map(|w| w[1])
            .collect();
        repeated.sort_unstable();
        Repeats {
            head,
            headers,
            sorted: Some(repeated),
        }
    }

    fn seen_before(&self, i: usize) -> bool {
        match &self.sorted {
            Some(repeated) => repeated.binary_search(&i).is_ok(),
            None => {
                let Some(attr) = ce_name(self.head, &self.headers[i]) else {
                    return false;
                };
                self.headers[..i].iter().any(|h| {
                    h.name.len() == CE_PREFIX.len() + attr.len()
                        && ce_name(self.head, h).is_some_and(|n| n.eq_ignore_ascii_case(attr))
                })
            }
        }
    }
}

/// A JSON string borrowed from the body when it has no escapes, owned otherwise.
struct JsonStr<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A structured-mode extension value (contract §3.2): strings pass, booleans become text, numbers
/// become 32-bit integers (fractions truncated), `null` removes the extension.
enum ExtValue<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Int(i32),
    Null,
}

impl<'de> serde::Deserialize<'de> for ExtValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ExtValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, boolean, integer or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ExtValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ExtValue::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ExtValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                i32::try_from(v)
                    .map(ExtValue::Int)
                    .map_err(|_| E::custom("extension integer out of range"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i32::try_from(v)
                    .map(ExtValue::Int)
                    .map_err(|_| E::custom("extension integer out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                let t = v.trunc();
                if t >= f64::from(i32::MIN) && t <= f64::from(i32::MAX) {
                    Ok(ExtValue::Int(t as i32))
                } else {
                    Err(E::custom("extension number out of range"))
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ExtValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ExtValue::Null)
            }
        }
        d.deserialize_any(V)
    }
}

/// The top-level members of a structured event, borrowed from the body.
#[derive(Default)]
struct Structured<'a> {
    specversion: Option<JsonStr<'a>>,
    id: Option<JsonStr<'a>>,
    source: Option<JsonStr<'a>>,
    type_: Option<JsonStr<'a>>,
    subject: Option<JsonStr<'a>>,
    time: Option<JsonStr<'a>>,
    /// The three attributes whose meaning depends on the spec version (core in one, an extension
    /// in the other), kept as extension values until the version is known.
    dataschema: Option<ExtValue<'a>>,
    schemaurl: Option<ExtValue<'a>>,
    datacontentencoding: Option<ExtValue<'a>>,
    datacontenttype: Option<JsonStr<'a>>,
    data: Option<&'a RawValue>,
    data_base64: Option<JsonStr<'a>>,
    /// Allocated only when the event has extensions.
    extensions: Vec<(JsonStr<'a>, ExtValue<'a>)>,
}

/// Reads a structured event's members with the bound on attributes applied while reading: an
/// event of 80,000 members is refused at member `max_attributes + 1`, not after all of them were
/// read. A refusal is left in `refusal` and ends the parse with a placeholder error.
struct StructuredSeed<'c> {
    max_attributes: usize,
    refusal: &'c Cell<Option<CeError>>,
}

/// A CloudEvents attribute name in structured mode: JSON keys are case-sensitive, and the spec
/// allows only lower-case ASCII letters and digits (its 20-character length is a SHOULD, so longer
/// names are accepted).
fn is_attribute_name(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl<'de> DeserializeSeed<'de> for StructuredSeed<'_> {
    type Value = Structured<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StructuredSeed<'_> {
    type Value = Structured<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let refuse = |e: CeError| {
            self.refusal.set(Some(e));
            de::Error::custom("refused")
        };
        let mut ev = Structured::default();
        let mut attributes = 0;
        while let Some(key) = map.next_key::<JsonStr<'de>>()? {
            let name = key.0.as_ref();
            if name == "data" {
                ev.data = Some(map.next_value()?);
                continue;
            }
            if name == "data_base64" {
                ev.data_base64 = Some(map.next_value()?);
                continue;
            }
            attributes += 1;
            if attributes > self.max_attributes {
                return Err(refuse(CeError::TooManyAttributes(self.max_attributes)));
            }
            if !is_attribute_name(name) {
                return Err(refuse(CeError::InvalidExtensionName));
            }
            // A repeated member: the last one wins, as Go's JSON decoding does.
            let slot = match name {
                "specversion" => &mut ev.specversion,
                "id" => &mut ev.id,
                "source" => &mut ev.source,
                "type" => &mut ev.type_,
                "subject" => &mut ev.subject,
                "time" => &mut ev.time,
                "datacontenttype" => &mut ev.datacontenttype,
                "dataschema" => {
                    ev.dataschema = Some(map.next_value()?);
                    continue;
                }
                "schemaurl" => {
                    ev.schemaurl = Some(map.next_value()?);
                    continue;
                }
                "datacontentencoding" => {
                    ev.datacontentencoding = Some(map.next_value()?);
                    continue;
                }
                _ => {
                    let value: ExtValue<'de> = map.next_value()?;
                    ev.extensions.push((key, value));
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(ev)
    }
}

impl<'a> Structured<'a> {
    /// Moves the attributes that belong to the other spec version into the extensions (they are
    /// forwarded as extensions, as binary mode forwards their headers), and keeps one extension
    /// per name, the last, in `n log n` (a quadratic scan per key is what an event with 80,000
    /// extensions exploited).
    fn settle(&mut self, version: SpecVersion) {
        let foreign: [(&'static str, Option<ExtValue<'a>>); 2] = match version {
            SpecVersion::V1 => [
                ("schemaurl", self.schemaurl.take()),
                ("datacontentencoding", self.datacontentencoding.take()),
            ],
            SpecVersion::V03 => [("dataschema", self.dataschema.take()), ("", None)],
        };
        for (name, value) in foreign {
            if let Some(v) = value {
                self.extensions.push((JsonStr(Cow::Borrowed(name)), v));
            }
        }
        if self.extensions.len() > 1 {
            // Stable: among equal names, arrival order is kept, so the last is the last.
            self.extensions.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
            self.extensions.dedup_by(|later, earlier| {
                let same = later.0 .0 == earlier.0 .0;
                if same {
                    std::mem::swap(later, earlier);
                }
                same
            });
        }
    }
}

/// A version-dependent core attribute: only a string is valid.
fn core_str<'s>(
    v: &'s Option<ExtValue<'_>>,
    name: &'static str,
) -> Result<Option<&'s [u8]>, CeError> {
    match v {
        None | Some(ExtValue::Null) => Ok(None),
        Some(ExtValue::Str(s)) => header_safe(s).map(Some),
        Some(_) => Err(CeError::Invalid(name)),
    }
}

fn is_json_media_type(mt: &[u8]) -> bool {
    mt.is_empty()
        || mt.eq_ignore_ascii_case(b"application/json")
        || mt.eq_ignore_ascii_case(b"text/json")
        || mt.eq_ignore_ascii_case(b"application/cloudevents+json")
        || mt.eq_ignore_ascii_case(b"application/cloudevents-batch+json")
}

/// A value that becomes an HTTP header must not carry control characters (a JSON string can
/// encode a CR or LF; writing it would split the header block).
/// The value as a header carries it: without control characters, and without the whitespace
/// around it, which HTTP drops (a field value's OWS). Validating the trimmed value is validating
/// what subscribers receive: a structured `"source": " "` is an empty source, refused as binary
/// mode refuses it, not an event the next hop would answer 400.
fn header_safe(v: &str) -> Result<&[u8], CeError> {
    let b = v.as_bytes();
    if b.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
        Err(CeError::Invalid("attribute value with control characters"))
    } else {
        Ok(trim(b))
    }
}

fn opt_bytes<'s>(v: &'s Option<JsonStr<'_>>) -> Result<Option<&'s [u8]>, CeError> {
    v.as_ref().map(|s| header_safe(&s.0)).transpose()
}

fn write_structured(
    body: &Bytes,
    out: &mut BytesMut,
    max_attributes: usize,
) -> Result<Bytes, CeError> {
    let refusal = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = StructuredSeed {
        max_attributes,
        refusal: &refusal,
    }
    .deserialize(&mut de)
    .and_then(|ev| de.end().map(|()| ev));
    let mut ev = match parsed {
        Ok(ev) => ev,
        Err(e) => {
            return Err(refusal
                .take()
                .unwrap_or_else(|| CeError::Json(e.to_string())))
        }
    };
    let spec = ev
        .specversion
        .take()
        .ok_or(CeError::Missing("specversion"))?;
    let version = SpecVersion::parse(spec.0.as_bytes())?;
    ev.settle(version);
    let schema = match version {
        SpecVersion::V1 => core_str(&ev.dataschema, "dataschema")?,
        SpecVersion::V03 => core_str(&ev.schemaurl, "schemaurl")?,
    };
    let attrs = Attrs {
        id: opt_bytes(&ev.id)?,
        source: opt_bytes(&ev.source)?,
        type_: opt_bytes(&ev.type_)?,
        subject: opt_bytes(&ev.subject)?,
        time: opt_bytes(&ev.time)?,
        dataschema: schema,
        datacontenttype: opt_bytes(&ev.datacontenttype)?,
    };
    attrs.validate(version)?;
    put_ce_header(out, b"specversion", spec.0.as_bytes());
    let named: [(&[u8], Option<&[u8]>); 5] = [
        (b"id", attrs.id),
        (b"source", attrs.source),
        (b"type", attrs.type_),
        (b"subject", attrs.subject),
        (b"time", attrs.time),
    ];
    for (name, value) in named {
        if let Some(v) = value {
            put_ce_header(out, name, v);
        }
    }
    if let Some(v) = attrs.dataschema {
        let name: &[u8] = match version {
            SpecVersion::V1 => b"dataschema",
            SpecVersion::V03 => b"schemaurl",
        };
        put_ce_header(out, name, v);
    }
    for (name, value) in &ev.extensions {
        let n = name.0.as_bytes();
        if n.is_empty() || !n.iter().all(u8::is_ascii_alphanumeric) || version.is_core(n) {
            return Err(CeError::InvalidExtensionName);
        }
        match value {
            ExtValue::Str(s) => put_ce_header(out, n, header_safe(s)?),
            ExtValue::Bool(b) => put_ce_header(out, n, if *b { b"true" } else { b"false" }),
            ExtValue::Int(i) => put_ce_header(out, n, itoa::Buffer::new().format(*i).as_bytes()),
            ExtValue::Null => {}
        }
    }
    if let Some(ct) = attrs.datacontenttype {
        put_header(out, b"Content-Type", ct);
    }
    let mt = attrs.datacontenttype.map(media_type).unwrap_or(b"");
    let base64_03 = version == SpecVersion::V03
        && matches!(&ev.datacontentencoding, Some(ExtValue::Str(e)) if e.eq_ignore_ascii_case("base64"));
    match (ev.data, &ev.data_base64) {
        (Some(_), Some(_)) => Err(CeError::Invalid("data and data_base64 together")),
        (None, Some(b64)) => decode_base64(&b64.0),
        (None, None) => Ok(Bytes::new()),
        (Some(raw), None) if raw.get() == "null" => Ok(Bytes::new()),
        (Some(raw), None) => {
            let text = raw.get();
            if text.starts_with('"') {
                let s: JsonStr<'_> =
                    serde_json::from_str(text).map_err(|e| CeError::Json(e.to_string()))?;
                if base64_03 {
                    return decode_base64(&s.0);
                }
                if !is_json_media_type(mt) {
                    // Non-JSON content: the data is the string's text. Zero-copy when the string
                    // had no escapes (the common case), one copy otherwise.
                    return Ok(match s.0 {
                        Cow::Borrowed(b) => body.slice_ref(b.as_bytes()),
                        Cow::Owned(o) => Bytes::from(o),
                    });
                }
            } else if !is_json_media_type(mt) {
                return Err(CeError::Invalid(
                    "data (not a string for a non-JSON content type)",
                ));
            }
            // JSON data is delivered as its JSON text, byte for byte, sliced out of the body.
            Ok(body.slice_ref(text.as_bytes()))
        }
    }
}

fn decode_base64(s: &str) -> Result<Bytes, CeError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Bytes::from)
        .map_err(|_| CeError::Invalid("data_base64"))
}

/// RFC 3339 `date-time` as Go's `time.Parse(time.RFC3339, …)` accepts it.
pub fn is_rfc3339(s: &[u8]) -> bool {
    fn num(s: &[u8]) -> Option<u32> {
        s.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    }
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || s[10] != b'T'
        || s[13] != b':'
        || s[16] != b':'
    {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        num(&s[0..4]),
        num(&s[5..7]),
        num(&s[8..10]),
        num(&s[11..13]),
        num(&s[14..16]),
        num(&s[17..19]),
    ) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || hour > 23 || min > 59 || sec > 59 {
        return false;
    }
    let mut rest = &s[19..];
    if let [b'.', tail @ ..] = rest {
        let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &tail[digits..];
    }
    match rest {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            matches!((num(&[*h1, *h2]), num(&[*m1, *m2])), (Some(h), Some(m)) if h < 24 && m < 60)
        }
        _ => false,
    }
}

/// Byte classes of a URI reference, so that each scan is one table lookup per byte.
const URI_INVALID: u8 = 1; // a control character or DEL: never valid
const URI_PERCENT: u8 = 2; // `%`: two hex digits must follow
const URI_SCHEME: u8 = 4; // may be part of a scheme: ALPHA / DIGIT / `+` / `-` / `.`
const URI_SEGMENT_END: u8 = 8; // ends a segment or an authority: `/`, `?`, `#`

static URI: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = URI_INVALID;
        b += 1;
    }
    t[0x7f] = URI_INVALID;
    t[b'%' as usize] = URI_PERCENT;
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.' {
            t[b] = URI_SCHEME;
        }
        b += 1;
    }
    t[b'/' as usize] = URI_SEGMENT_END;
    t[b'?' as usize] = URI_SEGMENT_END;
    t[b'#' as usize] = URI_SEGMENT_END;
    t
};

#[inline]
fn uri_class(b: u8) -> u8 {
    URI[b as usize]
}

/// A URI reference as Go's `url.Parse` accepts it: no control characters, valid percent
/// escapes, and no colon in the first segment of a scheme-less reference.
pub fn is_uri_reference(s: &[u8]) -> bool {
    uri_reference(s).is_some()
}

pub fn is_absolute_uri(s: &[u8]) -> bool {
    uri_reference(s) == Some(true)
}

/// `None` if `s` is not a URI reference (see [`is_uri_reference`]), else whether it has a scheme.
/// Each byte is looked at a bounded number of times: one scan for controls and escapes, one for
/// the scheme and the first segment, one over the authority (was: a loop of comparisons per
/// byte, then the scheme found twice).
fn uri_reference(s: &[u8]) -> Option<bool> {
    if s.is_empty() {
        return None;
    }
    // Every `%` starts an escape of two hex digits (which are neither `%` nor controls, so the
    // scan resumes after them).
    let mut i = 0;
    while let Some(off) = s[i..]
        .iter()
        .position(|&b| uri_class(b) & (URI_INVALID | URI_PERCENT) != 0)
    {
        let at = i + off;
        let escape_ok = s[at] == b'%'
            && s.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
            && s.get(at + 2).is_some_and(u8::is_ascii_hexdigit);
        if !escape_ok {
            return None;
        }
        i = at + 3;
    }
    // A scheme is `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` ending at the first colon: the
    // first byte that cannot be part of a scheme is that colon.
    let end = s
        .iter()
        .position(|&b| uri_class(b) & URI_SCHEME == 0)
        .unwrap_or(s.len());
    if end > 0 && s[0].is_ascii_alphabetic() && s.get(end) == Some(&b':') {
        return authority_ok(&s[end + 1..]).then_some(true);
    }
    // Without a scheme, a colon before the first `/`, `?` or `#` is an error in Go (the bytes
    // before `end` are none of these four).
    let first = s[end..]
        .iter()
        .find(|&&b| b == b':' || uri_class(b) & URI_SEGMENT_END != 0);
    (first != Some(&b':')).then_some(false)
}

/// With `scheme://host:port` (`rest` follows the scheme's colon), the port must be digits and
/// brackets must close.
fn authority_ok(rest: &[u8]) -> bool {
    let Some(auth) = rest.strip_prefix(b"//") else {
        return true;
    };
    let end = auth
        .iter()
        .position(|&b| uri_class(b) & URI_SEGMENT_END != 0)
        .unwrap_or(auth.len());
    let auth = &auth[..end];
    // An authority is a few bytes: plain loops, where a memchr call would cost more than the
    // scan (the search itself is the same).
    let host = match auth.iter().rposition(|&b| b == b'@') {
        Some(at) => &auth[at + 1..],
        None => auth,
    };
    if let Some(inner) = host.strip_prefix(b"[") {
        return match inner.iter().position(|&b| b == b']') {
            Some(close) => match &inner[close + 1..] {
                [] => true,
                [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
                _ => false,
            },
            None => false,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(c) => host[c + 1..].iter().all(u8::is_ascii_digit),
        None => true,
    }
}

/// RFC 2045 token characters, as a table: a per-byte scan of the separator list cost a call per
/// character on every event (it showed at 11% of user-space instructions in callgrind).
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = true;
        b += 1;
    }
    let separators = b"()<>@,;:\\\"/[]?=";
    let mut i = 0;
    while i < separators.len() {
        t[separators[i] as usize] = false;
        i += 1;
    }
    t
};

#[inline]
fn is_token_char(b: u8) -> bool {
    TOKEN[b as usize]
}

fn token(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|&&b| is_token_char(b)).count();
    (&s[..n], &s[n..])
}

/// A media type as Go's `mime.ParseMediaType` accepts it: `type/subtype` or a lone token, then
/// `; key=value` parameters whose value is a token or a quoted string.
pub fn is_media_type(s: &[u8]) -> bool {
    let end = memchr::memchr(b';', s).unwrap_or(s.len());
    let mt = trim(&s[..end]);
    let (ty, rest) = token(mt);
    if ty.is_empty() {
        return false;
    }
    if let Some(sub) = rest.strip_prefix(b"/") {
        let (sub, rest) = token(sub);
        if sub.is_empty() || !rest.is_empty() {
            return false;
        }
    } else if !rest.is_empty() {
        return false;
    }
    let mut params = &s[end..];
    let mut seen: Vec<&[u8]> = Vec::new();
    loop {
        params = trim(params);
        if params.is_empty() {
            return true;
        }
        let Some(p) = params.strip_prefix(b";") else {
            return false;
        };
        let p = trim(p);
        let (key, rest) = token(p);
        if key.is_empty() {
            // A trailing semicolon is tolerated.
            return trim(p).is_empty();
        }
        let Some(rest) = trim(rest).strip_prefix(b"=") else {
            return false;
        };
        let rest = trim(rest);
        let rest = if let Some(q) = rest.strip_prefix(b"\"") {
            let mut i = 0;
            loop {
                match q.get(i) {
                    None => return false,
                    Some(b'\\') => i += 2,
                    Some(b'"') => break &q[i + 1..],
                    Some(_) => i += 1,
                }
            }
        } else {
            let (v, rest) = token(rest);
            if v.is_empty() {
                return false;
            }
            rest
        };
        if seen.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            return false;
        }
        seen.push(key);
        params = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::equiv;
    use crate::http::{parse_request, RequestHead};

    fn run(raw: &[u8]) -> Result<(String, Bytes), CeError> {
        let mut head = RequestHead::new();
        assert!(parse_request(raw, 1 << 16, 128, &mut head).unwrap());
        let frozen = Bytes::copy_from_slice(&raw[..head.len]);
        let body = Bytes::copy_from_slice(&raw[head.len..]);
        let mut out = BytesMut::new();
        let ct = head.content_type.clone().map(|r| &frozen[r]);
        let (data, attrs_len) =
            write_binary_head(&frozen, &head.headers, ct, body, &mut out, LIMITS)?;
        assert!(attrs_len <= out.len());
        Ok((String::from_utf8(out.to_vec()).unwrap(), data))
    }

    /// The URI validators as they were before the byte-class table, for the equivalence test.
    mod reference {
        /// A URI reference as Go's `url.Parse` accepts it: no control characters, valid percent
        /// escapes, and no colon in the first segment of a scheme-less reference.
        pub(super) fn is_uri_reference(s: &[u8]) -> bool {
            if s.is_empty() || s.iter().any(|&b| b < 0x20 || b == 0x7f) {
                return false;
            }
            let mut i = 0;
            while i < s.len() {
                if s[i] == b'%' {
                    if i + 2 >= s.len() {
                        return false;
                    }
                    if !(s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()) {
                        return false;
                    }
                    i += 3;
                } else {
                    i += 1;
                }
            }
            match scheme_len(s) {
                Some(_) => authority_ok(s),
                None => {
                    // Without a scheme, a colon before the first slash is an error in Go.
                    let seg_end = memchr::memchr2(b'/', b'?', s).unwrap_or(s.len());
                    let seg_end = memchr::memchr(b'#', &s[..seg_end]).unwrap_or(seg_end);
                    !s[..seg_end].contains(&b':')
                }
            }
        }

        /// Length of a valid `scheme:` prefix, if any.
        fn scheme_len(s: &[u8]) -> Option<usize> {
            let colon = memchr::memchr(b':', s)?;
            let scheme = &s[..colon];
            let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            valid.then_some(colon)
        }

        /// With `scheme://host:port`, the port must be digits and brackets must close.
        fn authority_ok(s: &[u8]) -> bool {
            let Some(colon) = scheme_len(s) else {
                return true;
            };
            let rest = &s[colon + 1..];
            let Some(auth) = rest.strip_prefix(b"//") else {
                return true;
            };
            let end = auth
                .iter()
                .position(|b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(auth.len());
            let auth = &auth[..end];
            let host = match memchr::memrchr(b'@', auth) {
                Some(at) => &auth[at + 1..],
                None => auth,
            };
            if let Some(inner) = host.strip_prefix(b"[") {
                return match memchr::memchr(b']', inner) {
                    Some(close) => match &inner[close + 1..] {
                        [] => true,
                        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
                        _ => false,
                    },
                    None => false,
                };
            }
            match memchr::memrchr(b':', host) {
                Some(c) => host[c + 1..].iter().all(u8::is_ascii_digit),
                None => true,
            }
        }

        pub(super) fn is_absolute_uri(s: &[u8]) -> bool {
            is_uri_reference(s) && scheme_len(s).is_some()
        }

        /// `SpecVersion::is_core` as it was, a chain of comparisons.
        pub(super) fn is_core(version: super::SpecVersion, name: &[u8]) -> bool {
            const COMMON: [&[u8]; 8] = [
                b"specversion",
                b"id",
                b"source",
                b"type",
                b"datacontenttype",
                b"subject",
                b"time",
                b"data",
            ];
            COMMON.iter().any(|c| c.eq_ignore_ascii_case(name))
                || match version {
                    super::SpecVersion::V1 => name.eq_ignore_ascii_case(b"dataschema"),
                    super::SpecVersion::V03 => {
                        name.eq_ignore_ascii_case(b"schemaurl")
                            || name.eq_ignore_ascii_case(b"datacontentencoding")
                    }
                }
        }

        /// `is_passthrough` as it was, the first letter matched by comparisons.
        pub(super) fn is_passthrough(name: &[u8]) -> bool {
            fn starts_with_ci(s: &[u8], p: &[u8]) -> bool {
                s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
            }
            if !matches!(
                name.first().map(u8::to_ascii_lowercase),
                Some(b'k' | b'x' | b'r' | b't' | b'b')
            ) {
                return false;
            }
            starts_with_ci(name, b"knative-")
                || starts_with_ci(name, b"x-b3-")
                || name.eq_ignore_ascii_case(b"x-request-id")
                || name.eq_ignore_ascii_case(b"retry-after")
                || name.eq_ignore_ascii_case(b"traceparent")
                || name.eq_ignore_ascii_case(b"tracestate")
                || name.eq_ignore_ascii_case(b"baggage")
        }

        /// `put_ce_header` as it was, a `put_u8` per byte of the name.
        pub(super) fn put_ce_header(out: &mut bytes::BytesMut, attr: &[u8], value: &[u8]) {
            use bytes::BufMut;
            out.put_slice(b"Ce-");
            if let Some((first, rest)) = attr.split_first() {
                out.put_u8(first.to_ascii_uppercase());
                for b in rest {
                    out.put_u8(b.to_ascii_lowercase());
                }
            }
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        }

        /// `ce_name`'s prefix test as it was.
        pub(super) fn ce_name(name: &[u8]) -> Option<&[u8]> {
            (name.len() > 3 && name[..3].eq_ignore_ascii_case(b"ce-")).then(|| &name[3..])
        }
    }

    const LIMITS: CeLimits = CeLimits {
        max_attributes: 128,
        max_head: 64 << 10,
    };

    const E1: &[u8] = b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: e1\r\nce-source: /src\r\nce-type: t.e1\r\ncontent-type: application/json\r\n\r\n{\"k\":1}";

    #[test]
    fn binary_event_is_forwarded_with_canonical_names() {
        let (head, body) = run(E1).unwrap();
        assert_eq!(
            head,
            "Ce-Specversion: 1.0\r\nCe-Id: e1\r\nCe-Source: /src\r\nCe-Type: t.e1\r\nContent-Type: application/json\r\n"
        );
        assert_eq!(&body[..], b"{\"k\":1}");
    }

    #[test]
    fn binary_validation_failures() {
        let cases: [(&[u8], CeError); 6] = [
            (b"POST / HTTP/1.1\r\nHost: h\r\ncontent-type: application/json\r\n\r\n", CeError::UnknownEncoding),
            (b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 10.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\n\r\n", CeError::UnknownSpecVersion),
            (b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-source: /s\r\nce-type: t\r\n\r\n", CeError::Missing("id")),
            (b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id:    \r\nce-source: /s\r\nce-type: t\r\n\r\n", CeError::Blank("id")),
            (b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\nce-my-ext: x\r\n\r\n", CeError::InvalidExtensionName),
            (b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\nce-datacontenttype: x/y\r\n\r\n", CeError::InvalidExtensionName),
        ];
        for (raw, want) in cases {
            assert_eq!(
                run(raw).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn structured_event_becomes_binary_with_data_sliced() {
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json; charset=utf-8\r\n\r\n{\"specversion\":\"1.0\",\"id\":\"s1\",\"source\":\"/src\",\"type\":\"t\",\"datacontenttype\":\"application/json\",\"data\":{\"m\":\"hi\"},\"ext1\":\"v\",\"n\":3.9,\"b\":true,\"z\":null}";
        let (head, body) = run(raw).unwrap();
        assert!(head.contains("Ce-Id: s1\r\n"), "{head}");
        assert!(head.contains("Ce-Ext1: v\r\n"));
        assert!(head.contains("Ce-N: 3\r\n"));
        assert!(head.contains("Ce-B: true\r\n"));
        assert!(!head.contains("Ce-Z"));
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert_eq!(&body[..], b"{\"m\":\"hi\"}");
    }

    #[test]
    fn structured_data_forms() {
        let b64 = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{\"specversion\":\"1.0\",\"id\":\"s\",\"source\":\"/s\",\"type\":\"t\",\"datacontenttype\":\"application/octet-stream\",\"data_base64\":\"AAEC\"}";
        assert_eq!(&run(b64).unwrap().1[..], &[0u8, 1, 2]);
        let text = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{\"specversion\":\"1.0\",\"id\":\"s\",\"source\":\"/s\",\"type\":\"t\",\"datacontenttype\":\"text/plain\",\"data\":\"a\\nb\"}";
        assert_eq!(&run(text).unwrap().1[..], b"a\nb");
        let bad = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{\"specversion\":\"1.0\",\"id\":\"s\",\"source\":\"/s\",\"type\":\"t\",\"datacontenttype\":\"application/vnd.x+json\",\"data\":{}}";
        assert!(run(bad).is_err());
        let inject = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{\"specversion\":\"1.0\",\"id\":\"s\\r\\nX: y\",\"source\":\"/s\",\"type\":\"t\"}";
        assert!(run(inject).is_err(), "CR/LF must never reach a header");
        assert!(matches!(
            run(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{"),
            Err(CeError::Json(_))
        ));
    }

    #[test]
    fn passthrough_headers_keep_names_and_values() {
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\nKNATIVE-Multi: a\r\nKNATIVE-Multi: b\r\nFoo: bar\r\nAuthorization: x\r\ntraceparent: 00-1\r\n\r\n";
        let (head, _) = run(raw).unwrap();
        assert!(head.contains("KNATIVE-Multi: a\r\nKNATIVE-Multi: b\r\n"));
        assert!(head.contains("traceparent: 00-1\r\n"));
        assert!(!head.contains("Foo") && !head.contains("Authorization"));
    }

    fn structured_with(members: &str) -> Vec<u8> {
        format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n\
             {{\"specversion\":\"1.0\",\"id\":\"s\",\"source\":\"/s\",\"type\":\"t\"{members}}}"
        )
        .into_bytes()
    }

    fn with_limits(raw: &[u8], limits: CeLimits) -> Result<(String, Bytes), CeError> {
        let mut head = RequestHead::new();
        assert!(parse_request(raw, 1 << 20, 512, &mut head).unwrap());
        let frozen = Bytes::copy_from_slice(&raw[..head.len]);
        let body = Bytes::copy_from_slice(&raw[head.len..]);
        let mut out = BytesMut::new();
        let ct = head.content_type.clone().map(|r| &frozen[r]);
        let (data, _) = write_binary_head(&frozen, &head.headers, ct, body, &mut out, limits)?;
        Ok((String::from_utf8(out.to_vec()).unwrap(), data))
    }

    /// 80,000 extensions are refused at the bound, in time linear in what was read (a quadratic
    /// de-duplication used to take seconds of CPU on one worker).
    #[test]
    fn attribute_count_is_bounded_in_both_modes() {
        let many: String = (0..80_000).map(|i| format!(",\"e{i}\":\"v\"")).collect();
        let start = std::time::Instant::now();
        assert_eq!(
            run(&structured_with(&many)).unwrap_err(),
            CeError::TooManyAttributes(128)
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let some: String = (0..100).map(|i| format!(",\"e{i}\":\"v\"")).collect();
        assert!(run(&structured_with(&some)).is_ok());
        let mut binary = b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\n".to_vec();
        for i in 0..150 {
            binary.extend(format!("ce-x{i}: v\r\n").as_bytes());
        }
        binary.extend(b"\r\n");
        let lim = |max_attributes| CeLimits {
            max_attributes,
            max_head: 64 << 10,
        };
        assert_eq!(
            with_limits(&binary, lim(128)).unwrap_err(),
            CeError::TooManyAttributes(128)
        );
        assert!(with_limits(&binary, lim(200)).is_ok());
    }

    #[test]
    fn repeated_extensions_keep_the_last_structured_and_the_first_binary() {
        let (head, _) = run(&structured_with(",\"x\":\"1\",\"y\":\"2\",\"x\":\"3\"")).unwrap();
        assert!(
            head.contains("Ce-X: 3\r\n") && !head.contains("Ce-X: 1"),
            "{head}"
        );
        assert_eq!(head.matches("Ce-X:").count(), 1);
        // Binary: only the first of a repeated header counts, past the pairwise threshold too.
        let mut raw = b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\n".to_vec();
        for i in 0..30 {
            raw.extend(format!("ce-x{i}: first\r\nCE-X{i}: second\r\n").as_bytes());
        }
        raw.extend(b"\r\n");
        let (head, _) = run(&raw).unwrap();
        assert_eq!(head.matches("first").count(), 30, "{head}");
        assert_eq!(head.matches("second").count(), 0, "{head}");
    }

    #[test]
    fn structured_names_are_lower_case_letters_and_digits() {
        for bad in [
            ",\"MyExt\":\"v\"",
            ",\"myExt\":\"v\"",
            ",\"my-ext\":\"v\"",
            ",\"ID\":\"x\"",
        ] {
            assert_eq!(
                run(&structured_with(bad)).unwrap_err(),
                CeError::InvalidExtensionName,
                "{bad}"
            );
        }
        let (head, _) = run(&structured_with(
            ",\"myext\":\"v\",\"averyveryverylongextensionname1\":1",
        ))
        .unwrap();
        assert!(head.contains("Ce-Myext: v\r\n"), "{head}");
        assert!(
            head.contains("Ce-Averyveryverylongextensionname1: 1\r\n"),
            "{head}"
        );
    }

    /// `schemaurl` and `datacontentencoding` in 1.0, `dataschema` in 0.3: forwarded as
    /// extensions in both modes, never dropped.
    #[test]
    fn other_version_attributes_are_extensions_in_both_modes() {
        let (head, _) = run(&structured_with(
            ",\"schemaurl\":\"http://s/x\",\"datacontentencoding\":\"base64\"",
        ))
        .unwrap();
        assert!(head.contains("Ce-Schemaurl: http://s/x\r\n"), "{head}");
        assert!(
            head.contains("Ce-Datacontentencoding: base64\r\n"),
            "{head}"
        );
        let (binary, _) = run(b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 1.0\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\nce-schemaurl: http://s/x\r\n\r\n").unwrap();
        assert!(binary.contains("Ce-Schemaurl: http://s/x\r\n"), "{binary}");
        let v03 = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{\"specversion\":\"0.3\",\"id\":\"s\",\"source\":\"/s\",\"type\":\"t\",\"dataschema\":\"http://s/x\"}";
        let (head, _) = run(v03).unwrap();
        assert!(head.contains("Ce-Dataschema: http://s/x\r\n"), "{head}");
        let (binary, _) = run(b"POST / HTTP/1.1\r\nHost: h\r\nce-specversion: 0.3\r\nce-id: a\r\nce-source: /s\r\nce-type: t\r\nce-dataschema: http://s/x\r\n\r\n").unwrap();
        assert!(binary.contains("Ce-Dataschema: http://s/x\r\n"), "{binary}");
    }

    /// HTTP drops the whitespace around a header value: a structured value is validated and
    /// written as the subscriber will read it.
    #[test]
    fn structured_values_are_validated_as_headers_carry_them() {
        assert_eq!(
            run(&structured_with(",\"subject\":\"  \"")).unwrap_err(),
            CeError::Blank("subject")
        );
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n{\"specversion\":\"1.0\",\"id\":\" a \",\"source\":\" \",\"type\":\"t\"}";
        assert_eq!(run(raw).unwrap_err(), CeError::Invalid("source"));
        let (head, _) = run(&structured_with(",\"x\":\" v \"")).unwrap();
        assert!(head.contains("Ce-X: v\r\n"), "{head}");
    }

    #[test]
    fn the_converted_head_is_bounded() {
        let id = "i".repeat(70_000);
        let raw = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/cloudevents+json\r\n\r\n\
             {{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"/s\",\"type\":\"t\"}}"
        );
        let lim = |max_head| CeLimits {
            max_attributes: 128,
            max_head,
        };
        let e = with_limits(raw.as_bytes(), lim(64 << 10)).unwrap_err();
        assert_eq!(e, CeError::HeadTooLarge(64 << 10));
        assert!(e.is_too_large());
        assert!(with_limits(raw.as_bytes(), lim(200_000)).is_ok());
    }

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339(b"2020-07-06T11:23:12.500+02:00"));
        assert!(is_rfc3339(b"2020-02-29T00:00:00Z"));
        assert!(!is_rfc3339(b"2021-02-29T00:00:00Z"));
        assert!(!is_rfc3339(b"yesterday"));
        assert!(!is_rfc3339(b"2020-07-06 11:23:12Z"));
        assert!(!is_rfc3339(b"2020-07-06T11:23:12."));
    }

    #[test]
    fn media_types_as_go_parses_them() {
        for ok in [
            "text",
            "text/plain",
            "text/plain; charset=utf-8",
            "a/b;",
            "a/b; x=\"q;\"",
        ] {
            assert!(is_media_type(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "text/",
            "@",
            "text/plain; charset",
            "a/b c",
            "a/b; x=1; x=2",
        ] {
            assert!(!is_media_type(bad.as_bytes()), "{bad}");
        }
    }

    /// Bytes the URI grammar treats specially, for the random strings of the equivalence tests.
    const URI_ALPHABET: &[u8] = b"aZ09+-.:/?#[]@%fF\x00\x1f\x7f\x80 ";

    #[test]
    fn uri_validators_match_the_reference() {
        let tricky: &[&[u8]] = &[
            b"/src",
            b"http://a.b/c",
            b"https://imc-rs.dev/loadgen",
            b"urn:x:y",
            b"a b",
            b"https://[::1]:80/",
            b":x",
            b"%zz",
            b"a%2",
            b"a%2f",
            b"%",
            b"%%",
            b"%41%",
            b"1a:b",
            b"a1:b",
            b"a+b.c-d:e",
            b"http://h:port/",
            b"http://h:80",
            b"http://h:80:81",
            b"http://[::1",
            b"http://[::1]x",
            b"http://[::1]:",
            b"http://u@h:1@x",
            b"http://u@[::1]:9",
            b"http:/x:y",
            b"http:",
            b"h://",
            b"a/b:c",
            b"a?b:c",
            b"a#b:c",
            b"a:b/c",
            b"ab\x7fc",
            b"ab\tc",
            b"x://h?:z",
            b"x://h#:z",
        ];
        equiv::assert_same(
            is_uri_reference,
            reference::is_uri_reference,
            tricky,
            URI_ALPHABET,
        );
        equiv::assert_same(
            is_absolute_uri,
            reference::is_absolute_uri,
            tricky,
            URI_ALPHABET,
        );
    }

    #[test]
    fn name_matchers_match_the_reference() {
        let names: &[&[u8]] = &[
            b"specversion",
            b"SpecVersion",
            b"SPECVERSION",
            b"specversioN",
            b"specversio",
            b"specversionx",
            b"id",
            b"ID",
            b"iD",
            b"source",
            b"type",
            b"TIME",
            b"data",
            b"datacontenttype",
            b"DataContentType",
            b"subject",
            b"dataschema",
            b"schemaurl",
            b"datacontentencoding",
            b"DATACONTENTENCODING",
            b"knative-x",
            b"Knative-",
            b"knative",
            b"x-b3-traceid",
            b"X-B3-",
            b"x-b3",
            b"x-request-id",
            b"X-Request-ID",
            b"retry-after",
            b"traceparent",
            b"TraceState",
            b"baggage",
            b"baggagex",
            b"ce-id",
            b"CE-",
            b"Ce-x",
            b"c\xe5-x",
            b"\xc3\xe5-x",
        ];
        let alphabet = b"abcdeiknprstuvxyABCEIKT-0\xc3\xe5\xca";
        for v in [SpecVersion::V1, SpecVersion::V03] {
            equiv::assert_same(
                |n| v.is_core(n),
                |n| reference::is_core(v, n),
                names,
                alphabet,
            );
        }
        equiv::assert_same(is_passthrough, reference::is_passthrough, names, alphabet);
        equiv::assert_same(
            |n| {
                let h = HeaderRange {
                    name: 0..n.len(),
                    value: 0..0,
                };
                ce_name(n, &h) == reference::ce_name(n)
            },
            |_| true,
            names,
            alphabet,
        );
        for lower in [&b"id"[..], b"specversion", b"datacontentencoding", b"ce"] {
            equiv::assert_same(
                |n| is_named(n, lower),
                |n| n.eq_ignore_ascii_case(lower),
                names,
                alphabet,
            );
        }
        equiv::assert_same(
            |n| {
                let (mut new, mut old) = (BytesMut::new(), BytesMut::new());
                put_ce_header(&mut new, n, b"v");
                reference::put_ce_header(&mut old, n, b"v");
                new == old
            },
            |_| true,
            names,
            alphabet,
        );
    }

    #[test]
    fn uri_references() {
        for ok in [
            "/src",
            "http://a.b/c",
            "urn:x:y",
            "a b",
            "https://[::1]:80/",
        ] {
            assert!(is_uri_reference(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":x",
            "%zz",
            "a%2",
            "1a:b",
            "http://h:port/",
            "http://[::1",
        ] {
            assert!(!is_uri_reference(bad.as_bytes()), "{bad}");
        }
        assert!(!is_absolute_uri(b"/relative"));
    }
}
