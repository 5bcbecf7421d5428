//! The modules' JSON-RPC methods, without the server: each module folder
//! has an `rpc.rs` with its typed parameter structs and its [`Method`]s
//! (SPDK's names), registered once in [`crate::modules::rpc_methods`]; the
//! appliance (the `apps` crate) serves them.
//!
//! * A [`Method`] is SPDK's name and a [`Handler`]. The handler decodes and
//!   checks the parameters at once, on the caller's thread (so a -32602
//!   answer never touches the reactors), and answers with a [`Call`]: a
//!   result at once, or a task the server runs on reactor 0, where every
//!   change to the layer happens (one at a time, as SPDK's app thread).
//! * Parameters are serde structs decoded by [`decode`], which speaks
//!   SPDK's `spdk_json_decode_object`: with `#[serde(deny_unknown_fields)]`
//!   any key the struct does not name is an error; a key SPDK's client may
//!   send that changes nothing here is a field of type [`Ignored`]; a
//!   feature SPDK has and this layer does not is an [`Unsupported`] field,
//!   accepted only at its default. Keys are checked in the struct's field
//!   order, then unknown keys, and null counts as absent; optional keys are
//!   `Option<T>` fields. The messages are the appliance's ([`invalid_type`],
//!   [`required`], [`unknown`], [`unsupported`]).
//! * A failed layer call answers with its errno, as SPDK ([`bdev_err`]).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::BdevError;

/// JSON-RPC 2.0's code for wrong parameter names, types or values.
pub const INVALID_PARAMS: i32 = -32602;

/// An error answer: a code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC code, or a negative errno for domain failures.
    pub code: i32,
    /// The message (for errno codes, the errno's text as `strerror` gives
    /// it, which is what SPDK sends).
    pub message: String,
}

impl RpcError {
    /// A -32602 invalid parameters, with the reason.
    pub fn invalid_params(why: impl fmt::Display) -> Self {
        RpcError {
            code: INVALID_PARAMS,
            message: format!("Invalid parameters: {why}"),
        }
    }

    /// The error for errno `e` (either sign): code `-|e|`, message the
    /// errno's text ("No such device" for 19), as SPDK answers.
    pub fn errno(e: i32) -> Self {
        let e = e.unsigned_abs() as i32;
        RpcError {
            code: -e,
            message: strerror(e),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// The C library's text for errno `e` ("No such file or directory" for 2).
pub fn strerror(e: i32) -> String {
    let text = std::io::Error::from_raw_os_error(e).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The answer for a failed layer call: its errno and text (the error
/// itself goes to the log, as SPDK logs it).
pub fn bdev_err(e: BdevError) -> RpcError {
    log::info!("rpc: {e}");
    RpcError::errno(e.errno())
}

/// What a method answers with once it is done.
pub type Reply = Result<Value, RpcError>;

/// Work for reactor 0: builds the future there and answers with its output.
pub type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Reply>>> + Send>;

/// What a handler asks for once the parameters are good.
pub enum Call {
    /// The answer, already known (a listing, a lookup).
    Done(Value),
    /// The answer comes from a task run on reactor 0.
    Reactor(Task),
}

impl Call {
    /// A task for reactor 0: `f` builds the future there.
    pub fn reactor<F, Fut>(f: F) -> Call
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Reply> + 'static,
    {
        Call::Reactor(Box::new(move || Box::pin(f())))
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Done(v) => f.debug_tuple("Done").field(v).finish(),
            Call::Reactor(_) => f.write_str("Reactor(..)"),
        }
    }
}

/// A method's handler: the request's `params` (null when absent) to a
/// [`Call`], or the error to answer with (bad parameters, or a check that
/// needs no reactor).
pub type Handler = fn(Value) -> Result<Call, RpcError>;

/// One method: SPDK's name and its handler. The appliance serves every
/// module method after `framework_start_init` only (SPDK's
/// `SPDK_RPC_RUNTIME`).
#[derive(Clone, Copy, Debug)]
pub struct Method {
    /// SPDK's name.
    pub name: &'static str,
    /// Decodes the parameters and says what to do.
    pub handler: Handler,
}

impl Method {
    /// Method `name` answered by `handler`.
    pub const fn new(name: &'static str, handler: Handler) -> Method {
        Method { name, handler }
    }
}

/// The message for `key` holding something other than `what`
/// ("'num_blocks' must be an unsigned integer").
pub fn invalid_type(key: &str, what: &str) -> RpcError {
    RpcError::invalid_params(format!("'{key}' must be {what}"))
}

/// The message for a missing required `key`.
pub fn required(key: &str) -> RpcError {
    RpcError::invalid_params(format!("'{key}' is required"))
}

/// The message for a key no parameter of the method has.
pub fn unknown(key: &str) -> RpcError {
    RpcError::invalid_params(format!("unknown parameter '{key}'"))
}

/// The message for `key` set to `value`, a value other than the default of
/// a feature this layer does not have.
pub fn unsupported(key: &str, value: &Value) -> RpcError {
    RpcError::invalid_params(format!("'{key}' = {value} is not supported"))
}

/// The message for parameters given as anything but an object.
pub fn not_an_object() -> RpcError {
    RpcError::invalid_params("parameters must be an object of named values")
}

/// A key accepted with any value and otherwise ignored (SPDK takes it; it
/// changes nothing here). Name the field `_key` with `#[serde(rename =
/// "key")]`.
pub use serde::de::IgnoredAny as Ignored;

/// The one value an [`Unsupported`] key may have besides null.
pub trait JsonDefault {
    /// The value.
    fn value() -> Value;
}

/// Default 0.
#[derive(Debug)]
pub struct Zero;

impl JsonDefault for Zero {
    fn value() -> Value {
        Value::from(0)
    }
}

/// Default `false`.
#[derive(Debug)]
pub struct False;

impl JsonDefault for False {
    fn value() -> Value {
        Value::Bool(false)
    }
}

/// No default: only absence (or null) is accepted.
#[derive(Debug)]
pub struct Absent;

impl JsonDefault for Absent {
    fn value() -> Value {
        Value::Null
    }
}

/// A key for a feature SPDK has and this layer does not: accepted when
/// absent, null or equal to `D`'s value; any other value is an error
/// naming the key and the value ([`unsupported`]).
pub struct Unsupported<D: JsonDefault>(PhantomData<D>);

impl<D: JsonDefault> fmt::Debug for Unsupported<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Unsupported")
    }
}

impl<'de, D: JsonDefault> Deserialize<'de> for Unsupported<D> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        match Option::<Value>::deserialize(d)? {
            None => Ok(Unsupported(PhantomData)),
            Some(v) if v == D::value() => Ok(Unsupported(PhantomData)),
            // The decoder puts the key in front ("'md_size' = 8 is not
            // supported").
            Some(v) => Err(de::Error::custom(format_args!("= {v} is not supported"))),
        }
    }
}

