#!/usr/bin/env python3
"""Writes the basic-agent bundle sources (manifest + VisualFlow JSON). Our own authoring, in the
upstream `.flow` format: same bundle id, entrypoint interface and output pins as upstream's
basic-agent; the status updates are emit_event nodes instead of a helper subflow (no child run per
agent run). Run it after editing; the gateway embeds the JSON files it writes."""
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))
X = {"id": "exec-in", "label": "", "type": "execution"}
XO = {"id": "exec-out", "label": "", "type": "execution"}
START_PINS = [("use_context", "boolean"), ("context", "object"), ("provider", "provider"), ("model", "model"),
              ("system", "string"), ("prompt", "string"), ("tools", "tools"), ("max_iterations", "number"),
              ("max_in_tokens", "number"), ("temperature", "number"), ("seed", "number"), ("resp_schema", "object")]
OUT_PINS = [("response", "string"), ("success", "boolean"), ("meta", "object"), ("scratchpad", "object")]

def pin(i, t):
    return {"id": i, "label": i, "type": t}

def node(i, ty, x, label, inputs, outputs, **extra):
    data = {"nodeType": ty, "label": label, "inputs": inputs, "outputs": outputs}
    data.update(extra)
    return {"id": i, "type": ty, "position": {"x": x, "y": 0}, "data": data}

def status(i, x, text):
    return node(i, "emit_event", x, f"status: {text}",
                [X, pin("name", "string"), pin("scope", "string"), pin("payload", "object")], [XO],
                pinDefaults={"name": "abstract.status", "scope": "run", "payload": {"text": text}})

nodes = [
    node("node-1", "on_flow_start", 0, "RECEIVING PROMPT", [], [XO] + [pin(i, t) for i, t in START_PINS],
         pinDefaults={"provider": "local", "model": "", "use_context": False, "max_iterations": 20,
                      "temperature": 0.7, "seed": -1,
                      "tools": ["list_files", "read_file", "search_files", "write_file", "edit_file",
                                "execute_command", "fetch_url", "web_search"]}),
    status("node-4", 300, "Thinking..."),
    node("node-2", "agent", 600, "Agentic Loop", [X] + [pin(i, t) for i, t in START_PINS],
         [XO] + [pin(i, t) for i, t in OUT_PINS], agentConfig={}),
    status("node-5", 900, "Done"),
    node("end", "on_flow_end", 1200, "END", [X] + [pin(i, t) for i, t in OUT_PINS], []),
]

def edge(s, sh, t, th):
    return {"id": f"e-{s}-{sh}-{t}-{th}", "source": s, "sourceHandle": sh, "target": t, "targetHandle": th}

edges = [edge("node-1", "exec-out", "node-4", "exec-in"), edge("node-4", "exec-out", "node-2", "exec-in"),
         edge("node-2", "exec-out", "node-5", "exec-in"), edge("node-5", "exec-out", "end", "exec-in")]
edges += [edge("node-1", p, "node-2", p) for p, _ in START_PINS]
edges += [edge("node-2", p, "end", p) for p, _ in OUT_PINS]

flow = {"id": "81795ea9", "name": "basic-agent", "description": "A ReAct agent with workspace tools; side-effect tools wait for approval.",
        "interfaces": ["abstractcode.agent.v1"], "nodes": nodes, "edges": edges, "entryNode": "node-1",
        "created_at": "2026-11-24T00:00:00+00:00", "updated_at": "2026-11-24T00:00:00+00:00"}
manifest = {"bundle_format_version": "1", "bundle_id": "basic-agent", "bundle_version": "0.0.1",
            "created_at": "2026-11-24T00:00:00+00:00",
            "entrypoints": [{"flow_id": "81795ea9", "name": "basic-agent",
                             "description": "A ReAct agent with workspace tools", "interfaces": ["abstractcode.agent.v1"]}],
            "default_entrypoint": "81795ea9", "flows": {"81795ea9": "flows/81795ea9.json"},
            "artifacts": {}, "assets": {}, "metadata": {"builtin": True, "author": "abstractgateway"}}
with open(os.path.join(HERE, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1); f.write("\n")
with open(os.path.join(HERE, "flows", "81795ea9.json"), "w") as f:
    json.dump(flow, f, indent=1); f.write("\n")
