//! Pure (side-effect free) VisualFlow nodes: literals, math, strings, comparisons, data helpers.
//! Names and pin ids follow the upstream built-in library.

use serde_json::{json, Map, Value};

const PURE: &[&str] = &[
    "literal_string",
    "literal_number",
    "literal_boolean",
    "literal_json",
    "literal_array",
    "add",
    "subtract",
    "multiply",
    "divide",
    "modulo",
    "power",
    "abs",
    "round",
    "concat",
    "split",
    "join",
    "format",
    "string_template",
    "uppercase",
    "lowercase",
    "trim",
    "substring",
    "length",
    "is_empty_string",
    "contains",
    "replace",
    "compare",
    "not",
    "and",
    "or",
    "coalesce",
    "get",
    "set",
    "merge",
    "make_object",
    "get_element",
    "array_length",
    "array_append",
    "parse_json",
    "stringify_json",
    "get_var",
    "get_variable",
    "system_datetime",
];

pub fn is_pure(kind: &str) -> bool {
    PURE.contains(&kind)
}

fn num(v: Option<&Value>, default: f64) -> Result<f64, String> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| "number out of range".into()),
        Some(Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
        Some(Value::String(s)) => s.trim().parse::<f64>().map_err(|_| format!("{s:?} is not a number")),
        Some(other) => Err(format!("{other} is not a number")),
    }
}

/// Python-like `str()` for JSON values (strings unquoted).
pub fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => {
            if *b {
                "True".into()
            } else {
                "False".into()
            }
        }
        Some(other) => other.to_string(),
    }
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