/// Decodes `params` (an object, or null for none) into `T`, as described
/// in the [module documentation](self).
///
/// # Errors
/// -32602 naming the first bad key: in field order, a wrongly typed or
/// missing one or an unsupported value, then the first unknown key (by
/// name) when `T` denies unknown fields.
pub fn decode<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    decode_hinted(params, &[])
}

/// As [`decode`], with a hint added to the message for a missing key
/// (`(key, hint)` gives "'key' is required (hint)").
///
/// # Errors
/// As [`decode`].
pub fn decode_hinted<T: DeserializeOwned>(
    params: Value,
    hints: &[(&str, &str)],
) -> Result<T, RpcError> {
    let map = match params {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        _ => return Err(not_an_object()),
    };
    T::deserialize(Params { map, hints }).map_err(|e| match e {
        DecodeError::Done(e) => e,
        DecodeError::Keyless(m) => RpcError::invalid_params(m),
    })
}

/// An error while decoding: the answer, or a message from a value's own
/// `Deserialize` that still needs its key.
#[derive(Debug)]
enum DecodeError {
    Done(RpcError),
    Keyless(String),
}

impl DecodeError {
    fn with_key(self, key: &str) -> DecodeError {
        match self {
            DecodeError::Keyless(m) => {
                DecodeError::Done(RpcError::invalid_params(format!("'{key}' {m}")))
            }
            done => done,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Done(e) => e.fmt(f),
            DecodeError::Keyless(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::Keyless(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        DecodeError::Done(required(field))
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        DecodeError::Done(unknown(field))
    }
}

/// The parameters object, handed to a struct's derived visitor one key at
/// a time: its fields in order (present or not), then the keys it does not
/// name.
struct Params<'h> {
    map: Map<String, Value>,
    hints: &'h [(&'h str, &'h str)],
}

impl<'de> Deserializer<'de> for Params<'_> {
    type Error = DecodeError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_map(Fields {
            fields: fields.iter(),
            map: self.map,
            hints: self.hints,
            unknown: None,
            pending: None,
        })
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        Value::Object(self.map)
            .deserialize_any(visitor)
            .map_err(de::Error::custom)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

struct Fields<'h> {
    fields: std::slice::Iter<'static, &'static str>,
    map: Map<String, Value>,
    hints: &'h [(&'h str, &'h str)],
    /// The keys left once the fields are done, in name order.
    unknown: Option<serde_json::map::IntoIter>,
    /// The key just handed out and its value (None: absent or null).
    pending: Option<(String, Option<Value>)>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let (key, value) = if let Some(f) = self.fields.next() {
            let v = self.map.remove(*f).filter(|v| !v.is_null());
            ((*f).to_owned(), v)
        } else {
            let rest = self
                .unknown
                .get_or_insert_with(|| std::mem::take(&mut self.map).into_iter());
            match rest.next() {
                Some((k, v)) => (k, Some(v)),
                None => return Ok(None),
            }
        };
        let k = seed.deserialize(StrDeserializer::<DecodeError>::new(&key))?;
        self.pending = Some((key, value));
        Ok(Some(k))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, DecodeError> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        let hint = self.hints.iter().find(|(k, _)| *k == key).map(|(_, h)| *h);
        seed.deserialize(ValueDe {
            key: &key,
            value,
            hint,
        })
        .map_err(|e| e.with_key(&key))
    }
}

