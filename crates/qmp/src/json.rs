//! QEMU's QMP JSON input: a byte-fed lexer, a bracket-counting streamer and a parser, with
//! the behaviour of QEMU 7.2's `qobject/json-lexer.c`, `json-streamer.c` and
//! `json-parser.c`:
//!
//! - Extensions: single-quoted strings and the `\'` escape. Numbers as RFC 8259; integers
//!   that fit `i64` are signed, larger ones that fit `u64` unsigned, anything else `f64`.
//! - A message ends when the counts of open `{` and `[` both return to zero or either goes
//!   negative; a top-level scalar is a message by itself.
//! - A lexical error (a byte that cannot start or continue a token) is answered at once with
//!   `JSON parse error, stray '...'`, drops the buffered tokens, and puts the lexer into
//!   recovery: input is skipped up to a structural character (`{}[]:,`), a control character
//!   or `\xFE`/`\xFF`. This is QMP's documented way to resynchronise.
//! - Parse errors are QEMU's texts (`expecting value`, `duplicate key`, ...).
//!
//! Deliberate difference: the limits are smaller than QEMU's (which allow 64 MiB per
//! message), because a daemon serves many clients: [`MAX_MESSAGE_BYTES`] of token text per
//! message and [`MAX_TOKENS`] tokens; nesting is capped at 1024 like QEMU's.
//! Exceeding one answers an error and resets, as QEMU does.

use serde_json::{Map, Number, Value};

/// Token text one message may buffer.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Tokens one message may have.
pub const MAX_TOKENS: usize = 256 * 1024;
/// Nesting depth (`[` plus `{`) one message may reach.
pub const MAX_NESTING: i64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    Str,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Recovery,
    DqString,
    DqEscape,
    SqString,
    SqEscape,
    Zero,
    Neg,
    NonZero,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
    Keyword,
}

/// The QMP input stream of one connection. Feed it bytes; take complete messages.
#[derive(Debug)]
pub struct JsonStream {
    state: State,
    token: Vec<u8>,
    tokens: Vec<Token>,
    token_bytes: usize,
    braces: i64,
    brackets: i64,
}

/// One complete message: a value, or the error text QEMU would answer with.
pub type Message = Result<Value, String>;

impl Default for JsonStream {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonStream {
    pub fn new() -> Self {
        JsonStream {
            state: State::Start,
            token: Vec::new(),
            tokens: Vec::new(),
            token_bytes: 0,
            braces: 0,
            brackets: 0,
        }
    }

    /// True while a message is partly received (what a disconnect would throw away).
    pub fn is_mid_message(&self) -> bool {
        !self.tokens.is_empty() || !self.token.is_empty()
    }

    /// Feed bytes; every message they complete is appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Message>) {
        for &b in data {
            self.feed_byte(b, out);
        }
    }

