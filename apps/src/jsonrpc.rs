//! JSON-RPC 2.0: framing a byte stream into JSON values, parsing and
//! validating requests (single and batch), encoding responses, and the
//! error codes SPDK answers with.
//!
//! Everything here is a pure function of its input (no I/O), so the fuzz
//! harnesses drive it directly: [`parse_request`] takes any bytes and never
//! panics; [`Framer`] takes any byte stream.

use serde_json::{Map, Value};

/// Largest request (one JSON value, a batch counts as one) accepted on a
/// connection; a longer one is answered with -32600 and the connection is
/// closed.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// JSON-RPC 2.0: the text is not JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC 2.0: the JSON is not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC 2.0: no such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC 2.0: wrong parameter names, types or values.
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC 2.0: the server failed.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK: the method may not be called in the current state.
pub const INVALID_STATE: i32 = -1;

/// An error answer: a code and a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    /// JSON-RPC code, or a negative errno for domain failures.
    pub code: i32,
    /// The message (for errno codes, the errno's text as `strerror` gives
    /// it, which is what SPDK sends).
    pub message: String,
}

impl RpcError {
    /// A -32700 parse error.
    pub fn parse_error() -> Self {
        RpcError {
            code: PARSE_ERROR,
            message: "Parse error".into(),
        }
    }

    /// A -32600 invalid request, with the reason.
    pub fn invalid_request(why: &str) -> Self {
        RpcError {
            code: INVALID_REQUEST,
            message: format!("Invalid request: {why}"),
        }
    }

    /// A -32601 for `method`.
    pub fn method_not_found(method: &str) -> Self {
        RpcError {
            code: METHOD_NOT_FOUND,
            message: format!("Method not found: {method}"),
        }
    }

    /// A -32602 invalid parameters, with the reason.
    pub fn invalid_params(why: impl std::fmt::Display) -> Self {
        RpcError {
            code: INVALID_PARAMS,
            message: format!("Invalid parameters: {why}"),
        }
    }

    /// A -32603 internal error, with the reason.
    pub fn internal(why: impl std::fmt::Display) -> Self {
        RpcError {
            code: INTERNAL_ERROR,
            message: format!("Internal error: {why}"),
        }
    }

    /// The error for errno `e` (either sign): code `-|e|`, message the
    /// errno's text ("No such device" for 19), as SPDK answers.
    pub fn errno(e: i32) -> Self {
        bdev::rpc::RpcError::errno(e).into()
    }
}

impl From<bdev::rpc::RpcError> for RpcError {
    /// A bdev module's answer, as it is.
    fn from(e: bdev::rpc::RpcError) -> Self {
        RpcError {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<RpcError> for bdev::rpc::RpcError {
    fn from(e: RpcError) -> Self {
        bdev::rpc::RpcError {
            code: e.code,
            message: e.message,
        }
    }
}

/// The C library's text for errno `e` ("No such file or directory" for 2).
pub fn strerror(e: i32) -> String {
    bdev::rpc::strerror(e)
}

/// One request of a message, valid or not.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// A well-formed request.
    Valid(Request),
    /// A value that is not a request: answered with this error and id.
    Invalid {
        /// The request's id when it had a usable one, else null.
        id: Value,
        /// Why it is invalid (-32600).
        error: RpcError,
    },
}

/// A well-formed request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The id to answer with; `None` for a notification (no answer).
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The parameters (an object or an array), if any.
    pub params: Option<Value>,
}

/// What one JSON value received on a connection holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// One request.
    Single(Call),
    /// A batch (a non-empty array) of requests, answered by an array.
    Batch(Vec<Call>),
}

/// Parses one complete JSON value as a JSON-RPC 2.0 message.
///
/// # Errors
/// [`RpcError::parse_error`] when the bytes are not exactly one JSON value
/// (whitespace around it is allowed).
pub fn parse_request(bytes: &[u8]) -> Result<Incoming, RpcError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| RpcError::parse_error())?;
    Ok(match v {
        Value::Array(items) if items.is_empty() => Incoming::Single(Call::Invalid {
            id: Value::Null,
            error: RpcError::invalid_request("empty batch"),
        }),
        Value::Array(items) => Incoming::Batch(items.into_iter().map(validate).collect()),
        other => Incoming::Single(validate(other)),
    })
}

/// Checks that `v` is a JSON-RPC 2.0 request object.
pub fn validate(v: Value) -> Call {
    let Value::Object(mut obj) = v else {
        return Call::Invalid {
            id: Value::Null,
            error: RpcError::invalid_request("not an object"),
        };
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return Call::Invalid {
                id: Value::Null,
                error: RpcError::invalid_request("id must be a string, a number or null"),
            };
        }
    };
    let invalid = |why: &str| Call::Invalid {
        id: id.clone().unwrap_or(Value::Null),
        error: RpcError::invalid_request(why),
    };
    match obj.get("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        _ => return invalid("jsonrpc must be \"2.0\""),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return invalid("method must be a string"),
    };
    // `"params": null` is no parameters, as SPDK's server takes it (Go's
    // `encoding/json` writes a nil interface so: Longhorn's client sends it
    // for every call without parameters).
    let params = match obj.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return invalid("params must be an object, an array or null"),
    };
    Call::Valid(Request { id, method, params })
}

/// A successful answer.
pub fn response_ok(id: &Value, result: Value) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id.clone());
    m.insert("result".into(), result);
    Value::Object(m)
}

