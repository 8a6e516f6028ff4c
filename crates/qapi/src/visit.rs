//! QAPI's input rules, as QEMU 7.2's `qapi/qobject-input-visitor.c` applies them to QMP
//! arguments.
//!
//! - Members are visited in schema order (union base first, then the selected branch); the
//!   first failure is the one reported. Leftover members are reported after all known ones
//!   (`Parameter 'x' is unexpected`), so a type error always wins over an unexpected member.
//! - Names in messages are full paths (`dnssearch[0].str`), except in range and enum
//!   messages, which QEMU writes with the bare member name (or `null` for list elements).
//! - `uint64`/`size` accept negative integers and wrap them (QEMU's "backward
//!   compatibility" rule); narrower unsigned types then range-check the wrapped value, so
//!   `-1` fails for `uint32`.
//! - `null` is never a value of any type but `any`.
//!
//! [`visit`] returns the value normalised (wrapped integers), ready for serde.

use serde_json::{Map, Number, Value};

use crate::schema::{ArgsTy, Member, StructDef, Ty, UnionDef};

/// An argument error. Every variant is QMP class `GenericError`; `Display` is QEMU's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VisitError {
    #[error("Parameter '{0}' is missing")]
    Missing(String),
    #[error("Parameter '{0}' is unexpected")]
    Unexpected(String),
    #[error("Invalid parameter type for '{0}', expected: {1}")]
    Type(String, &'static str),
    #[error("Parameter '{0}' expects {1}")]
    Value(String, &'static str),
    #[error("Parameter '{0}' does not accept value '{1}'")]
    Enum(String, String),
    /// Not reachable when the generated types match the tables.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where the visitor is, for QEMU's `full_name()`.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct Path<'a> {
    segs: Vec<Seg<'a>>,
}

impl<'a> Path<'a> {
    fn full(&self) -> String {
        let mut s = String::new();
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Index(n) => {
                    s.push('[');
                    s.push_str(&n.to_string());
                    s.push(']');
                }
            }
        }
        if s.is_empty() {
            s.push_str("null");
        }
        s
    }

    /// The bare name QEMU passes to range and enum checks.
    fn bare(&self) -> String {
        match self.segs.last() {
            Some(Seg::Key(k)) => (*k).to_string(),
            _ => "null".to_string(),
        }
    }
}

/// Check `value` against `ty`; return it normalised.
pub fn visit(value: &Value, ty: &Ty) -> Result<Value, VisitError> {
    let mut path = Path { segs: Vec::new() };
    visit_ty(value, ty, &mut path)
}

/// Check a command's `arguments` object (absent = `{}`).
pub fn visit_args(args: Option<&Value>, ty: Option<ArgsTy>) -> Result<Value, VisitError> {
    let empty = Value::Object(Map::new());
    let args = args.unwrap_or(&empty);
    let mut path = Path { segs: Vec::new() };
    match ty {
        None => {
            let obj = args
                .as_object()
                .ok_or_else(|| VisitError::Type("null".into(), "object"))?;
            visit_members(obj, &[], &mut path)
        }
        Some(ArgsTy::Members(m)) => {
            let obj = args
                .as_object()
                .ok_or_else(|| VisitError::Type("null".into(), "object"))?;
            visit_members(obj, m, &mut path)
        }
        Some(ArgsTy::Ty(t)) => visit_ty(args, &t, &mut path),
    }
}

