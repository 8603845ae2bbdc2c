//! The agent's tools, confined to a workspace directory under the data dir
//! (`<data_dir>/workspaces/<session_id>`; the session id defaults to the run id). Every path a
//! tool is given is resolved inside the workspace: absolute paths, `..` and symlinks that lead out are refused, never followed.
//! Side-effect tools (`write_file`, `edit_file`, `execute_command`) are marked so the runtime can
//! ask for approval before running them.

mod exec;
mod files;
mod workspace;

use serde_json::{json, Value};

pub use workspace::{Workspace, WorkspaceError};

/// One tool: its OpenAI-shaped spec, and whether running it changes anything.
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: fn() -> Value,
    pub side_effects: bool,
}

impl ToolSpec {
    /// The OpenAI `tools` entry.
    pub fn openai(&self) -> Value {
        json!({"type": "function", "function": {"name": self.name, "description": self.description, "parameters": (self.parameters)()}})
    }
}

pub const TOOLS: [ToolSpec; 6] = [
    ToolSpec {
        name: "list_files",
        description: "List files and directories in the workspace (recursively up to a depth).",
        parameters: || {
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "Directory relative to the workspace (default '.')"},
                "depth": {"type": "integer", "description": "How many levels to descend (default 2)"}}})
        },
        side_effects: false,
    },
    ToolSpec {
        name: "read_file",
        description: "Read a text file from the workspace, optionally a range of lines.",
        parameters: || {
            json!({"type": "object", "required": ["path"], "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer", "description": "First line, 1-based"},
                "end_line": {"type": "integer", "description": "Last line, inclusive"}}})
        },
        side_effects: false,
    },
    ToolSpec {
        name: "search_files",
        description: "Search the workspace's text files for a string (case-insensitive); returns path:line: text.",
        parameters: || {
            json!({"type": "object", "required": ["query"], "properties": {
                "query": {"type": "string"},
                "path": {"type": "string", "description": "Directory to search (default '.')"}}})
        },
        side_effects: false,
    },
    ToolSpec {
        name: "write_file",
        description: "Create or overwrite a file in the workspace with the given content.",
        parameters: || {
            json!({"type": "object", "required": ["path", "content"], "properties": {
                "path": {"type": "string"}, "content": {"type": "string"}}})
        },
        side_effects: true,
    },
    ToolSpec {
        name: "edit_file",
        description: "Replace an exact piece of text in a workspace file (it must occur exactly once unless replace_all).",
        parameters: || {
            json!({"type": "object", "required": ["path", "old_text", "new_text"], "properties": {
                "path": {"type": "string"}, "old_text": {"type": "string"}, "new_text": {"type": "string"},
                "replace_all": {"type": "boolean"}}})
        },
        side_effects: true,
    },
    ToolSpec {
        name: "execute_command",
        description: "Run a shell command in the workspace directory, with a timeout and an output cap.",
        parameters: || {
            json!({"type": "object", "required": ["command"], "properties": {
                "command": {"type": "string"},
                "timeout_s": {"type": "number", "description": "Seconds before the command is killed (default 30, at most 300)"}}})
        },
        side_effects: true,
    },
];

pub fn spec(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// Runs one tool call. The result is what the model sees: `{"success": true, "output": …}` or
/// `{"success": false, "error": …}`; a bad call is an error result, never a panic.
pub fn run(ws: &Workspace, name: &str, args: &Value) -> Value {
    let out = match name {
        "list_files" => files::list(ws, args),
        "read_file" => files::read(ws, args),
        "search_files" => files::search(ws, args),
        "write_file" => files::write(ws, args),
        "edit_file" => files::edit(ws, args),
        "execute_command" => exec::run(ws, args),
        "fetch_url" | "web_search" => Err(format!(
            "{name} is unavailable: this gateway runs offline (no network access is configured for tools)"
        )),
        other => Err(format!(
            "unknown tool '{other}' (available: {})",
            TOOLS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        )),
    };
    match out {
        Ok(v) => json!({"success": true, "output": v}),
        Err(e) => json!({"success": false, "error": e}),
    }
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument '{key}'"))
}