/// One key's value (None: absent or null), with the key for messages.
struct ValueDe<'a> {
    key: &'a str,
    value: Option<Value>,
    hint: Option<&'a str>,
}

impl ValueDe<'_> {
    fn required(&self) -> DecodeError {
        DecodeError::Done(match self.hint {
            None => required(self.key),
            Some(h) => RpcError::invalid_params(format!("'{}' is required ({h})", self.key)),
        })
    }

    fn wrong(&self, what: &str) -> DecodeError {
        DecodeError::Done(invalid_type(self.key, what))
    }

    fn u64(&self) -> Result<u64, DecodeError> {
        match &self.value {
            None => Err(self.required()),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| self.wrong("an unsigned integer")),
            Some(_) => Err(self.wrong("an unsigned integer")),
        }
    }
}

impl<'de> Deserializer<'de> for ValueDe<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            None => Err(self.required()),
            Some(v) => v.deserialize_any(visitor).map_err(de::Error::custom),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            None => visitor.visit_none(),
            Some(_) => visitor.visit_some(self),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Some(Value::Bool(b)) => visitor.visit_bool(b),
            None => Err(self.required()),
            Some(_) => Err(self.wrong("a boolean")),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u64(self.u64()?)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let v = self.u64()?;
        let v = u32::try_from(v).map_err(|_| self.wrong("an unsigned 32-bit integer"))?;
        visitor.visit_u32(v)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.value {
            None => Err(self.required()),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => visitor.visit_i64(i),
                None => Err(self.wrong("an integer")),
            },
            Some(_) => Err(self.wrong("an integer")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Some(Value::String(s)) => visitor.visit_string(s),
            None => Err(self.required()),
            Some(_) => Err(self.wrong("a string")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    /// Arrays (of strings, integers...): each element decoded as a value
    /// of its own, named `key[i]` in a message.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value {
            Some(Value::Array(a)) => {
                let mut seq = Elems {
                    key: self.key,
                    at: 0,
                    it: a.into_iter(),
                };
                visitor.visit_seq(&mut seq)
            }
            None => Err(self.required()),
            Some(_) => Err(self.wrong("an array")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u128 f32 f64 char bytes byte_buf unit
        unit_struct tuple tuple_struct map struct enum identifier
    }
}

/// The elements of an array value, each through [`ValueDe`].
struct Elems<'a> {
    key: &'a str,
    at: usize,
    it: std::vec::IntoIter<Value>,
}

impl<'de> de::SeqAccess<'de> for Elems<'_> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        let Some(v) = self.it.next() else {
            return Ok(None);
        };
        let key = format!("{}[{}]", self.key, self.at);
        self.at += 1;
        seed.deserialize(ValueDe {
            key: &key,
            value: Some(v),
            hint: None,
        })
        .map(Some)
    }
}

/// `{"name": ...}`: the parameters of SPDK's `bdev_*_delete` methods.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByName {
    /// The bdev.
    pub name: String,
}

/// A `bdev_*_delete` method: decodes [`ByName`], runs `delete` on
/// reactor 0 and answers `true`.
///
/// # Errors
/// -32602 for bad parameters.
pub fn delete_by_name<F>(params: Value, delete: fn(String) -> F) -> Result<Call, RpcError>
where
    F: Future<Output = Result<(), BdevError>> + 'static,
{
    let p: ByName = decode(params)?;
    Ok(Call::reactor(move || async move {
        delete(p.name).await.map_err(bdev_err)?;
        Ok(Value::Bool(true))
    }))
}