fn visit_ty<'a>(value: &'a Value, ty: &Ty, path: &mut Path<'a>) -> Result<Value, VisitError> {
    match ty {
        Ty::Any => Ok(value.clone()),
        Ty::Str => match value {
            Value::String(_) => Ok(value.clone()),
            _ => Err(VisitError::Type(path.full(), "string")),
        },
        Ty::Bool => match value {
            Value::Bool(_) => Ok(value.clone()),
            _ => Err(VisitError::Type(path.full(), "boolean")),
        },
        Ty::Number => match value {
            Value::Number(_) => Ok(value.clone()),
            _ => Err(VisitError::Type(path.full(), "number")),
        },
        Ty::Int | Ty::Int8 | Ty::Int16 | Ty::Int32 => {
            let n = value
                .as_i64()
                .ok_or_else(|| VisitError::Type(path.full(), "integer"))?;
            let (lo, hi, cname) = match ty {
                Ty::Int8 => (i8::MIN as i64, i8::MAX as i64, "int8_t"),
                Ty::Int16 => (i16::MIN as i64, i16::MAX as i64, "int16_t"),
                Ty::Int32 => (i32::MIN as i64, i32::MAX as i64, "int32_t"),
                _ => (i64::MIN, i64::MAX, ""),
            };
            if n < lo || n > hi {
                return Err(VisitError::Value(path.bare(), cname));
            }
            Ok(Value::Number(n.into()))
        }
        Ty::Uint8 | Ty::Uint16 | Ty::Uint32 | Ty::Uint64 | Ty::Size => {
            let n =
                as_wrapped_u64(value).ok_or_else(|| VisitError::Value(path.full(), "uint64"))?;
            let (hi, cname) = match ty {
                Ty::Uint8 => (u8::MAX as u64, "uint8_t"),
                Ty::Uint16 => (u16::MAX as u64, "uint16_t"),
                Ty::Uint32 => (u32::MAX as u64, "uint32_t"),
                _ => (u64::MAX, ""),
            };
            if n > hi {
                return Err(VisitError::Value(path.bare(), cname));
            }
            Ok(Value::Number(Number::from(n)))
        }
        Ty::Enum(e) => {
            let s = value
                .as_str()
                .ok_or_else(|| VisitError::Type(path.full(), "string"))?;
            if e.values.contains(&s) {
                Ok(value.clone())
            } else {
                Err(VisitError::Enum(path.bare(), s.to_string()))
            }
        }
        Ty::List(elem) => {
            let items = value
                .as_array()
                .ok_or_else(|| VisitError::Type(path.full(), "array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.segs.push(Seg::Index(i));
                let r = visit_ty(item, elem, path);
                path.segs.pop();
                out.push(r?);
            }
            Ok(Value::Array(out))
        }
        Ty::Struct(s) => visit_struct(value, s, path),
        Ty::Union(u) => visit_union(value, u, path),
    }
}

/// QEMU's `qnum_get_try_uint`, then `qnum_get_try_int` reinterpreted as two's complement.
fn as_wrapped_u64(value: &Value) -> Option<u64> {
    let n = value.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    n.as_i64().map(|i| i as u64)
}

fn object<'a>(value: &'a Value, path: &Path) -> Result<&'a Map<String, Value>, VisitError> {
    value
        .as_object()
        .ok_or_else(|| VisitError::Type(path.full(), "object"))
}

fn visit_struct<'a>(
    value: &'a Value,
    s: &StructDef,
    path: &mut Path<'a>,
) -> Result<Value, VisitError> {
    let obj = object(value, path)?;
    visit_members(obj, s.members, path)
}

fn visit_members<'a>(
    obj: &'a Map<String, Value>,
    members: &'static [Member],
    path: &mut Path<'a>,
) -> Result<Value, VisitError> {
    let mut out = Map::new();
    visit_member_list(obj, members, path, &mut out)?;
    check_leftovers(obj, &out, path)?;
    Ok(Value::Object(out))
}

fn visit_member_list<'a>(
    obj: &'a Map<String, Value>,
    members: &'static [Member],
    path: &mut Path<'a>,
    out: &mut Map<String, Value>,
) -> Result<(), VisitError> {
    for m in members {
        path.segs.push(Seg::Key(m.name));
        let r = match obj.get(m.name) {
            None if m.optional => Ok(None),
            None => Err(VisitError::Missing(path.full())),
            Some(v) => visit_ty(v, &m.ty, path).map(Some),
        };
        path.segs.pop();
        if let Some(v) = r? {
            out.insert(m.name.to_string(), v);
        }
    }
    Ok(())
}

fn check_leftovers<'a>(
    obj: &'a Map<String, Value>,
    visited: &Map<String, Value>,
    path: &mut Path<'a>,
) -> Result<(), VisitError> {
    if let Some(key) = obj.keys().find(|k| !visited.contains_key(*k)) {
        path.segs.push(Seg::Key(key));
        let name = path.full();
        path.segs.pop();
        return Err(VisitError::Unexpected(name));
    }
    Ok(())
}