    fn feed_byte(&mut self, b: u8, out: &mut Vec<Message>) {
        // A byte is looked at at most twice: once to end the token before it, once to start
        // the next one.
        let mut again = true;
        while again {
            again = false;
            match self.state {
                State::Recovery => {
                    if b"{}[]:,".contains(&b) || (b < 0x20 && b != b'\t') || b >= 0xFE {
                        // The byte is looked at again from the start state: structural
                        // characters and line ends resynchronise quietly; other control
                        // characters and 0xFE/0xFF are one more stray byte, as in QEMU.
                        self.state = State::Start;
                        again = true;
                    }
                }
                State::Start => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => self.single(Kind::LCurly, b, out),
                    b'}' => self.single(Kind::RCurly, b, out),
                    b'[' => self.single(Kind::LSquare, b, out),
                    b']' => self.single(Kind::RSquare, b, out),
                    b':' => self.single(Kind::Colon, b, out),
                    b',' => self.single(Kind::Comma, b, out),
                    b'"' => self.begin(State::DqString, b),
                    b'\'' => self.begin(State::SqString, b),
                    b'0' => self.begin(State::Zero, b),
                    b'1'..=b'9' => self.begin(State::NonZero, b),
                    b'-' => self.begin(State::Neg, b),
                    b'a'..=b'z' => self.begin(State::Keyword, b),
                    _ => {
                        self.token.push(b);
                        self.lex_error(out);
                    }
                },
                State::DqString | State::SqString => {
                    let quote = if self.state == State::DqString {
                        b'"'
                    } else {
                        b'\''
                    };
                    self.token.push(b);
                    if b == quote {
                        self.finish(Kind::Str, out);
                    } else if b == b'\\' {
                        self.state = if quote == b'"' {
                            State::DqEscape
                        } else {
                            State::SqEscape
                        };
                    } else if !(0x20..0xFE).contains(&b) {
                        self.lex_error(out);
                    }
                }
                State::DqEscape | State::SqEscape => {
                    // The lexer takes any printable byte after a backslash; the parser
                    // judges the escape (QEMU reports bad ones as parse errors).
                    self.token.push(b);
                    if (0x20..0xFE).contains(&b) {
                        self.state = if self.state == State::DqEscape {
                            State::DqString
                        } else {
                            State::SqString
                        };
                    } else {
                        self.lex_error(out);
                    }
                }
                State::Neg => {
                    self.token.push(b);
                    match b {
                        b'0' => self.state = State::Zero,
                        b'1'..=b'9' => self.state = State::NonZero,
                        _ => self.lex_error(out),
                    }
                }
                State::Zero => match b {
                    b'.' => self.push_state(b, State::Dot),
                    b'e' | b'E' => self.push_state(b, State::Exp),
                    b'0'..=b'9' => {
                        self.token.push(b);
                        self.lex_error(out);
                    }
                    _ => again = self.end_lookahead(Kind::Integer, out),
                },
                State::NonZero => match b {
                    b'0'..=b'9' => self.token.push(b),
                    b'.' => self.push_state(b, State::Dot),
                    b'e' | b'E' => self.push_state(b, State::Exp),
                    _ => again = self.end_lookahead(Kind::Integer, out),
                },
                State::Dot => {
                    self.token.push(b);
                    if b.is_ascii_digit() {
                        self.state = State::Frac;
                    } else {
                        self.lex_error(out);
                    }
                }
                State::Frac => match b {
                    b'0'..=b'9' => self.token.push(b),
                    b'e' | b'E' => self.push_state(b, State::Exp),
                    _ => again = self.end_lookahead(Kind::Float, out),
                },
                State::Exp => {
                    self.token.push(b);
                    match b {
                        b'+' | b'-' => self.state = State::ExpSign,
                        b'0'..=b'9' => self.state = State::ExpDigits,
                        _ => self.lex_error(out),
                    }
                }
                State::ExpSign => {
                    self.token.push(b);
                    if b.is_ascii_digit() {
                        self.state = State::ExpDigits;
                    } else {
                        self.lex_error(out);
                    }
                }
                State::ExpDigits => match b {
                    b'0'..=b'9' => self.token.push(b),
                    _ => again = self.end_lookahead(Kind::Float, out),
                },
                State::Keyword => match b {
                    b'a'..=b'z' => self.token.push(b),
                    _ => again = self.end_lookahead(Kind::Keyword, out),
                },
            }
            // A single token may not outgrow the message limit (QEMU's lexer check).
            if self.token.len() > MAX_MESSAGE_BYTES {
                self.token.clear();
                self.state = State::Start;
                self.emit(Err("JSON token size limit exceeded".into()), out);
            }
        }
    }

    fn begin(&mut self, state: State, b: u8) {
        self.token.push(b);
        self.state = state;
    }

    fn push_state(&mut self, b: u8, state: State) {
        self.token.push(b);
        self.state = state;
    }

    fn single(&mut self, kind: Kind, b: u8, out: &mut Vec<Message>) {
        self.token.push(b);
        self.finish(kind, out);
    }

    /// End the current token before `b`, which is then looked at again from the start.
    fn end_lookahead(&mut self, kind: Kind, out: &mut Vec<Message>) -> bool {
        self.finish(kind, out);
        true
    }

    fn finish(&mut self, kind: Kind, out: &mut Vec<Message>) {
        let text = std::mem::take(&mut self.token);
        self.state = State::Start;
        self.process(Token { kind, text }, out);
    }

    fn lex_error(&mut self, out: &mut Vec<Message>) {
        let text = std::mem::take(&mut self.token);
        self.state = State::Recovery;
        let shown = String::from_utf8_lossy(&text);
        // QEMU prints the token as a C string: it ends at the first NUL.
        let shown = shown.split('\0').next().unwrap_or_default();
        self.emit(Err(format!("JSON parse error, stray '{shown}'")), out);
    }

    /// The streamer: QEMU's `json_message_process_token`.
    fn process(&mut self, token: Token, out: &mut Vec<Message>) {
        match token.kind {
            Kind::LCurly => self.braces += 1,
            Kind::RCurly => self.braces -= 1,
            Kind::LSquare => self.brackets += 1,
            Kind::RSquare => self.brackets -= 1,
            _ => {}
        }
        if self.token_bytes + token.text.len() + 1 > MAX_MESSAGE_BYTES {
            return self.emit(Err("JSON token size limit exceeded".into()), out);
        }
        if self.tokens.len() + 1 > MAX_TOKENS {
            return self.emit(Err("JSON token count limit exceeded".into()), out);
        }
        if self.braces + self.brackets > MAX_NESTING {
            return self.emit(Err("JSON nesting depth limit exceeded".into()), out);
        }
        self.token_bytes += token.text.len();
        self.tokens.push(token);
        if (self.braces > 0 || self.brackets > 0) && self.braces >= 0 && self.brackets >= 0 {
            return;
        }
        let tokens = std::mem::take(&mut self.tokens);
        let msg = Parser {
            tokens: &tokens,
            pos: 0,
            err: None,
        }
        .parse();
        self.emit(msg, out);
    }

    fn emit(&mut self, msg: Message, out: &mut Vec<Message>) {
        self.braces = 0;
        self.brackets = 0;
        self.tokens.clear();
        self.token_bytes = 0;
        out.push(msg);
    }
}

