//! QEMU's `key=value,...` option syntax, as `-netdev` takes it, turned into the JSON values
//! the QMP path takes, so both paths share one visitor.
//!
//! Syntax (QEMU's QemuOpts, util/qemu-option.c, with keyval's dotted keys):
//! - `,` separates parameters; `,,` inside a value is a literal comma.
//! - The first parameter may omit its key: it is the *implied* key (`type` for `-netdev`),
//!   so `user,id=n0` is `type=user,id=n0`.
//! - A bare `key` means `key=on`.
//! - A repeated key builds a list (`hostfwd=...,hostfwd=...`); for a member that is not a
//!   list, the last value wins, as QemuOpts does.
//! - `a.b=v` nests (`addr.type=unix,addr.path=/s`), as QEMU 7.2's keyval does for
//!   `stream`/`dgram`.
//!
//! Values are typed by the schema afterwards ([`coerce`]): booleans
//! `on/off/yes/no/true/false/y/n`, integers in C's base-0 form (`0x1f`, `017`), sizes with
//! suffixes `B k K M G T P E` (powers of 1024, a fraction allowed: `1.5G`), `['String']`
//! members from plain strings.

use serde_json::{Map, Number, Value};

use crate::schema::{Member, Ty};

/// An option-string error; `Display` names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyvalError {
    #[error("empty option string")]
    Empty,
    #[error("invalid parameter '{0}': a parameter name is required")]
    NoKey(String),
    #[error("parameter '{0}' is given both as a value and with sub-keys")]
    Conflict(String),
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    Bool(String),
    #[error("Parameter '{0}' expects a number")]
    Int(String),
    #[error("Parameter '{0}' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)")]
    Size(String),
    #[error("Parameter '{0}' cannot take a value of type {1} on the command line")]
    Unsupported(String, &'static str),
}

/// Split an option string into `(key, value)` pairs, in order.
pub fn split(input: &str, implied_key: Option<&str>) -> Result<Vec<(String, String)>, KeyvalError> {
    if input.is_empty() {
        return Err(KeyvalError::Empty);
    }
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut chars = input.chars().peekable();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for (i, part) in parts.into_iter().enumerate() {
        match part.split_once('=') {
            Some((k, v)) => {
                if k.is_empty() {
                    return Err(KeyvalError::NoKey(part.clone()));
                }
                params.push((k.to_string(), v.to_string()));
            }
            None if i == 0 && implied_key.is_some() => {
                params.push((implied_key.unwrap_or_default().to_string(), part));
            }
            None if part.is_empty() => {
                // A trailing comma ("a=1,") names nothing; QemuOpts ignores it.
            }
            None => params.push((part, "on".to_string())),
        }
    }
    Ok(params)
}

