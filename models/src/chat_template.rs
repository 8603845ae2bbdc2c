//! Chat templates: the model's own Jinja template (from `tokenizer.chat_template` or
//! `tokenizer_config.json`), rendered with minijinja configured like transformers configures
//! jinja2 (trim_blocks, lstrip_blocks, loop controls, Python string methods, `raise_exception`,
//! a `tojson` that keeps non-ASCII and uses Python's separators). ChatML when a model has none.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value as JValue};
use serde_json::{Map, Value};

use crate::ModelError;

/// Used for models that ship no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    pub is_fallback: bool,
    /// Whether the template renders a `tools` variable itself (else callers describe tools in a
    /// system message).
    pub handles_tools: bool,
}

/// Python's `json.dumps(v, ensure_ascii=False)` (separators ", " and ": "), or with `indent`.
fn py_dumps(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let nl = |out: &mut String, d: usize| {
        if let Some(i) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(i * d));
        }
    };
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (k, x) in a.iter().enumerate() {
                if k > 0 {
                    out.push_str(if indent.is_some() { "," } else { ", " });
                }
                nl(out, depth + 1);
                py_dumps(x, indent, depth + 1, out);
            }
            nl(out, depth);
            out.push(']');
        }
        Value::Object(o) if !o.is_empty() => {
            out.push('{');
            for (k, (key, x)) in o.iter().enumerate() {
                if k > 0 {
                    out.push_str(if indent.is_some() { "," } else { ", " });
                }
                nl(out, depth + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                py_dumps(x, indent, depth + 1, out);
            }
            nl(out, depth);
            out.push('}');
        }
        Value::Number(n) if n.is_f64() => {
            // Python prints 1.0 (not 1) for floats.
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(v: JValue, kwargs: minijinja::value::Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json: Value = serde_json::to_value(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_dumps(&json, indent, 0, &mut out);
    Ok(out)
}

impl ChatTemplate {
    /// Compiles `source`, or ChatML when None.
    pub fn new(source: Option<&str>) -> Result<ChatTemplate, ModelError> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| ModelError::Template(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        let is_fallback = source.is_none();
        let handles_tools = source.map(|s| s.contains("tools")).unwrap_or(false);
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            is_fallback,
            handles_tools,
        })
    }

    /// Renders a conversation. `extra` supplies variables such as `bos_token`, `eos_token`,
    /// `tools`; `messages` is a list of `{role, content, ...}` objects.
    pub fn render(&self, messages: &Value, add_generation_prompt: bool, extra: &Map<String, Value>) -> Result<String, ModelError> {
        let mut ctx = extra.clone();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        let tmpl = self.env.get_template("chat").map_err(|e| ModelError::Template(e.to_string()))?;
        tmpl.render(to_jinja(&Value::Object(ctx)))
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}

/// A JSON value as a template value, built directly rather than through serde: with
/// serde_json's `arbitrary_precision` (the gateway keeps large integers exact), a number
/// serializes as a private one-field map that templates would print as such.
fn to_jinja(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                JValue::from(i)
            } else if let Some(u) = n.as_u64() {
                JValue::from(u)
            } else {
                JValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(a) => JValue::from(a.iter().map(to_jinja).collect::<Vec<_>>()),
        Value::Object(o) => JValue::from_pairs(o.iter().map(|(k, v)| (k.as_str(), to_jinja(v)))),
    }
}