/// QEMU's recursive-descent parser over one message's tokens; the first error wins.
struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    err: Option<String>,
}

/// Depth is bounded by the streamer's nesting limit, so recursion is bounded too.
impl Parser<'_> {
    fn parse(mut self) -> Message {
        match self.value() {
            Some(v) if self.err.is_none() => Ok(v),
            _ => Err(format!(
                "JSON parse error, {}",
                self.err.unwrap_or_else(|| "expecting value".into())
            )),
        }
    }

    fn error(&mut self, msg: impl Into<String>) {
        if self.err.is_none() {
            self.err = Some(msg.into());
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn pop(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    fn value(&mut self) -> Option<Value> {
        let Some(tok) = self.peek() else {
            self.error("premature EOI");
            return None;
        };
        match tok.kind {
            Kind::LCurly => self.object(),
            Kind::LSquare => self.array(),
            Kind::Integer | Kind::Float | Kind::Str | Kind::Keyword => {
                let tok = tok.clone();
                self.pos += 1;
                self.literal(&tok)
            }
            _ => {
                self.error("expecting value");
                None
            }
        }
    }

    fn object(&mut self) -> Option<Value> {
        self.pos += 1;
        let mut map = Map::new();
        match self.peek() {
            None => {
                self.error("premature EOI");
                return None;
            }
            Some(t) if t.kind == Kind::RCurly => {
                self.pos += 1;
                return Some(Value::Object(map));
            }
            Some(_) => {}
        }
        self.pair(&mut map)?;
        loop {
            let Some(t) = self.pop() else {
                self.error("premature EOI");
                return None;
            };
            match t.kind {
                Kind::RCurly => return Some(Value::Object(map)),
                Kind::Comma => self.pair(&mut map)?,
                _ => {
                    self.error("expected separator in dict");
                    return None;
                }
            }
        }
    }

    fn pair(&mut self, map: &mut Map<String, Value>) -> Option<()> {
        if self.peek().is_none() {
            self.error("premature EOI");
            return None;
        }
        let key = match self.value() {
            Some(Value::String(s)) => s,
            _ => {
                self.error("key is not a string in object");
                return None;
            }
        };
        match self.pop() {
            None => {
                self.error("premature EOI");
                return None;
            }
            Some(t) if t.kind != Kind::Colon => {
                self.error("missing : in object pair");
                return None;
            }
            Some(_) => {}
        }
        let Some(value) = self.value() else {
            self.error("Missing value in dict");
            return None;
        };
        if map.contains_key(&key) {
            self.error("duplicate key");
            return None;
        }
        map.insert(key, value);
        Some(())
    }

    fn array(&mut self) -> Option<Value> {
        self.pos += 1;
        let mut items = Vec::new();
        match self.peek() {
            None => {
                self.error("premature EOI");
                return None;
            }
            Some(t) if t.kind == Kind::RSquare => {
                self.pos += 1;
                return Some(Value::Array(items));
            }
            Some(_) => {}
        }
        items.push(self.value()?);
        loop {
            let Some(t) = self.pop() else {
                self.error("premature EOI");
                return None;
            };
            match t.kind {
                Kind::RSquare => return Some(Value::Array(items)),
                Kind::Comma => items.push(self.value()?),
                _ => {
                    self.error("expected separator in list");
                    return None;
                }
            }
        }
    }

    fn literal(&mut self, tok: &Token) -> Option<Value> {
        let text = &tok.text;
        match tok.kind {
            Kind::Keyword => match text.as_slice() {
                b"true" => Some(Value::Bool(true)),
                b"false" => Some(Value::Bool(false)),
                b"null" => Some(Value::Null),
                _ => {
                    self.error(format!(
                        "invalid keyword '{}'",
                        String::from_utf8_lossy(text)
                    ));
                    None
                }
            },
            Kind::Integer => {
                // The lexer only lets ASCII digits and '-' through.
                let s = std::str::from_utf8(text).ok()?;
                if let Ok(i) = s.parse::<i64>() {
                    Some(Value::Number(i.into()))
                } else if let Ok(u) = s.parse::<u64>() {
                    Some(Value::Number(u.into()))
                } else {
                    float(s)
                }
            }
            Kind::Float => float(std::str::from_utf8(text).ok()?),
            Kind::Str => match unquote(text) {
                Ok(s) => Some(Value::String(s)),
                Err(e) => {
                    self.error(e);
                    None
                }
            },
            _ => None,
        }
    }
}

fn float(s: &str) -> Option<Value> {
    // Out-of-range values become infinities in strtod; JSON cannot carry them, so they are
    // kept as the largest finite value of their sign, which is what QEMU prints back anyway
    // only for in-range input.
    let f: f64 = s.parse().ok()?;
    let f = if f.is_finite() {
        f
    } else {
        f.signum() * f64::MAX
    };
    Number::from_f64(f).map(Value::Number)
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Decode a string token (quotes included) as QEMU's `parse_string` does.
fn unquote(tok: &[u8]) -> Result<String, String> {
    let body = &tok[1..tok.len().saturating_sub(1).max(1)];
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&esc) = body.get(i + 1) else {
            return Err("invalid escape sequence in string".into());
        };
        i += 2;
        let c = match esc {
            b'"' => '"',
            b'\'' => '\'',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let start = i;
                let mut cp = hex4(&body[i..]).ok_or("invalid hex escape sequence in string")?;
                i += 4;
                if (0xD800..=0xDBFF).contains(&cp)
                    && body.get(i) == Some(&b'\\')
                    && body.get(i + 1) == Some(&b'u')
                {
                    match hex4(&body[i + 2..]) {
                        Some(lo) if (0xDC00..=0xDFFF).contains(&lo) => {
                            cp = 0x10000 + ((cp & 0x3FF) << 10) + (lo & 0x3FF);
                            i += 6;
                        }
                        _ => cp = u32::MAX,
                    }
                }
                match char::from_u32(cp) {
                    Some(c) => c,
                    None => {
                        return Err(format!(
                            "\\u{} is not a valid Unicode character",
                            String::from_utf8_lossy(&body[start..start + 4])
                        ))
                    }
                }
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 sequence in string".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msgs(input: &[u8]) -> Vec<Message> {
        let mut s = JsonStream::new();
        let mut out = Vec::new();
        s.feed(input, &mut out);
        out
    }

    fn err(input: &[u8]) -> Vec<String> {
        msgs(input).into_iter().map(|m| m.unwrap_err()).collect()
    }

    #[test]
    fn values_and_extensions() {
        assert_eq!(
            msgs(b"{'execute': 'x', \"id\": [1, -2, 18446744073709551615, 1.5, true, null, 'a\\'b\"']}"),
            vec![Ok(json!({"execute": "x", "id": [1, -2, 18446744073709551615u64, 1.5, true, null, "a'b\""]}))]
        );
        assert_eq!(msgs(b"42 "), vec![Ok(json!(42))]);
        assert_eq!(msgs(b"\"\\u00e9\\ud83d\\ude00\""), vec![Ok(json!("é😀"))]);
        // Messages need no delimiter.
        assert_eq!(msgs(b"{}{}[]").len(), 3);
        // An incomplete message waits.
        assert!(msgs(b"{\"execute\": \"x\"").is_empty());
    }

    #[test]
    fn qemu_error_texts() {
        assert_eq!(
            err(b"{garbage}"),
            ["JSON parse error, invalid keyword 'garbage'"]
        );
        assert_eq!(err(b"[1,]"), ["JSON parse error, expecting value"]);
        assert_eq!(
            err(b"{\"a\":1,\"a\":2}"),
            ["JSON parse error, duplicate key"]
        );
        assert_eq!(err(b"}"), ["JSON parse error, expecting value"]);
        assert_eq!(
            err(b"{\"execute\" \"x\"}"),
            ["JSON parse error, missing : in object pair"]
        );
        assert_eq!(
            err(b"{1:2}"),
            ["JSON parse error, key is not a string in object"]
        );
        assert_eq!(
            err(b"[1 2]"),
            ["JSON parse error, expected separator in list"]
        );
        assert_eq!(
            err(b"{\"a\":1 \"b\"}"),
            ["JSON parse error, expected separator in dict"]
        );
        assert_eq!(
            err(b"ab\x00"),
            [
                "JSON parse error, invalid keyword 'ab'",
                "JSON parse error, stray ''"
            ]
        );
        assert_eq!(
            err(b"{\"id\": 01}"),
            [
                "JSON parse error, stray '01'",
                "JSON parse error, expecting value"
            ]
        );
        assert_eq!(
            err(b"{\"id\": \"\xff\"}"),
            [
                "JSON parse error, stray '\"\u{fffd}'",
                "JSON parse error, expecting value"
            ]
        );
        assert_eq!(
            err(b"\"\xc3\x28\""),
            ["JSON parse error, invalid UTF-8 sequence in string"]
        );
        assert_eq!(
            err(br#""\q""#),
            ["JSON parse error, invalid escape sequence in string"]
        );
        assert_eq!(
            err(br#""\u12""#),
            ["JSON parse error, invalid hex escape sequence in string"]
        );
    }

    #[test]
    fn recovery_skips_to_a_structural_character() {
        let m = msgs(b"{\"execute\":\"quit\"\x01 42 \"x\" {\"a\":1}");
        assert_eq!(
            m,
            vec![
                Err("JSON parse error, stray '\u{1}'".into()),
                Ok(json!({"a": 1}))
            ]
        );
    }

    #[test]
    fn nesting_limit() {
        let mut deep = vec![b'['; 1100];
        deep.extend(vec![b']'; 1100]);
        let m = msgs(&deep);
        assert_eq!(m[0], Err("JSON nesting depth limit exceeded".into()));
        let mut ok = vec![b'['; 1000];
        ok.extend(vec![b']'; 1000]);
        assert!(msgs(&ok)[0].is_ok());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = msgs(&data);
        }

        #[test]
        fn split_feeding_gives_the_same_messages(data in "[{}\\[\\]:, a-z0-9\"'\\\\.-]{0,64}", cut in 0usize..64) {
            let bytes = data.as_bytes();
            let cut = cut.min(bytes.len());
            let mut s = JsonStream::new();
            let mut a = Vec::new();
            s.feed(&bytes[..cut], &mut a);
            s.feed(&bytes[cut..], &mut a);
            proptest::prop_assert_eq!(a, msgs(bytes));
        }
    }
}