/// Build a JSON object of strings from the pairs: dotted keys nest, repeats make arrays.
pub fn to_tree(pairs: &[(String, String)]) -> Result<Value, KeyvalError> {
    let mut root = Map::new();
    for (key, val) in pairs {
        let mut obj = &mut root;
        let mut segs = key.split('.').peekable();
        while let Some(seg) = segs.next() {
            if seg.is_empty() {
                return Err(KeyvalError::NoKey(key.clone()));
            }
            if segs.peek().is_none() {
                match obj.get_mut(seg) {
                    None => {
                        obj.insert(seg.to_string(), Value::String(val.clone()));
                    }
                    Some(Value::Array(a)) => a.push(Value::String(val.clone())),
                    Some(prev @ Value::String(_)) => {
                        let first = prev.take();
                        *prev = Value::Array(vec![first, Value::String(val.clone())]);
                    }
                    Some(_) => return Err(KeyvalError::Conflict(key.clone())),
                }
            } else {
                let entry = obj
                    .entry(seg.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                obj = match entry {
                    Value::Object(o) => o,
                    _ => return Err(KeyvalError::Conflict(key.clone())),
                };
            }
        }
    }
    Ok(Value::Object(root))
}

/// Parse an option string into a tree of strings.
pub fn parse(input: &str, implied_key: Option<&str>) -> Result<Value, KeyvalError> {
    to_tree(&split(input, implied_key)?)
}

/// Give the strings of a keyval tree the JSON types `ty` wants. Members the schema does not
/// know are left as they are, for the visitor to report.
pub fn coerce(value: &Value, ty: &Ty) -> Result<Value, KeyvalError> {
    coerce_at(value, ty, "")
}

fn coerce_at(value: &Value, ty: &Ty, name: &str) -> Result<Value, KeyvalError> {
    // A repeated key given to a member that is not a list: the last value wins.
    if let (Value::Array(items), false) = (value, matches!(ty, Ty::List(_))) {
        if let Some(last) = items.last() {
            return coerce_at(last, ty, name);
        }
    }
    let Value::String(s) = value else {
        return match ty {
            Ty::Struct(d) => coerce_members(value, d.members, &[]),
            Ty::Union(u) => {
                let tag = value
                    .get(u.discriminator)
                    .and_then(Value::as_str)
                    .and_then(|t| u.variant(t));
                coerce_members(value, u.base, tag.map(|d| d.members).unwrap_or(&[]))
            }
            Ty::List(elem) => match value {
                Value::Array(items) => items
                    .iter()
                    .map(|v| coerce_at(v, elem, name))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                _ => Ok(value.clone()),
            },
            _ => Ok(value.clone()),
        };
    };
    Ok(match ty {
        Ty::Str | Ty::Enum(_) | Ty::Any => value.clone(),
        Ty::Bool => Value::Bool(parse_bool(s).ok_or_else(|| KeyvalError::Bool(name.into()))?),
        Ty::Int | Ty::Int8 | Ty::Int16 | Ty::Int32 => Value::Number(
            parse_i64(s)
                .ok_or_else(|| KeyvalError::Int(name.into()))?
                .into(),
        ),
        Ty::Uint8 | Ty::Uint16 | Ty::Uint32 | Ty::Uint64 => Value::Number(
            parse_u64(s)
                .ok_or_else(|| KeyvalError::Int(name.into()))?
                .into(),
        ),
        Ty::Size => Value::Number(
            parse_size(s)
                .ok_or_else(|| KeyvalError::Size(name.into()))?
                .into(),
        ),
        Ty::Number => {
            let f: f64 = s.parse().map_err(|_| KeyvalError::Int(name.into()))?;
            Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| KeyvalError::Int(name.into()))?
        }
        Ty::List(elem) => Value::Array(vec![coerce_at(value, elem, name)?]),
        Ty::Struct(d) if d.name == "String" => {
            let mut m = Map::new();
            m.insert("str".into(), value.clone());
            Value::Object(m)
        }
        Ty::Struct(_) => return Err(KeyvalError::Unsupported(name.into(), "object")),
        Ty::Union(_) => return Err(KeyvalError::Unsupported(name.into(), "object")),
    })
}

fn coerce_members(value: &Value, a: &[Member], b: &[Member]) -> Result<Value, KeyvalError> {
    let Value::Object(obj) = value else {
        return Ok(value.clone());
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let member = a.iter().chain(b).find(|m| m.name == k);
        let v = match member {
            Some(m) => coerce_at(v, &m.ty, k)?,
            None => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Ok(Value::Object(out))
}

/// QemuOpts' booleans.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// C `strtoull(s, &end, 0)` over the whole string: `0x` hex, leading `0` octal, else decimal.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Signed form of [`parse_u64`].
pub fn parse_i64(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(rest) => {
            let u = parse_u64(rest)?;
            if u == 1 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(u).ok().map(|v| -v)
            }
        }
        None => i64::try_from(parse_u64(s.strip_prefix('+').unwrap_or(s))?).ok(),
    }
}