fn path_get<'a>(mut cur: &'a Value, path: &str) -> Option<&'a Value> {
    for tok in path.split(['.', '[', ']']).filter(|t| !t.is_empty()) {
        cur = match cur {
            Value::Object(o) => o.get(tok)?,
            Value::Array(a) => a.get(tok.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")
}

fn cmp_values(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

pub fn eval(kind: &str, i: &Map<String, Value>, vars: &Map<String, Value>) -> Result<Value, String> {
    let g = |k: &str| i.get(k);
    Ok(match kind {
        "literal_string" => Value::String(text(g("_literalValue"))),
        "literal_number" => number(num(g("_literalValue"), 0.0).unwrap_or(0.0)),
        "literal_boolean" => Value::Bool(truthy(g("_literalValue").unwrap_or(&Value::Null))),
        "literal_json" => match g("_literalValue") {
            Some(v @ (Value::Object(_) | Value::Array(_))) => v.clone(),
            _ => json!({}),
        },
        "literal_array" => match g("_literalValue") {
            Some(v @ Value::Array(_)) => v.clone(),
            _ => json!([]),
        },
        "add" => number(num(g("a"), 0.0)? + num(g("b"), 0.0)?),
        "subtract" => number(num(g("a"), 0.0)? - num(g("b"), 0.0)?),
        "multiply" => number(num(g("a"), 0.0)? * num(g("b"), 0.0)?),
        "divide" => {
            let b = num(g("b"), 1.0)?;
            if b == 0.0 {
                return Err("Division by zero".into());
            }
            number(num(g("a"), 0.0)? / b)
        }
        "modulo" => {
            let b = num(g("b"), 1.0)?;
            if b == 0.0 {
                return Err("Modulo by zero".into());
            }
            number(num(g("a"), 0.0)?.rem_euclid(b))
        }
        "power" => number(num(g("base"), 0.0)?.powf(num(g("exp"), 1.0)?)),
        "abs" => number(num(g("value"), 0.0)?.abs()),
        "round" => {
            let d = num(g("decimals"), 0.0)?.clamp(0.0, 15.0) as i32;
            let m = 10f64.powi(d);
            number((num(g("value"), 0.0)? * m).round() / m)
        }
        "concat" => Value::String(text(g("a")) + &text(g("b"))),
        "split" => {
            let t = text(g("text"));
            let d = unescape(&g("delimiter").map(|v| text(Some(v))).unwrap_or_else(|| ",".into()));
            let parts: Vec<Value> = if d.is_empty() {
                vec![Value::String(t)]
            } else {
                t.split(d.as_str())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .map(Value::String)
                    .collect()
            };
            Value::Array(parts)
        }
        "join" => {
            let d = unescape(&g("delimiter").map(|v| text(Some(v))).unwrap_or_else(|| ",".into()));
            let items = match g("items") {
                Some(Value::Array(a)) => a.iter().map(|v| text(Some(v))).collect::<Vec<_>>(),
                None | Some(Value::Null) => vec![],
                Some(v) => vec![text(Some(v))],
            };
            Value::String(items.join(&d))
        }
        "format" => {
            let mut t = text(g("template"));
            if let Some(Value::Object(vals)) = g("values") {
                for (k, v) in vals {
                    t = t.replace(&format!("{{{k}}}"), &text(Some(v)));
                }
            }
            Value::String(t)
        }
        "string_template" => {
            let t = text(g("template"));
            let empty = Value::Object(Map::new());
            let vs = g("vars").filter(|v| v.is_object()).unwrap_or(&empty);
            let mut out = String::new();
            let mut rest = t.as_str();
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                match rest[start + 2..].find("}}") {
                    Some(end) => {
                        let expr = rest[start + 2..start + 2 + end].trim();
                        let path = expr.split('|').next().unwrap_or("").trim();
                        out.push_str(&text(path_get(vs, path)));
                        rest = &rest[start + 2 + end + 2..];
                    }
                    None => {
                        out.push_str(&rest[start..]);
                        rest = "";
                    }
                }
            }
            out.push_str(rest);
            Value::String(out)
        }
        "uppercase" => Value::String(text(g("text")).to_uppercase()),
        "lowercase" => Value::String(text(g("text")).to_lowercase()),
        "trim" => Value::String(text(g("text")).trim().to_string()),
        "substring" => {
            let chars: Vec<char> = text(g("text")).chars().collect();
            let n = chars.len() as i64;
            let idx = |x: f64| -> usize {
                let x = x as i64;
                (if x < 0 { (n + x).max(0) } else { x.min(n) }) as usize
            };
            let s = idx(num(g("start"), 0.0)?);
            let e = match g("end") {
                None | Some(Value::Null) => chars.len(),
                v => idx(num(v, 0.0)?),
            };
            Value::String(if s < e { chars[s..e].iter().collect() } else { String::new() })
        }
        "length" => json!(text(g("text")).chars().count()),
        "is_empty_string" => Value::Bool(text(g("text")).is_empty()),
        "contains" => {
            let p = text(g("pattern"));
            Value::Bool(!p.is_empty() && text(g("text")).contains(&p))
        }
        "replace" => {
            let t = text(g("text"));
            let p = text(g("pattern"));
            if p.is_empty() {
                Value::String(t)
            } else {
                let r = text(g("replacement"));
                match g("mode").and_then(Value::as_str) {
                    Some("first" | "once" | "1") => Value::String(t.replacen(&p, &r, 1)),
                    _ => Value::String(t.replace(&p, &r)),
                }
            }
        }
        "compare" => {
            let a = g("a").cloned().unwrap_or(Value::Null);
            let b = g("b").cloned().unwrap_or(Value::Null);
            let op = g("op").and_then(Value::as_str).unwrap_or("==");
            use std::cmp::Ordering::*;
            Value::Bool(match op {
                "==" => loose_eq(&a, &b),
                "!=" => !loose_eq(&a, &b),
                "<" => cmp_values(&a, &b) == Some(Less),
                "<=" => matches!(cmp_values(&a, &b), Some(Less | Equal)),
                ">" => cmp_values(&a, &b) == Some(Greater),
                ">=" => matches!(cmp_values(&a, &b), Some(Greater | Equal)),
                other => return Err(format!("Unknown comparison operator: {other}")),
            })
        }
        "not" => Value::Bool(!truthy(g("value").unwrap_or(&Value::Null))),
        "and" => Value::Bool(g("a").map(truthy).unwrap_or(false) && g("b").map(truthy).unwrap_or(false)),
        "or" => Value::Bool(g("a").map(truthy).unwrap_or(false) || g("b").map(truthy).unwrap_or(false)),
        "coalesce" => {
            let order: Vec<String> = g("_pin_order")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_else(|| vec!["a".into(), "b".into()]);
            order
                .iter()
                .filter_map(|p| i.get(p))
                .find(|v| !v.is_null())
                .cloned()
                .unwrap_or(Value::Null)
        }
        "get" => {
            let key = text(g("key"));
            let v = g("object").and_then(|o| path_get(o, &key)).filter(|v| !v.is_null()).cloned();
            json!({"value": v.or_else(|| g("default").cloned()).unwrap_or(Value::Null)})
        }
        "set" => {
            let mut obj = g("object").and_then(Value::as_object).cloned().unwrap_or_default();
            let key = text(g("key"));
            let parts: Vec<&str> = key.split('.').collect();
            let mut cur = &mut obj;
            for p in &parts[..parts.len().saturating_sub(1)] {
                cur = crate::runtime::model::obj_entry(cur, p);
            }
            if let Some(last) = parts.last() {
                cur.insert(last.to_string(), g("value").cloned().unwrap_or(Value::Null));
            }
            Value::Object(obj)
        }
        "merge" => {
            let mut a = g("a").and_then(Value::as_object).cloned().unwrap_or_default();
            if let Some(b) = g("b").and_then(Value::as_object) {
                a.extend(b.clone());
            }
            Value::Object(a)
        }
        "make_object" => Value::Object(
            i.iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        "get_element" => {
            let idx = num(g("index"), 0.0)? as i64;
            match g("array") {
                Some(Value::Array(a)) => {
                    let i = if idx < 0 { a.len() as i64 + idx } else { idx };
                    a.get(i.max(0) as usize).cloned().filter(|_| i >= 0).unwrap_or(Value::Null)
                }
                _ => Value::Null,
            }
        }
        "array_length" => json!(g("array").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0)),
        "array_append" => {
            let mut a = g("array").and_then(Value::as_array).cloned().unwrap_or_default();
            a.push(g("item").cloned().unwrap_or(Value::Null));
            Value::Array(a)
        }
        "parse_json" => serde_json::from_str(&text(g("text"))).map_err(|e| format!("parse_json: {e}"))?,
        "stringify_json" => Value::String(g("value").map(|v| v.to_string()).unwrap_or_else(|| "null".into())),
        "get_var" | "get_variable" => {
            let name = text(g("name").or_else(|| g("_literalValue")));
            path_get(&Value::Object(vars.clone()), &name).cloned().unwrap_or(Value::Null)
        }
        "system_datetime" => Value::String(crate::util::time::now_iso()),
        other => return Err(format!("Unknown node type '{other}'")),
    })
}

/// Picks the value for output `pin`: a dict result that has the pin gives that field.
pub fn pick(kind: &str, v: Value, pin: &str) -> Value {
    if kind.starts_with("literal_") {
        return v;
    }
    match &v {
        Value::Object(o)
            if matches!(kind, "get")
                || (o.contains_key(pin) && !matches!(kind, "merge" | "set" | "make_object" | "literal_json" | "parse_json")) =>
        {
            o.get(pin).cloned().unwrap_or(Value::Null)
        }
        _ => v,
    }
}

/// JSON truthiness as upstream's flows see it (empty string, list, object, 0 and null are false).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0).unwrap_or(true),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn math_and_strings() {
        let none = Map::new();
        assert_eq!(eval("add", &m(json!({"a": 2, "b": "3"})), &none).unwrap(), json!(5.0));
        assert!(eval("divide", &m(json!({"a": 1, "b": 0})), &none).is_err());
        assert_eq!(eval("concat", &m(json!({"a": "x:", "b": 3})), &none).unwrap(), json!("x:3"));
        assert_eq!(
            eval("split", &m(json!({"text": "a, b,,c", "delimiter": ","})), &none).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            eval("compare", &m(json!({"a": 0, "b": 0.0, "op": "=="})), &none).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval("substring", &m(json!({"text": "héllo", "start": 1, "end": 3})), &none).unwrap(),
            json!("él")
        );
        assert_eq!(
            eval(
                "string_template",
                &m(json!({"template": "hi {{ u.name }}!", "vars": {"u": {"name": "Ann"}}})),
                &none
            )
            .unwrap(),
            json!("hi Ann!")
        );
        assert!(eval("compare", &m(json!({"a": 1, "b": 2, "op": "~"})), &none).is_err());
    }
}