/// The answer `true` of a layer call that returns nothing.
///
/// # Errors
/// The call's error, as [`bdev_err`].
pub fn done(r: Result<(), BdevError>) -> Reply {
    r.map_err(bdev_err)?;
    Ok(Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Create {
        name: Option<String>,
        num_blocks: u64,
        block_size: Option<u32>,
        #[serde(rename = "numa_id")]
        _numa_id: Ignored,
        #[serde(rename = "md_size")]
        _md_size: Unsupported<Zero>,
        #[serde(rename = "md_interleave")]
        _md_interleave: Unsupported<False>,
        #[serde(rename = "key")]
        _key: Unsupported<Absent>,
    }

    #[derive(Debug, Deserialize)]
    struct Lenient {
        names: Option<Vec<String>>,
        offset: Option<i64>,
        on: Option<bool>,
    }

    fn err<T: DeserializeOwned + fmt::Debug>(p: Value) -> String {
        let e = decode::<T>(p).unwrap_err();
        assert_eq!(e.code, -32602, "{e:?}");
        e.message
    }

    #[test]
    fn decodes_fields_defaults_and_ignored_keys() {
        let c: Create = decode(json!({
            "num_blocks": 8, "name": null, "numa_id": [1, "x"], "md_size": 0,
            "md_interleave": false, "key": null,
        }))
        .unwrap();
        assert_eq!((c.name, c.num_blocks, c.block_size), (None, 8, None));
        let c: Create = decode(json!({"name": "M", "num_blocks": 1, "block_size": 4096})).unwrap();
        assert_eq!((c.name.as_deref(), c.block_size), (Some("M"), Some(4096)));
        let l: Lenient = decode(Value::Null).unwrap();
        assert!(l.names.is_none() && l.offset.is_none() && l.on.is_none());
        let l: Lenient =
            decode(json!({"names": ["a", "b"], "offset": -3, "on": true, "x": 1})).unwrap();
        assert_eq!(l.names.unwrap(), ["a", "b"]);
        assert_eq!((l.offset, l.on), (Some(-3), Some(true)));
    }

    #[test]
    fn messages_are_the_appliances() {
        let p = "Invalid parameters: ";
        for (params, msg) in [
            (
                json!({"num_blocks": 8, "bogus": 1}),
                "unknown parameter 'bogus'",
            ),
            (
                json!({"num_blocks": 8, "zz": 1, "aa": null}),
                "unknown parameter 'aa'",
            ),
            (json!({"name": "M"}), "'num_blocks' is required"),
            (json!({"num_blocks": null}), "'num_blocks' is required"),
            (
                json!({"num_blocks": "ten"}),
                "'num_blocks' must be an unsigned integer",
            ),
            (
                json!({"num_blocks": -1}),
                "'num_blocks' must be an unsigned integer",
            ),
            (
                json!({"num_blocks": 1.5}),
                "'num_blocks' must be an unsigned integer",
            ),
            (
                json!({"name": 3, "num_blocks": 8}),
                "'name' must be a string",
            ),
            (
                json!({"num_blocks": 8, "block_size": 1u64 << 32}),
                "'block_size' must be an unsigned 32-bit integer",
            ),
            (
                json!({"num_blocks": 8, "md_size": 8}),
                "'md_size' = 8 is not supported",
            ),
            (
                json!({"num_blocks": 8, "md_size": "0"}),
                "'md_size' = \"0\" is not supported",
            ),
            (
                json!({"num_blocks": 8, "md_interleave": true}),
                "'md_interleave' = true is not supported",
            ),
            (
                json!({"num_blocks": 8, "key": "k"}),
                "'key' = \"k\" is not supported",
            ),
            // In field order: a missing key before a later bad one, a bad
            // value before an unknown key.
            (json!({"block_size": "x"}), "'num_blocks' is required"),
            (
                json!({"name": 1, "num_blocks": "x"}),
                "'name' must be a string",
            ),
            (
                json!({"num_blocks": 8, "md_size": 1, "a": 1}),
                "'md_size' = 1 is not supported",
            ),
            (
                json!(["M", 8]),
                "parameters must be an object of named values",
            ),
        ] {
            assert_eq!(
                err::<Create>(params.clone()),
                format!("{p}{msg}"),
                "{params}"
            );
        }
        for (params, msg) in [
            (json!({"names": "a"}), "'names' must be an array"),
            (json!({"names": ["a", 1]}), "'names[1]' must be a string"),
            (json!({"offset": 1.5}), "'offset' must be an integer"),
            (json!({"on": 1}), "'on' must be a boolean"),
        ] {
            assert_eq!(
                err::<Lenient>(params.clone()),
                format!("{p}{msg}"),
                "{params}"
            );
        }
    }

    #[test]
    fn a_hint_follows_a_missing_key() {
        let e = decode_hinted::<ByName>(json!({}), &[("name", "say which")]).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid parameters: 'name' is required (say which)"
        );
        let e = decode_hinted::<ByName>(json!({"name": 1}), &[("name", "say which")]).unwrap_err();
        assert_eq!(e.message, "Invalid parameters: 'name' must be a string");
    }

    #[test]
    fn errors_map_to_errno() {
        let e = bdev_err(BdevError::NotFound("x".into()));
        assert_eq!((e.code, e.message.as_str()), (-19, "No such device"));
        assert_eq!(RpcError::errno(17).message, "File exists");
        assert_eq!(RpcError::errno(-17).code, -17);
    }
}