/// QEMU's `qemu_strtosz`: a number, optional fraction, optional binary suffix.
pub fn parse_size(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" | "B" | "b" => 1,
        "k" | "K" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        "P" | "p" => 1 << 50,
        "E" | "e" => 1 << 60,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    match num.split_once('.') {
        None => parse_u64(num)?.checked_mul(mult),
        Some((int, frac)) => {
            if int.is_empty() || !int.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            if frac.is_empty() || !frac.chars().all(|c| c.is_ascii_digit()) || mult == 1 {
                return None;
            }
            let whole: u64 = int.parse().ok()?;
            let f: f64 = format!("0.{frac}").parse().ok()?;
            let v = whole.checked_mul(mult)?;
            v.checked_add((f * mult as f64) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::NETDEV;
    use crate::visit::visit;
    use serde_json::json;

    fn netdev(s: &str) -> Result<Value, String> {
        let tree = parse(s, Some("type")).map_err(|e| e.to_string())?;
        let v = coerce(&tree, &Ty::Union(&NETDEV)).map_err(|e| e.to_string())?;
        visit(&v, &Ty::Union(&NETDEV)).map_err(|e| e.to_string())
    }

    #[test]
    fn keyval_yields_the_qmp_value() {
        assert_eq!(
            netdev("user,id=n0,hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53").unwrap(),
            json!({"id": "n0", "type": "user",
                   "hostfwd": [{"str": "tcp::2222-:22"}, {"str": "udp::5353-:53"}]})
        );
        assert_eq!(
            netdev("hubport,id=h0,hubid=0").unwrap(),
            json!({"id": "h0", "type": "hubport", "hubid": 0})
        );
        assert_eq!(
            netdev("tap,id=t,vnet_hdr=off,sndbuf=1.5k,queues=0x4,vhost").unwrap(),
            json!({"id": "t", "type": "tap", "sndbuf": 1536, "vnet_hdr": false, "vhost": true, "queues": 4})
        );
        assert_eq!(
            netdev("socket,id=s,connect=127.0.0.1:1,,2").unwrap()["connect"],
            json!("127.0.0.1:1,2")
        );
        assert_eq!(
            netdev("user,id=u,dnssearch=a.test").unwrap()["dnssearch"],
            json!([{"str": "a.test"}])
        );
    }

    #[test]
    fn keyval_errors_name_the_option() {
        assert_eq!(
            netdev("tap,id=t,vnet_hdr=maybe").unwrap_err(),
            "Parameter 'vnet_hdr' expects 'on' or 'off'"
        );
        assert!(netdev("tap,id=t,sndbuf=1Q")
            .unwrap_err()
            .contains("'sndbuf'"));
        assert_eq!(
            netdev("hubport,id=h").unwrap_err(),
            "Parameter 'hubid' is missing"
        );
        assert_eq!(
            netdev("hubport,id=h,hubid=1,x=2").unwrap_err(),
            "Parameter 'x' is unexpected"
        );
        assert_eq!(
            netdev("vde,id=v,port=70000").unwrap_err(),
            "Parameter 'port' expects uint16_t"
        );
        assert_eq!(netdev("").unwrap_err(), "empty option string");
        assert!(netdev("hubport,=1").is_err());
    }

    #[test]
    fn sizes_and_numbers() {
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("0.5G"), Some(1 << 29));
        assert_eq!(parse_size("16E"), None);
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_i64("-0x10"), Some(-16));
        assert_eq!(parse_i64("010"), Some(8));
        assert_eq!(parse_i64("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_u64("09"), None);
    }

    #[test]
    fn dotted_keys_nest() {
        assert_eq!(
            parse("stream,addr.type=unix,addr.path=/s", Some("type")).unwrap(),
            json!({"type": "stream", "addr": {"type": "unix", "path": "/s"}})
        );
        assert!(parse("a=1,a.b=2", None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn split_never_panics_and_roundtrips_commas(s in ".{0,64}") {
            let _ = parse(&s, Some("type"));
            let escaped = s.replace(',', ",,");
            if !s.is_empty() {
                let pairs = split(&format!("k={escaped}"), None).unwrap();
                proptest::prop_assert_eq!(&pairs[0].1, &s);
            }
        }
    }
}
