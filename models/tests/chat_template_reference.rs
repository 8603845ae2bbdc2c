//! Chat templates rendered by minijinja against Python jinja2 configured as transformers renders
//! them (tests/data/record_chat_template_refs.py): SmolLM2's own template from its GGUF, our
//! ChatML fallback, and a feature-heavy template (tools + tojson, string methods, namespaces,
//! loop controls, raise_exception). Outputs must be identical byte for byte.

use abstractgateway_models::chat_template::{ChatTemplate, CHATML};
use serde_json::Value;

#[test]
fn templates_render_like_transformers() {
    let refs: Value = serde_json::from_str(include_str!("data/chat_templates.json")).unwrap();
    assert_eq!(
        refs["templates"]["chatml"].as_str().unwrap(),
        CHATML,
        "the fallback is the reference ChatML template"
    );
    let mut checked = 0;
    for case in refs["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let tmpl = if name == "chatml" {
            ChatTemplate::new(None).unwrap()
        } else {
            ChatTemplate::new(refs["templates"][name].as_str()).unwrap()
        };
        let extra = case["extra"].as_object().unwrap();
        let got = tmpl.render(&case["messages"], case["add_generation_prompt"].as_bool().unwrap(), extra);
        match (case.get("output"), case.get("error")) {
            (Some(want), _) => assert_eq!(got.as_deref().ok(), want.as_str(), "template {name}, messages {}", case["messages"]),
            (_, Some(err)) => {
                let e = got
                    .err()
                    .unwrap_or_else(|| panic!("template {name} should fail: {err}"))
                    .to_string();
                assert!(e.contains(err.as_str().unwrap()), "{e} vs {err}");
            }
            _ => unreachable!(),
        }
        checked += 1;
    }
    assert_eq!(checked, 42);
}

#[test]
fn smollm2_prompt_matches_the_verified_prompt() {
    // The prompt whose greedy completion was verified in shared/models.md (ids 1, 4093, ...).
    let refs: Value = serde_json::from_str(include_str!("data/chat_templates.json")).unwrap();
    let t = ChatTemplate::new(refs["templates"]["smollm2"].as_str()).unwrap();
    let msgs = serde_json::json!([{"role": "system", "content": "S"}, {"role": "user", "content": "What is the capital of France?"}]);
    let out = t.render(&msgs, true, &serde_json::Map::new()).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(
        ChatTemplate::new(Some("{% for m in messages %}")).is_err(),
        "a broken template is an error, not a crash"
    );
}
