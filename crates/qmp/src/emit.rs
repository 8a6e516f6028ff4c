//! QMP output as QEMU writes it: compact JSON with `": "` and `", "`, pure ASCII (everything
//! outside 0x20..0x7E escaped as `\uXXXX` with upper-case hex, surrogate pairs above
//! U+FFFF), doubles as C's `%.17g`, one message per line ending in CR LF.

use serde_json::Value;

/// Serialise one message, CR LF included.
pub fn to_line(v: &Value) -> String {
    let mut s = String::new();
    write_value(&mut s, v);
    s.push_str("\r\n");
    s
}

/// Serialise a value (no line end).
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&format_g17(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, item)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04X}", u));
                }
            }
        }
    }
    out.push('"');
}

/// C's `printf("%.17g", f)`.
pub fn format_g17(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    if !f.is_finite() {
        return if f.is_nan() {
            "nan".into()
        } else if f > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // Round to 17 significant digits, then choose fixed or exponent form as %g does.
    let e = format!("{:.16e}", f);
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..17).contains(&exp) {
        let decimals = (16 - exp).max(0) as usize;
        let fixed = format!("{:.*}", decimals, f);
        trim_fraction(&fixed)
    } else {
        let mant = trim_fraction(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

fn trim_fraction(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qemu_layout() {
        assert_eq!(
            to_line(&json!({"return": {}, "id": [1, "a"]})),
            "{\"return\": {}, \"id\": [1, \"a\"]}\r\n"
        );
        assert_eq!(
            to_line(&json!("é😀\\u\u{7f}\n")),
            "\"\\u00E9\\uD83D\\uDE00\\\\u\\u007F\\n\"\r\n"
        );
        assert_eq!(
            to_line(&json!(18446744073709551615u64)),
            "18446744073709551615\r\n"
        );
    }

    #[test]
    fn doubles_as_percent_17g() {
        assert_eq!(format_g17(1.5), "1.5");
        assert_eq!(format_g17(0.1), "0.10000000000000001");
        assert_eq!(format_g17(1e5), "100000");
        assert_eq!(format_g17(1.2345678901234568e29), "1.2345678901234568e+29");
        assert_eq!(format_g17(-2.5e-7), "-2.4999999999999999e-07");
        assert_eq!(format_g17(1e16), "10000000000000000");
        assert_eq!(format_g17(1e17), "1e+17");
        assert_eq!(format_g17(0.0001), "0.0001");
        assert_eq!(format_g17(123.456), "123.456");
    }
}