fn visit_union<'a>(
    value: &'a Value,
    u: &UnionDef,
    path: &mut Path<'a>,
) -> Result<Value, VisitError> {
    let obj = object(value, path)?;
    let mut out = Map::new();
    visit_member_list(obj, u.base, path, &mut out)?;
    let tag = out
        .get(u.discriminator)
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(branch) = tag.as_deref().and_then(|t| u.variant(t)) {
        visit_member_list(obj, branch.members, path, &mut out)?;
    }
    check_leftovers(obj, &out, path)?;
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::*;
    use crate::schema::{command, command_args_ty};
    use serde_json::json;

    fn netdev(v: Value) -> Result<Value, String> {
        visit(&v, &Ty::Union(&NETDEV)).map_err(|e| e.to_string())
    }

    fn args(cmd: &str, v: Value) -> Result<Value, String> {
        let c = command(cmd).unwrap();
        visit_args(Some(&v), command_args_ty(c)).map_err(|e| e.to_string())
    }

    #[test]
    fn qemu_messages_for_netdev_add() {
        assert_eq!(
            netdev(json!({"type": "hubport"})).unwrap_err(),
            "Parameter 'id' is missing"
        );
        assert_eq!(
            netdev(json!({"id": "a"})).unwrap_err(),
            "Parameter 'type' is missing"
        );
        assert_eq!(
            netdev(json!({"id": 1, "type": "hubport"})).unwrap_err(),
            "Invalid parameter type for 'id', expected: string"
        );
        assert_eq!(
            netdev(json!({"id": "a", "type": "vmnet-host"})).unwrap_err(),
            "Parameter 'type' does not accept value 'vmnet-host'"
        );
        assert_eq!(
            netdev(json!({"id": "a", "type": "hubport"})).unwrap_err(),
            "Parameter 'hubid' is missing"
        );
        assert_eq!(
            netdev(json!({"id": "a", "type": "hubport", "hubid": 2147483648i64})).unwrap_err(),
            "Parameter 'hubid' expects int32_t"
        );
        assert_eq!(
            netdev(json!({"id": "a", "type": "hubport", "hubid": 1.0})).unwrap_err(),
            "Invalid parameter type for 'hubid', expected: integer"
        );
        assert_eq!(
            netdev(json!({"id": "a", "type": "hubport", "hubid": 1, "bogus": 1})).unwrap_err(),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            netdev(json!({"id": "a", "type": "none", "hubid": 1})).unwrap_err(),
            "Parameter 'hubid' is unexpected"
        );
    }

    #[test]
    fn unsigned_rules() {
        let tap = |k: &str, v: Value| {
            let mut o = json!({"id": "t", "type": "tap"});
            o[k] = v;
            netdev(o)
        };
        assert_eq!(
            tap("queues", json!(-1)).unwrap_err(),
            "Parameter 'queues' expects uint32_t"
        );
        assert_eq!(
            tap("queues", json!(4294967296u64)).unwrap_err(),
            "Parameter 'queues' expects uint32_t"
        );
        assert!(tap("queues", json!(4294967295u64)).is_ok());
        assert_eq!(tap("sndbuf", json!(-1)).unwrap()["sndbuf"], json!(u64::MAX));
        assert_eq!(
            tap("sndbuf", json!("1k")).unwrap_err(),
            "Parameter 'sndbuf' expects uint64"
        );
        let vde = |v: Value| netdev(json!({"id": "v", "type": "vde", "port": v}));
        assert_eq!(
            vde(json!(70000)).unwrap_err(),
            "Parameter 'port' expects uint16_t"
        );
    }

    #[test]
    fn string_lists_and_paths() {
        let user = |v: Value| netdev(json!({"id": "u", "type": "user", "hostfwd": v}));
        assert_eq!(
            user(json!("tcp::1-:2")).unwrap_err(),
            "Invalid parameter type for 'hostfwd', expected: array"
        );
        assert_eq!(
            user(json!(["tcp::1-:2"])).unwrap_err(),
            "Invalid parameter type for 'hostfwd[0]', expected: object"
        );
        assert_eq!(
            user(json!([{"str": "a", "x": 1}])).unwrap_err(),
            "Parameter 'hostfwd[0].x' is unexpected"
        );
        assert_eq!(
            user(json!([{"str": 5}])).unwrap_err(),
            "Invalid parameter type for 'hostfwd[0].str', expected: string"
        );
        assert_eq!(
            user(json!([{}])).unwrap_err(),
            "Parameter 'hostfwd[0].str' is missing"
        );
        assert!(user(json!([])).is_ok());
    }

    #[test]
    fn type_error_wins_over_unexpected_and_null_is_present() {
        assert_eq!(
            args("set_link", json!({"zzz": 1, "name": 5, "up": true})).unwrap_err(),
            "Invalid parameter type for 'name', expected: string"
        );
        assert_eq!(
            args("query-rx-filter", json!({"name": null})).unwrap_err(),
            "Invalid parameter type for 'name', expected: string"
        );
        assert_eq!(
            args("qmp_capabilities", json!({"enable": ["foo"]})).unwrap_err(),
            "Parameter 'null' does not accept value 'foo'"
        );
        assert_eq!(
            args("query-version", json!({"x": 1})).unwrap_err(),
            "Parameter 'x' is unexpected"
        );
        assert_eq!(
            args(
                "announce-self",
                json!({"initial": 1, "max": 1, "rounds": 1, "step": 1, "interfaces": "a"})
            )
            .unwrap_err(),
            "Invalid parameter type for 'interfaces', expected: array"
        );
    }
}