/// An error answer.
pub fn response_err(id: &Value, e: &RpcError) -> Value {
    let mut err = Map::new();
    err.insert("code".into(), e.code.into());
    err.insert("message".into(), e.message.clone().into());
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id.clone());
    m.insert("error".into(), Value::Object(err));
    Value::Object(m)
}

/// What [`Framer::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete top-level value (or of something that is
    /// not JSON: [`parse_request`] tells).
    Value(Vec<u8>),
    /// More bytes are needed.
    Incomplete,
    /// The value being received is over the size limit.
    TooLarge,
}

/// Splits a byte stream into top-level JSON values, as they arrive,
/// without parsing them twice: a scan that tracks nesting depth, strings
/// and escapes resumes where the previous one stopped. A value that does
/// not start with `{` or `[` is handed over as it is (it can only be an
/// error, which [`parse_request`] reports).
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
    limit: usize,
}

impl Framer {
    /// A framer refusing values over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escape: false,
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete value, if the bytes held contain one.
    pub fn next_frame(&mut self) -> Frame {
        if self.scanned == 0 {
            let ws = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            self.buf.drain(..ws);
            match self.buf.first() {
                None => return Frame::Incomplete,
                Some(b'{' | b'[') => {}
                Some(_) => {
                    // Not an object or array: up to the next whitespace (or
                    // all of it) goes to the parser, which rejects it.
                    let end = self
                        .buf
                        .iter()
                        .position(|b| b.is_ascii_whitespace())
                        .unwrap_or(self.buf.len());
                    let v: Vec<u8> = self.buf.drain(..end).collect();
                    return Frame::Value(v);
                }
            }
        }
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            i += 1;
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let v: Vec<u8> = self.buf.drain(..i).collect();
                        self.scanned = 0;
                        self.in_string = false;
                        self.escape = false;
                        return Frame::Value(v);
                    }
                }
                _ => {}
            }
        }
        self.scanned = i;
        if self.buf.len() > self.limit {
            Frame::TooLarge
        } else {
            Frame::Incomplete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_batch_notification_and_invalid() {
        let r = parse_request(br#"{"jsonrpc":"2.0","method":"m","id":1,"params":{"a":1}}"#);
        assert_eq!(
            r.unwrap(),
            Incoming::Single(Call::Valid(Request {
                id: Some(json!(1)),
                method: "m".into(),
                params: Some(json!({"a": 1})),
            }))
        );
        let r = parse_request(br#"[{"jsonrpc":"2.0","method":"m"}, 1]"#).unwrap();
        let Incoming::Batch(calls) = r else {
            panic!("batch")
        };
        assert!(matches!(&calls[0], Call::Valid(Request { id: None, .. })));
        assert!(matches!(&calls[1], Call::Invalid { error, .. } if error.code == INVALID_REQUEST));
        assert!(matches!(
            parse_request(b"[]").unwrap(),
            Incoming::Single(Call::Invalid { .. })
        ));
        assert_eq!(parse_request(b"{").unwrap_err().code, PARSE_ERROR);
        assert_eq!(
            parse_request(b"{\"a\":1} {}").unwrap_err().code,
            PARSE_ERROR
        );
        let Incoming::Single(Call::Invalid { id, error }) =
            parse_request(br#"{"jsonrpc":"1.0","method":"m","id":"x"}"#).unwrap()
        else {
            panic!("invalid")
        };
        assert_eq!((id, error.code), (json!("x"), INVALID_REQUEST));
        let Incoming::Single(Call::Invalid { error, .. }) =
            parse_request(br#"{"jsonrpc":"2.0","method":"m","params":3,"id":1}"#).unwrap()
        else {
            panic!("invalid")
        };
        assert_eq!(error.code, INVALID_REQUEST);
        // Null params are no params.
        let Incoming::Single(Call::Valid(r)) =
            parse_request(br#"{"jsonrpc":"2.0","method":"m","params":null,"id":2}"#).unwrap()
        else {
            panic!("valid")
        };
        assert_eq!((r.params, r.id), (None, Some(json!(2))));
    }

    #[test]
    fn errno_text() {
        assert_eq!(
            RpcError::errno(-19),
            RpcError {
                code: -19,
                message: "No such device".into()
            }
        );
        assert_eq!(RpcError::errno(2).message, "No such file or directory");
        assert_eq!(RpcError::errno(-16).message, "Device or resource busy");
        assert_eq!(RpcError::errno(-17).message, "File exists");
        assert_eq!(RpcError::errno(-22).message, "Invalid argument");
    }

    #[test]
    fn framer_splits_streams_in_any_chunking() {
        let stream = b" {\"a\":\"}{\\\"\"}\n[1,[2]]  {\"b\":{}}x";
        for chunk in 1..stream.len() {
            let mut f = Framer::new(1024);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                f.push(c);
                while let Frame::Value(v) = f.next_frame() {
                    got.push(String::from_utf8(v).unwrap());
                }
            }
            assert_eq!(
                got,
                vec!["{\"a\":\"}{\\\"\"}", "[1,[2]]", "{\"b\":{}}", "x"],
                "chunk {chunk}"
            );
        }
        let mut f = Framer::new(8);
        f.push(b"{\"aaaaaaaaaaaa");
        assert_eq!(f.next_frame(), Frame::TooLarge);
    }
}
