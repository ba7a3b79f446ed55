//! A small JSON decoder for step configurations: a `serde` deserializer over
//! the config text that keeps the path of the value it is in, so an error
//! names the field (`env.PATH`, `paths[2]`).
//!
//! Why not `serde_json`: it is most of a small step's code (its parser, its
//! error and float-formatting machinery, and `serde_path_to_error` wrapping
//! every visitor twice). A config is a few hundred bytes decoded once per call;
//! this decoder accepts the same JSON (RFC 8259) into the same Rust types and
//! words its errors as `serde_json` does, in far less code.
//!
//! What it accepts is what `serde_json::from_str` accepts, minus arbitrary
//! precision: integers that fit `u64`/`i64` are integers, other numbers `f64`.
//! Nesting deeper than 128 arrays or objects is refused, as `serde_json` does.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// How deep arrays and objects may nest (`serde_json`'s limit).
const MAX_DEPTH: usize = 128;

/// Writes `s` quoted as `{s:?}` does for the text a config holds: quotes,
/// backslashes and control characters escaped, everything else as it is.
/// (`Debug` would bring in the Unicode printability tables, ~3 KB, to also
/// escape invisible non-ASCII characters.)
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                out.push_str("\\u{");
                let n = c as u32;
                let digits = if n == 0 {
                    1
                } else {
                    (32 - n.leading_zeros()).div_ceil(4)
                };
                for i in (0..digits).rev() {
                    let d = (n >> (i * 4)) & 0xF;
                    out.push(char::from_digit(d, 16).unwrap_or('0'));
                }
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A decoding error: a message and where in the document it happened.
#[derive(Debug)]
pub(crate) struct Error {
    message: String,
    /// Innermost first: segments are added as the error leaves each value.
    path: Vec<Segment>,
    /// Where in `message` the text of an unexpected float goes: the parser,
    /// which has the text, puts it in (formatting the `f64` would bring the
    /// float printer, a fifth of a small step's code, into the guest).
    float_at: Option<usize>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            path: Vec::new(),
            float_at: None,
        }
    }

    fn at(mut self, segment: Segment) -> Error {
        self.path.push(segment);
        self
    }

    /// The path of the value the error is in, as `a.b[2].c`; `None` at the top.
    pub(crate) fn path(&self) -> Option<String> {
        if self.path.is_empty() {
            return None;
        }
        let mut out = String::new();
        for segment in self.path.iter().rev() {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        Some(out)
    }

    /// The message, without the path.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// A float that reached a visitor other than through the parser (a value
    /// buffered by `#[serde(flatten)]` or an untagged enum) is named without its text.
    fn finish(mut self) -> Error {
        self.float_at = None;
        self
    }

    fn with_float(mut self, text: &str) -> Error {
        if let Some(at) = self.float_at.take() {
            self.message.insert_str(at, &format!(" `{text}`"));
        }
        self
    }

    /// `serde`'s wording of an unexpected value (`invalid type: integer `3`,
    /// expected a string`), written here so a float is not formatted.
    fn unexpected(what: &str, unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Error {
        use de::Unexpected as U;
        let mut message = format!("{what}: ");
        let mut float_at = None;
        match unexp {
            U::Bool(b) => message.push_str(&format!("boolean `{b}`")),
            U::Unsigned(n) => message.push_str(&format!("integer `{n}`")),
            U::Signed(n) => message.push_str(&format!("integer `{n}`")),
            U::Float(_) => {
                message.push_str("floating point");
                float_at = Some(message.len());
            }
            U::Char(c) => message.push_str(&format!("character `{c}`")),
            U::Str(s) => {
                message.push_str("string ");
                quote(&mut message, s);
            }
            U::Bytes(_) => message.push_str("byte array"),
            U::Unit => message.push_str("unit value"),
            U::Option => message.push_str("Option value"),
            U::NewtypeStruct => message.push_str("newtype struct"),
            U::Seq => message.push_str("sequence"),
            U::Map => message.push_str("map"),
            U::Enum => message.push_str("enum"),
            U::UnitVariant => message.push_str("unit variant"),
            U::NewtypeVariant => message.push_str("newtype variant"),
            U::TupleVariant => message.push_str("tuple variant"),
            U::StructVariant => message.push_str("struct variant"),
            U::Other(other) => message.push_str(other),
        }
        message.push_str(&format!(", expected {exp}"));
        Error {
            message,
            path: Vec::new(),
            float_at,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(path) => write!(f, "{path}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::unexpected("invalid type", unexp, exp)
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::unexpected("invalid value", unexp, exp)
    }
}

/// Decodes `text` (one JSON value, surrounded by whitespace at most) into `T`.
pub(crate) fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    let mut de = Deserializer {
        input: text.as_bytes(),
        text,
        pos: 0,
        depth: 0,
    };
    let value = T::deserialize(&mut de).map_err(Error::finish)?;
    de.skip_ws();
    if de.pos < de.input.len() {
        return Err(Error::new(
            "trailing characters after the value (a configuration is one JSON object)",
        ));
    }
    Ok(value)
}

struct Deserializer<'de> {
    input: &'de [u8],
    text: &'de str,
    pos: usize,
    depth: usize,
}

enum Token<'de> {
    Null,
    Bool(bool),
    Str(Cow<'de, str>),
    Number(Number<'de>),
    /// After `[`.
    Array,
    /// After `{`.
    Object,
}

enum Number<'de> {
    Unsigned(u64),
    Signed(i64),
    Float(f64, &'de str),
}

impl<'de> Deserializer<'de> {
    /// The text between two positions the parser found at ASCII bytes (so
    /// always on character boundaries): `get`, not indexing, keeps the
    /// string-slicing panic and its formatting out of the guest.
    fn slice(&self, from: usize, to: usize) -> &'de str {
        self.text.get(from..to).unwrap_or_default()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.input.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), Error> {
        let end = self.pos + word.len();
        if self.input.get(self.pos..end) == Some(word.as_bytes()) {
            self.pos = end;
            Ok(())
        } else if end > self.input.len() && word.as_bytes().starts_with(&self.input[self.pos..]) {
            Err(Error::new("EOF while parsing a value"))
        } else {
            Err(Error::new("expected ident"))
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Error::new("recursion limit exceeded"));
        }
        Ok(())
    }

    /// Parses a string; the cursor is on its opening quote.
    fn string(&mut self) -> Result<Cow<'de, str>, Error> {
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            let Some(&byte) = self.input.get(self.pos) else {
                return Err(Error::new("EOF while parsing a string"));
            };
            match byte {
                b'"' => {
                    let tail = self.slice(run, self.pos);
                    self.pos += 1;
                    return Ok(match owned {
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                        None => Cow::Borrowed(tail),
                    });
                }
                b'\\' => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(self.slice(run, self.pos));
                    self.pos += 1;
                    let Some(&escape) = self.input.get(self.pos) else {
                        return Err(Error::new("EOF while parsing a string"));
                    };
                    self.pos += 1;
                    match escape {
                        b'"' => s.push('"'),
                        b'\\' => s.push('\\'),
                        b'/' => s.push('/'),
                        b'b' => s.push('\u{8}'),
                        b'f' => s.push('\u{c}'),
                        b'n' => s.push('\n'),
                        b'r' => s.push('\r'),
                        b't' => s.push('\t'),
                        b'u' => {
                            let c = self.unicode_escape()?;
                            owned.get_or_insert_with(String::new).push(c);
                        }
                        _ => return Err(Error::new("invalid escape")),
                    }
                    run = self.pos;
                }
                0..=0x1f => {
                    return Err(Error::new(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
                _ => self.pos += 1,
            }
        }
    }

    /// The four hex digits after `\u` (and a low surrogate's after them).
    fn hex4(&mut self) -> Result<u16, Error> {
        let Some(digits) = self.input.get(self.pos..self.pos + 4) else {
            return Err(Error::new("EOF while parsing a string"));
        };
        let mut value = 0u16;
        for &d in digits {
            let nibble = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Error::new("invalid escape")),
            };
            value = value * 16 + u16::from(nibble);
        }
        self.pos += 4;
        Ok(value)
    }

    fn unicode_escape(&mut self) -> Result<char, Error> {
        let first = self.hex4()?;
        let code = match first {
            0xDC00..=0xDFFF => {
                return Err(Error::new("lone leading surrogate in hex escape"));
            }
            0xD800..=0xDBFF => {
                if self.input.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(Error::new("unexpected end of hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Error::new("lone leading surrogate in hex escape"));
                }
                0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00)
            }
            other => u32::from(other),
        };
        char::from_u32(code).ok_or_else(|| Error::new("invalid unicode code point"))
    }

    /// Parses a number (RFC 8259 grammar); the cursor is on its first byte.
    fn number(&mut self) -> Result<Number<'de>, Error> {
        let start = self.pos;
        let negative = self.input.get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let digits = |de: &mut Self| {
            let from = de.pos;
            while let Some(b'0'..=b'9') = de.input.get(de.pos) {
                de.pos += 1;
            }
            de.pos - from
        };
        let int_start = self.pos;
        match digits(self) {
            0 if self.pos >= self.input.len() => {
                return Err(Error::new("EOF while parsing a value"));
            }
            0 => return Err(Error::new("invalid number")),
            n if n > 1 && self.input[int_start] == b'0' => {
                return Err(Error::new("invalid number"));
            }
            _ => {}
        }
        let mut float = false;
        if self.input.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            float = true;
            if digits(self) == 0 {
                return Err(Error::new("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.input.get(self.pos) {
            self.pos += 1;
            float = true;
            if let Some(b'+' | b'-') = self.input.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(Error::new("invalid number"));
            }
        }
        let text = self.slice(start, self.pos);
        // `-0` is a float, as `serde_json` reads it (an integer has no negative zero).
        if !float && text != "-0" {
            if negative {
                if let Ok(n) = text.parse::<i64>() {
                    return Ok(Number::Signed(n));
                }
            } else if let Ok(n) = text.parse::<u64>() {
                return Ok(Number::Unsigned(n));
            }
        }
        // Not `str::parse`: its table of powers is a tenth of a small step.
        match crate::float::parse(text) {
            f if f.is_finite() => Ok(Number::Float(f, text)),
            _ => Err(Error::new("number out of range")),
        }
    }

    /// Reads the next value's first token: a whole scalar, or the opening
    /// bracket of an array or object (entered: the depth is counted).
    ///
    /// Not generic and not inlined, so each visitor type's copy of
    /// `deserialize_any` is a dispatch on the token, not a parser of its own.
    #[inline(never)]
    fn token(&mut self) -> Result<Token<'de>, Error> {
        Ok(match self.peek() {
            Some(b'n') => {
                self.literal("null")?;
                Token::Null
            }
            Some(b't') => {
                self.literal("true")?;
                Token::Bool(true)
            }
            Some(b'f') => {
                self.literal("false")?;
                Token::Bool(false)
            }
            Some(b'"') => Token::Str(self.string()?),
            Some(b'-' | b'0'..=b'9') => Token::Number(self.number()?),
            Some(open @ (b'[' | b'{')) => {
                self.enter()?;
                self.pos += 1;
                if open == b'[' {
                    Token::Array
                } else {
                    Token::Object
                }
            }
            _ => return Err(self.expected_value()),
        })
    }

    /// Leaves an array or object whose visitor has returned: `close` must come
    /// next (a visitor that stopped early leaves elements behind).
    #[inline(never)]
    fn close(&mut self, close: u8) -> Result<(), Error> {
        self.depth -= 1;
        if self.eat(close) {
            return Ok(());
        }
        Err(match (self.peek(), close) {
            (None, b']') => Error::new("EOF while parsing a list"),
            (None, _) => Error::new("EOF while parsing an object"),
            (Some(_), _) => Error::new("trailing characters"),
        })
    }

    /// Moves to the next element of an array: `false` at its end.
    #[inline(never)]
    fn element(&mut self, index: usize) -> Result<bool, Error> {
        match self.peek() {
            Some(b']') => Ok(false),
            None => Err(Error::new("EOF while parsing a list")),
            Some(b',') if index > 0 => {
                self.pos += 1;
                if self.peek() == Some(b']') {
                    return Err(Error::new("trailing comma"));
                }
                Ok(true)
            }
            Some(_) if index > 0 => Err(Error::new("expected `,` or `]`")),
            Some(_) => Ok(true),
        }
    }

    /// Reads the next key of an object: `None` at its end.
    #[inline(never)]
    fn key(&mut self, first: bool) -> Result<Option<Cow<'de, str>>, Error> {
        match self.peek() {
            Some(b'}') => return Ok(None),
            None => return Err(Error::new("EOF while parsing an object")),
            Some(b',') if !first => {
                self.pos += 1;
                if self.peek() == Some(b'}') {
                    return Err(Error::new("trailing comma"));
                }
            }
            Some(_) if !first => return Err(Error::new("expected `,` or `}`")),
            Some(_) => {}
        }
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            None => Err(Error::new("EOF while parsing an object")),
            Some(_) => Err(Error::new("key must be a string")),
        }
    }

    /// The `:` after a key.
    #[inline(never)]
    fn colon(&mut self) -> Result<(), Error> {
        if self.eat(b':') {
            return Ok(());
        }
        Err(match self.peek() {
            None => Error::new("EOF while parsing an object"),
            Some(_) => Error::new("expected `:`"),
        })
    }

    /// An error for a value that is missing where one must start.
    fn expected_value(&self) -> Error {
        if self.pos >= self.input.len() {
            Error::new("EOF while parsing a value")
        } else {
            Error::new("expected value")
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.token()? {
            Token::Null => visitor.visit_unit(),
            Token::Bool(b) => visitor.visit_bool(b),
            Token::Str(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Token::Str(Cow::Owned(s)) => visitor.visit_string(s),
            Token::Number(Number::Unsigned(n)) => visitor.visit_u64(n),
            Token::Number(Number::Signed(n)) => visitor.visit_i64(n),
            Token::Number(Number::Float(f, text)) => visitor
                .visit_f64::<Error>(f)
                .map_err(|e| e.with_float(text)),
            Token::Array => {
                let value = visitor.visit_seq(Seq {
                    de: &mut *self,
                    index: 0,
                })?;
                self.close(b']').map(|()| value)
            }
            Token::Object => {
                let value = visitor.visit_map(Map {
                    de: &mut *self,
                    first: true,
                    key: None,
                })?;
                self.close(b'}').map(|()| value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.peek() {
            Some(b'"') => {
                let variant = self.string()?;
                visitor.visit_enum(variant.into_owned().into_deserializer())
            }
            Some(b'{') => {
                self.enter()?;
                self.pos += 1;
                let Some(variant) = self.key(true)? else {
                    return Err(Error::new("expected a variant name, found an empty object"));
                };
                self.colon()?;
                let value = visitor.visit_enum(Enum {
                    de: &mut *self,
                    variant,
                })?;
                self.close(b'}').map(|()| value)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

struct Seq<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if !self.de.element(self.index)? {
            return Ok(None);
        }
        let index = self.index;
        self.index += 1;
        seed.deserialize(&mut *self.de)
            .map(Some)
            .map_err(|e| e.at(Segment::Index(index)))
    }
}

struct Map<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    first: bool,
    key: Option<Cow<'de, str>>,
}

impl<'de> de::MapAccess<'de> for Map<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(key) = self.de.key(self.first)? else {
            return Ok(None);
        };
        self.first = false;
        let value = seed
            .deserialize(Key(&key))
            .map_err(|e| e.at(Segment::Key(key.clone().into_owned())))?;
        self.de.colon()?;
        self.key = Some(key);
        Ok(Some(value))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let key = self.key.take().unwrap_or_default();
        seed.deserialize(&mut *self.de)
            .map_err(|e| e.at(Segment::Key(key.into_owned())))
    }
}

/// An object key: a string, or a number or boolean written as one (as
/// `serde_json` reads keys of maps with integer or boolean keys).
struct Key<'a>(&'a str);

impl Key<'_> {
    /// The key as a JSON integer (strictly: no sign but `-`, no leading zeros),
    /// handed to the visitor, which checks its range.
    fn integer<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, Error> {
        let mut de = Deserializer {
            input: self.0.as_bytes(),
            text: self.0,
            pos: 0,
            depth: 0,
        };
        match de.number() {
            Ok(Number::Unsigned(n)) if de.pos == self.0.len() => visitor.visit_u64(n),
            Ok(Number::Signed(n)) if de.pos == self.0.len() => visitor.visit_i64(n),
            _ => Err(Error::new(format!(
                "invalid key: `{}`, expected an integer",
                self.0
            ))),
        }
    }
}

macro_rules! key_integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.integer(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Key<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.0)
    }

    key_integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(Error::new(format!(
                "invalid key: `{other}`, expected a boolean"
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self.0.to_owned().into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq
        tuple tuple_struct map struct identifier ignored_any
    }
}

struct Enum<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    variant: Cow<'de, str>,
}

