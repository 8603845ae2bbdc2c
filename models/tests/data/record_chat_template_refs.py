"""Records reference chat-template renderings for tests/chat_template_reference.rs.

Uses jinja2 configured the way transformers renders chat templates (sandboxed, trim_blocks,
lstrip_blocks, loopcontrols, raise_exception, transformers' tojson). Run once:
    python3 -m venv v && v/bin/pip install jinja2 gguf
    v/bin/python models/tests/data/record_chat_template_refs.py <SmolLM2 .gguf> > models/tests/data/chat_templates.json
"""
import json, sys
import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

# Our own template exercising what real templates use: tools + tojson, string methods, namespaces,
# loop controls, bos_token, raise_exception.
FEATURES = """{{ bos_token }}{% set ns = namespace(system=none, n=0) %}
{% for m in messages %}
  {% if m['role'] == 'system' %}{% set ns.system = m['content'].strip() %}{% continue %}{% endif %}
  {% if m['role'] not in ['user', 'assistant', 'tool'] %}{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}
  {% set ns.n = ns.n + 1 %}
{% endfor %}
{% if ns.system %}<|system|>{{ ns.system }}
{% endif %}
{% if tools %}<|tools|>{% for t in tools %}{{ t | tojson }}{% if not loop.last %}
{% endif %}{% endfor %}
{% endif %}
{% for m in messages if m['role'] != 'system' %}
<|{{ m['role'] }}|>{{ m['content'] | trim }}{% if m.get('tool_calls') %} calls={{ m['tool_calls'] | tojson(indent=2) }}{% endif %}
{% if loop.index >= 50 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}<|assistant|>{% endif %}turns={{ ns.n }} upper={{ messages[-1]['content'].upper()[:12] }} starts={{ messages[0]['content'].startswith('You') }}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "List the files in your workspace and read notes.txt"}],
    [{"role": "system", "content": "  You answer in French.  \n"}, {"role": "user", "content": "  naïve café 😀 日本語  \n\n"}],
    [{"role": "user", "content": "Call the tool"}, {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "read_file", "arguments": {"path": "notes.txt", "n": 1.0, "ok": True, "x": None}}}]},
     {"role": "tool", "content": "contents of notes <b>&</b>"}],
    [{"role": "user", "content": "line1\nline2\n\n  indented"}],
]

TOOLS = [{"type": "function", "function": {"name": "list_files", "description": "List files — with <html> & ünicode", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": []}}}]


def env():
    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    return e


def smollm2_template(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode()


def main(gguf_path):
    templates = {"smollm2": smollm2_template(gguf_path), "chatml": CHATML, "features": FEATURES}
    e = env()
    cases = []
    for name, src in templates.items():
        t = e.from_string(src)
        for conv in CONVERSATIONS + [[{"role": "wizard", "content": "x"}]]:
            for agp in (True, False):
                extra = {"bos_token": "<s>", "eos_token": "</s>", "tools": TOOLS if name == "features" else None}
                try:
                    out = {"output": t.render(messages=conv, add_generation_prompt=agp, **extra)}
                except jinja2.exceptions.TemplateError as ex:
                    out = {"error": str(ex)}
                cases.append({"template": name, "messages": conv, "add_generation_prompt": agp, "extra": extra, **out})
    json.dump({"reference": f"jinja2 {jinja2.__version__} configured as transformers renders chat templates", "templates": templates, "cases": cases},
              sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
