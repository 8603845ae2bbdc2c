//! Flow inputs of artifact type (`artifact`, `artifact_image`, `artifacts_audio`, ...) take
//! `{"$artifact": id}` refs, as `input_schema` advertises. At start and schedule each ref is
//! checked against the plane's store (another plane's id is simply unknown) and replaced by the
//! canonical ref (content type, modality, filename, sha256), so nodes never guess.

use serde_json::{json, Map, Value};

use super::artifacts::artifact_ref;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::runtime::flow::Flow;

fn bad(pin: &str, why: String) -> ApiError {
    ApiError::invalid("artifact_ref", json!(["body", "input_data", pin]), why, Value::Null)
}

/// The artifact id of one ref, or why the value is not one.
fn ref_id(pin: &str, v: &Value) -> ApiResult<String> {
    match crate::store::artifacts::id_in_ref(v) {
        Some(id) if crate::util::is_safe_id(id) => Ok(id.to_string()),
        _ => Err(bad(
            pin,
            format!("Input '{pin}' expects an artifact ref {{\"$artifact\": \"<id>\"}}, got {v}"),
        )),
    }
}

/// Replaces every artifact ref among `input`'s entry pins by its canonical form; unknown ids are a
/// 422 naming the pin.
pub async fn resolve(st: &AppState, flow: &Flow, input: &mut Map<String, Value>) -> ApiResult<()> {
    for (pin, _) in flow.entry_pins() {
        let ty = pin.ty.as_str();
        if !ty.starts_with("artifact") {
            continue;
        }
        let Some(v) = input.get(&pin.id).filter(|v| !v.is_null()).cloned() else {
            continue;
        };
        let many = ty.starts_with("artifacts");
        let refs: Vec<Value> = match (&v, many) {
            (Value::Array(a), true) => a.clone(),
            (Value::Object(_), false) => vec![v.clone()],
            _ => {
                let want = if many {
                    "a list of artifact refs"
                } else {
                    "an artifact ref {\"$artifact\": \"<id>\"}"
                };
                return Err(bad(&pin.id, format!("Input '{}' expects {want}, got {v}", pin.id)));
            }
        };
        let mut out = Vec::with_capacity(refs.len());
        for r in &refs {
            let id = ref_id(&pin.id, r)?;
            let lookup = id.clone();
            let row = st
                .blocking(move |s| s.get_artifact(&lookup))
                .await?
                .ok_or_else(|| bad(&pin.id, format!("Input '{}': artifact '{id}' not found", pin.id)))?;
            out.push(artifact_ref(&row));
        }
        let resolved = if many {
            Value::Array(out)
        } else {
            out.pop().unwrap_or(Value::Null)
        };
        input.insert(pin.id.clone(), resolved);
    }
    Ok(())
}