impl<'de> de::EnumAccess<'de> for Enum<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let value = seed.deserialize(Key(&self.variant))?;
        Ok((value, self))
    }
}

impl<'de> Enum<'_, 'de> {
    fn inside<T>(
        self,
        f: impl FnOnce(&mut Deserializer<'de>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        f(self.de).map_err(|e| e.at(Segment::Key(self.variant.into_owned())))
    }
}

impl<'de> de::VariantAccess<'de> for Enum<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        self.inside(|de| <() as de::Deserialize>::deserialize(de))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.inside(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.inside(|de| de::Deserializer::deserialize_any(de, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.inside(|de| de::Deserializer::deserialize_any(de, visitor))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[test]
    fn quoted_strings_read_as_debug_writes_them() {
        for text in [
            "",
            "plain",
            "a \"quoted\" \\ path",
            "tab\tnew\nline\rcr\0nul",
            "bell\u{7} del\u{7f} c1\u{85}",
            "it's naïve, 東京, emoji 🦀",
        ] {
            let mut ours = String::new();
            quote(&mut ours, text);
            assert_eq!(ours, format!("{text:?}"));
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Full {
        s: String,
        n: u32,
        i: i64,
        f: f64,
        b: bool,
        o: Option<String>,
        v: Vec<u8>,
        m: BTreeMap<String, i32>,
        k: Vec<Kind>,
        t: (u8, String),
        c: char,
        keys: BTreeMap<u8, bool>,
        #[serde(default)]
        d: u16,
        tagged: Tagged,
        untagged: Vec<Untagged>,
        unit: (),
        nested: Option<Box<Full>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Kind {
        Plain,
        Newtype(u8),
        Struct { x: String },
        Tuple(u8, u8),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "type")]
    enum Tagged {
        X { a: u8 },
        Y,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(untagged)]
    enum Untagged {
        N(f64),
        S(String),
    }

    const FULL: &str = r#"{
        "s": "tab\there \"q\" \u00e9 \ud83d\ude00 /\/",
        "n": 4294967295, "i": -9223372036854775808, "f": -1.5e2, "b": true,
        "o": null, "v": [0, 255], "m": {"a": -1, "b": 2},
        "k": ["plain", {"newtype": 7}, {"struct": {"x": "y"}}, {"tuple": [1, 2]}],
        "t": [3, "three"], "c": "é", "keys": {"1": true, "20": false},
        "tagged": {"type": "X", "a": 1}, "untagged": [2.5, "s", 3],
        "unit": null,
        "nested": {"s": "", "n": 0, "i": 0, "f": 0, "b": false, "o": "x", "v": [],
                   "m": {}, "k": [], "t": [0, ""], "c": "c", "keys": {}, "d": 9,
                   "tagged": {"type": "Y"}, "untagged": [], "unit": null, "nested": null}
    }"#;

    fn failure<T: de::DeserializeOwned + fmt::Debug>(text: &str) -> (Option<String>, String) {
        let e = from_str::<T>(text).expect_err(text);
        (e.path(), e.message().to_owned())
    }

    #[test]
    fn decodes_what_serde_json_decodes() {
        let ours: Full = from_str(FULL).expect("decodes");
        let theirs: Full = serde_json::from_str(FULL).expect("serde_json decodes");
        assert_eq!(ours, theirs);
        assert_eq!(ours.s, "tab\there \"q\" é 😀 //");
        assert_eq!(ours.nested.as_ref().map(|n| n.d), Some(9));
        assert_eq!(
            from_str::<u64>(" 18446744073709551615 ").expect("u64"),
            u64::MAX
        );
        assert_eq!(
            from_str::<f64>("18446744073709551616").expect("big"),
            18446744073709551616.0
        );
        assert!(from_str::<f64>("-0").expect("-0").is_sign_negative());
        assert_eq!(from_str::<Vec<u8>>("[ ]").expect("empty"), Vec::<u8>::new());
    }

    #[test]
    fn errors_name_the_path_and_what_was_expected() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                r#"{"n": "4"}"#,
                Some("n"),
                r#"invalid type: string "4", expected u32"#,
            ),
            (
                r#"{"m": {"a": 1.5}}"#,
                Some("m.a"),
                "invalid type: floating point `1.5`, expected i32",
            ),
            (
                r#"{"v": [1, 256]}"#,
                Some("v[1]"),
                "invalid value: integer `256`, expected u8",
            ),
            (
                r#"{"k": ["plain", {"struct": {"x": 1}}]}"#,
                Some("k[1].struct.x"),
                "invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"k": ["nope"]}"#,
                Some("k[0]"),
                "unknown variant `nope`, expected one of `plain`, `newtype`, `struct`, `tuple`",
            ),
            (
                r#"{"keys": {"x": true}}"#,
                Some("keys.x"),
                "invalid key: `x`, expected an integer",
            ),
            (
                r#"{"keys": {"300": true}}"#,
                Some("keys.300"),
                "invalid value: integer `300`",
            ),
            (
                r#"{"tagged": {"type": "Z"}}"#,
                Some("tagged.type"),
                "unknown variant `Z`, expected `X` or `Y`",
            ),
            (
                r#"{"s": "x", "extra": 1}"#,
                Some("extra"),
                "unknown field `extra`, expected one of",
            ),
            (r#"{"s": "x"}"#, None, "missing field `n`"),
            (r#"{"s": "#, Some("s"), "EOF while parsing a value"),
            (r#"{"s": "x""#, None, "EOF while parsing an object"),
            (r#"{"s": "x",}"#, None, "trailing comma"),
            (r#"{"v": [1 2]}"#, Some("v"), "expected `,` or `]`"),
            (r#"{"s" "x"}"#, None, "expected `:`"),
            (r#"{"s": "a\qb"}"#, Some("s"), "invalid escape"),
            (
                r#"{"s": "\ud800"}"#,
                Some("s"),
                "unexpected end of hex escape",
            ),
            (r#"{"s": tru}"#, Some("s"), "expected ident"),
            (r#"{"f": 01}"#, Some("f"), "invalid number"),
            (r#"{"f": 1e999}"#, Some("f"), "number out of range"),
            (r#""x" {}"#, None, "trailing characters after the value"),
            (
                "\"a\u{1}b\"",
                None,
                "control character (\\u0000-\\u001F) found while parsing a string",
            ),
        ];
        for &(text, path, message) in cases {
            let (got_path, got_message) = if text.starts_with('"') {
                failure::<String>(text)
            } else {
                failure::<Full>(text)
            };
            assert_eq!(got_path.as_deref(), path, "{text}: {got_message}");
            assert!(got_message.starts_with(message), "{text}: {got_message}");
            assert!(!got_message.contains('\0'), "{text}: {got_message:?}");
        }
        // A float buffered by an untagged enum has no text to show.
        let (_, message) = failure::<Vec<Untagged>>("[true]");
        assert_eq!(
            message,
            "data did not match any variant of untagged enum Untagged"
        );
        let (path, message) = failure::<Tagged>(r#"{"type": "X", "a": 1.5}"#);
        assert_eq!(path, None);
        assert_eq!(message, "invalid type: floating point, expected u8");
    }

    #[test]
    fn nesting_is_limited() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        let (_, message) = failure::<serde::de::IgnoredAny>(&deep);
        assert_eq!(message, "recursion limit exceeded");
        let fine = "[".repeat(100) + &"]".repeat(100);
        from_str::<serde::de::IgnoredAny>(&fine).expect("100 levels");
    }

    /// Every one-byte edit of a valid document is accepted or refused as
    /// `serde_json` accepts or refuses it.
    #[test]
    fn accepts_and_refuses_what_serde_json_does() {
        let bytes = FULL.as_bytes();
        let replacements: &[u8] = b" \"{}[],:0-.e\\ux9tn";
        let mut checked = 0;
        for at in 0..bytes.len() {
            let mut edits: Vec<Vec<u8>> = vec![[&bytes[..at], &bytes[at + 1..]].concat()];
            for &r in replacements {
                let mut edited = bytes.to_vec();
                edited[at] = r;
                edits.push(edited);
                edits.push([&bytes[..at], &[r], &bytes[at..]].concat());
            }
            for edit in edits {
                let Ok(text) = std::str::from_utf8(&edit) else {
                    continue;
                };
                let ours = from_str::<Full>(text).map_err(|e| e.to_string());
                let theirs = serde_json::from_str::<Full>(text).map_err(|e| e.to_string());
                assert_eq!(
                    ours.is_ok(),
                    theirs.is_ok(),
                    "{text}\nours: {ours:?}\ntheirs: {theirs:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
