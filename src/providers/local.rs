//! The `local` provider: models loaded in this process, each served by its own engine thread.
//! This side renders chat templates and tokenizes (cheap, no tensors); the engine does the rest.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use abstractgateway_engines::device::{self, DeviceSpec};
use abstractgateway_engines::embedding::EmbeddingConfig;
use abstractgateway_engines::stt::engine::SttConfig;
use abstractgateway_engines::text::engine::{kv_budgets_by_device, EngineConfig, GenEvent, GenerateRequest, TextEngine};
use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use abstractgateway_engines::text::grammar::{bounded_whitespace, Grammar, GrammarFactory, GrammarSpec};
use abstractgateway_engines::text::sampling::SamplingParams;
use abstractgateway_engines::{EngineError, GenError};
use abstractgateway_models::chat_template::ChatTemplate;
use abstractgateway_models::embedding_dir::is_embedding_dir;
use abstractgateway_models::source::{self, ModelInfo};
use abstractgateway_models::tokenizer::GgufTokenizer;
use serde_json::{json, Map, Value};

use super::embeddings::LocalEmbedder;
use super::speech::{LocalSpeaker, SpeechSettings};
use super::transcription::LocalTranscriber;
use super::{EventRx, Prompt, ProviderError, TextEvent, TextRequest, ToolChoice, Usage};

pub struct LocalModel {
    pub info: ModelInfo,
    pub engine: TextEngine,
    pub tokenizer: Arc<GgufTokenizer>,
    template: ChatTemplate,
    pub context: usize,
    /// `native`, `dense`, `candle` or `candle-safetensors`.
    pub backend: &'static str,
    dtype: &'static str,
    /// Where it runs (`cpu`, `cuda:0`, ...) and the device itself.
    pub device: String,
    pub candle_device: candle_core::Device,
    /// Tokens that end an assistant turn (eos and the template's end-of-turn markers).
    stop_ids: Vec<u32>,
    pub loaded_at: i64,
    /// llguidance's view of the vocabulary, built on the first constrained request.
    grammars: OnceLock<Result<Arc<GrammarFactory>, String>>,
    /// Whether its KV can be saved and loaded (snapshots; native and dense backends, weights hashed).
    pub kv_snapshots: bool,
}

#[derive(Default)]
pub struct LocalModels {
    pub models: Vec<LocalModel>,
    /// Text-embedding models (directories `embedding_dir::is_embedding_dir` recognises).
    pub embedders: Vec<LocalEmbedder>,
    /// Speech-to-text models (faster-whisper's CTranslate2 directories).
    pub transcribers: Vec<LocalTranscriber>,
    /// Text-to-speech voices (Piper).
    pub speakers: Vec<LocalSpeaker>,
}

/// End-of-turn markers of common chat templates, used as stop tokens when the vocabulary has them.
const END_OF_TURN: [&str; 5] = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"];

impl LocalModels {
    /// Resolves and loads every spec, reporting progress on stderr and in the log.
    /// `device_for(id)` is the device each model asks for (one setting, or per-model exceptions).
    pub fn load(
        specs: &[String],
        store: &Path,
        engine: &EngineConfig,
        embedding: &EmbeddingConfig,
        stt: &SttConfig,
        speech: &SpeechSettings,
        device_for: &dyn Fn(&str) -> Result<DeviceSpec, String>,
    ) -> Result<LocalModels, String> {
        let mut loaded: Vec<Loaded> = Vec::new();
        let mut embedders: Vec<LocalEmbedder> = Vec::new();
        let mut transcribers: Vec<LocalTranscriber> = Vec::new();
        let mut speakers: Vec<LocalSpeaker> = Vec::new();
        // One selection per distinct device spec (selecting a GPU initialises it).
        let mut selections: Vec<(DeviceSpec, device::Selected)> = Vec::new();
        for spec in specs {
            let src = source::resolve(spec, store).map_err(|e| e.to_string())?;
            let taken = loaded.iter().any(|m| m.info.id == src.id)
                || embedders.iter().any(|m| m.info.id == src.id)
                || transcribers.iter().any(|m| m.info.id == src.id)
                || speakers.iter().any(|m| m.info.id == src.id);
            if taken {
                return Err(format!("two models are served as '{}'; give one another id with ID=PATH", src.id));
            }
            let want = device_for(&src.id)?;
            let at = match selections.iter().position(|(d, _)| *d == want) {
                Some(i) => i,
                None => {
                    let sel = device::select(want).map_err(|e| format!("{}: {e}", src.id))?;
                    tracing::info!(model = %src.id, device = %sel.note, "local model's device");
                    selections.push((want, sel));
                    selections.len() - 1
                }
            };
            let sel = &selections[at].1;
            let info = source::describe(&src).map_err(|e| e.to_string())?;
            if src.format == source::Format::Piper {
                speakers.push(LocalSpeaker::load(info, &sel.device, &sel.name, speech)?);
                continue;
            }
            if is_embedding_dir(&src.path) {
                embedders.push(LocalEmbedder::load(info, &sel.device, &sel.name, embedding.clone())?);
                continue;
            }
            // faster-whisper's CTranslate2 directories and HF whisper directories.
            let whisper = info.architecture.as_deref() == Some("whisper");
            if src.format == source::Format::Ctranslate2 && !whisper {
                return Err(format!(
                    "{}: a CTranslate2 directory that is not faster-whisper's (no suppress_ids/lang_ids in config.json)",
                    src.path.display()
                ));
            }
            if whisper && src.format != source::Format::Gguf {
                transcribers.push(LocalTranscriber::load(info, &sel.device, &sel.name, stt.clone())?);
                continue;
            }
            loaded.push(load_one(&src, info, sel, want == DeviceSpec::Auto)?);
        }
        // The engines start once every model's weights are in memory: the dense models on one
        // device share a KV budget sized from what is free then.
        let weights: Vec<&LlamaGguf> = loaded.iter().map(|l| &l.model).collect();
        let budgets = kv_budgets_by_device(&weights);
        for (l, budget) in loaded.iter().zip(&budgets) {
            if let Some(b) = budget {
                let sharing = budgets.iter().flatten().filter(|o| Arc::ptr_eq(o, b)).count();
                tracing::info!(model = %l.info.id, device = %l.device, limit_mib = b.limit_bytes() >> 20, models = sharing, "KV budget of the dense models on this device");
            }
        }
        let models = loaded
            .into_iter()
            .zip(budgets)
            .map(|(l, kv_budget)| {
                let kv_tiers = tiers_for(&l, engine);
                l.start(EngineConfig {
                    kv_budget,
                    kv_tiers,
                    ..engine.clone()
                })
            })
            .collect();
        Ok(LocalModels {
            models,
            embedders,
            transcribers,
            speakers,
        })
    }

    pub fn get(&self, id: &str) -> Option<&LocalModel> {
        self.models.iter().find(|m| m.info.id == id)
    }

    pub fn embedder(&self, id: &str) -> Option<&LocalEmbedder> {
        self.embedders.iter().find(|m| m.info.id == id)
    }

    /// The model a request without a model name gets: the first one loaded.
    pub fn default_id(&self) -> Option<&str> {
        self.models.first().map(|m| m.info.id.as_str())
    }

    pub fn start(&self, id: &str, req: &TextRequest) -> Result<EventRx, ProviderError> {
        let m = self.get(id).ok_or_else(|| ProviderError::ModelNotFound(id.to_string()))?;
        if !m.engine.is_running() {
            return Err(ProviderError::Unavailable(format!("the engine of '{id}' has stopped")));
        }
        m.start(req)
    }
}

/// The prefix cache's lower tiers for a loaded model: `engine`'s settings with the model's
/// fingerprint (its weights hashed, or remembered from an earlier start). None where the
/// backend cannot export KV or the weights cannot be read.
fn tiers_for(l: &Loaded, engine: &EngineConfig) -> Option<abstractgateway_engines::text::kv_tiers::TierConfig> {
    let t = engine.kv_tiers.clone()?;
    if !l.model.exports_kv() {
        return None;
    }
    let memo = t.disk_dir.as_ref().map(|d| d.join("weights-sha256.json"));
    let sha = match super::weights_hash::weights_sha256(&l.info.path, memo.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(model = %l.info.id, error = %e, "cannot hash the weights: this model's KV stays in its first tier");
            return None;
        }
    };
    Some(abstractgateway_engines::text::kv_tiers::TierConfig {
        fingerprint: l.model.kv_fingerprint(&sha)?,
        ..t
    })
}

/// A model whose weights are loaded and whose engine has not started yet.
struct Loaded {
    info: ModelInfo,
    model: LlamaGguf,
    device: String,
    candle_device: candle_core::Device,
    template: ChatTemplate,
    /// How long its weights took to load.
    load_ms: u64,
}

/// Loads one model on `selected`. Under `auto`, a model the GPU path cannot run yet goes to the
/// CPU with a warning; a device named explicitly is never swapped.
fn load_one(src: &source::ModelSource, info: ModelInfo, selected: &device::Selected, auto: bool) -> Result<Loaded, String> {
    let started = Instant::now();
    let size_mb = info.size_bytes as f64 / 1e6;
    tracing::info!(model = %info.id, path = %src.path.display(), size_mb, "loading model");
    // Tensors are not read strictly in file order: report the furthest position, by tenths.
    let mut last_decile = -1i64;
    let id = info.id.clone();
    let mut progress = |done: u64, total: u64| {
        let decile = if total == 0 { 10 } else { (done * 10 / total) as i64 };
        if decile > last_decile {
            last_decile = decile;
            eprintln!("loading {id}: {:>3}% of {:.0} MB", decile * 10, total as f64 / 1e6);
            tracing::debug!(model = %id, percent = decile * 10, "loading");
        }
    };
    let mut device = selected.name.clone();
    let model = match LlamaGguf::load_with_progress(&src.path, &selected.device, &mut progress) {
        Err(EngineError::Unsupported(why)) if auto && !selected.device.is_cpu() => {
            tracing::warn!(model = %info.id, device = %selected.name, reason = %why, "not supported on this device; loading it on the CPU");
            device = "cpu".into();
            LlamaGguf::load_with_progress(&src.path, &candle_core::Device::Cpu, &mut progress)
        }
        other => other,
    }
    .map_err(|e| format!("cannot load {}: {e}", src.path.display()))?;
    let candle_device = if device == "cpu" {
        candle_core::Device::Cpu
    } else {
        selected.device.clone()
    };
    let template = ChatTemplate::new(model.tokenizer.chat_template.as_deref()).map_err(|e| format!("{}: {e}", info.id))?;
    Ok(Loaded {
        info,
        model,
        device,
        candle_device,
        template,
        load_ms: started.elapsed().as_millis() as u64,
    })
}

impl Loaded {
    /// Starts the model's engine thread.
    fn start(self, engine_cfg: EngineConfig) -> LocalModel {
        let Loaded {
            info,
            model,
            device,
            candle_device,
            template,
            load_ms,
        } = self;
        let tokenizer = model.tokenizer.clone();
        let mut stop_ids: Vec<u32> = tokenizer.eos_id.into_iter().collect();
        for t in END_OF_TURN {
            if let Some(i) = tokenizer.token_to_id(t) {
                if tokenizer.token_bytes.get(i as usize).map(Option::is_none).unwrap_or(false) && !stop_ids.contains(&i) {
                    stop_ids.push(i);
                }
            }
        }
        let context = model.context;
        let backend = model.backend();
        let dtype = model.compute_dtype();
        let requantized = model.requantized().to_vec();
        let kv_snapshots = engine_cfg.kv_tiers.is_some();
        let engine = TextEngine::spawn_with(model, engine_cfg);
        tracing::info!(model = %info.id, ms = load_ms, context, backend, device, arch = ?info.architecture, quant = ?info.quantization, "model loaded");
        if !requantized.is_empty() {
            tracing::warn!(
                model = %info.id,
                types = ?requantized,
                "tensor types our kernels do not run directly were requantized to Q8_0 at load (more memory than the file; output close to, not identical to, the original quantization)"
            );
        }
        LocalModel {
            info,
            engine,
            tokenizer,
            template,
            context,
            backend,
            dtype,
            device,
            candle_device,
            stop_ids,
            loaded_at: chrono::Utc::now().timestamp(),
            grammars: OnceLock::new(),
            kv_snapshots,
        }
    }
}

/// For `tool_choice` required or named: the answer is started for the model, so that it can
/// only continue a call (`{"name": "` and, when named, the name and `"arguments": `).
fn forced_tool_call(tools: &[Value], choice: &ToolChoice) -> Option<String> {
    if tools.is_empty() {
        return None;
    }
    match choice {
        ToolChoice::Auto => None,
        // With one tool, "some tool" is that tool: name it, so a weak model cannot invent one.
        ToolChoice::Required if tools.len() == 1 => {
            let name = tools[0].pointer("/function/name").and_then(Value::as_str).unwrap_or("");
            forced_tool_call(tools, &ToolChoice::Named(name.to_string()))
        }
        ToolChoice::Required => Some("<tool_call>\n{\"name\": \"".into()),
        ToolChoice::Named(n) => Some(format!("<tool_call>\n{{\"name\": {}, \"arguments\": ", Value::String(n.clone()))),
    }
}

/// The grammar of what follows a forced call's start (`forced_tool_call`): for each tool that
/// may be called, its name (when not already written) and arguments valid against its
/// `parameters` schema, then the closing brace. Lark, with the schemas as `%json` rules.
fn tool_call_grammar(tools: &[Value], choice: &ToolChoice) -> String {
    let schema = |t: &Value| {
        let s = t
            .pointer("/function/parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        bounded_whitespace(s)
    };
    let name_of = |t: &Value| t.pointer("/function/name").and_then(Value::as_str).unwrap_or("").to_string();
    let named = match choice {
        ToolChoice::Named(n) => Some(n.clone()),
        ToolChoice::Required if tools.len() == 1 => Some(name_of(&tools[0])),
        _ => None,
    };
    let mut g = String::new();
    if let Some(n) = named {
        let t = tools.iter().find(|t| name_of(t) == n).cloned().unwrap_or(json!({}));
        g.push_str(&format!("start: args \"}}\"\nargs: %json {}\n", schema(&t)));
        return g;
    }
    let alts: Vec<String> = (0..tools.len()).map(|i| format!("c{i}")).collect();
    g.push_str(&format!("start: {}\n", alts.join(" | ")));
    for (i, t) in tools.iter().enumerate() {
        // JSON string syntax is Lark's: the literal is the name, its closing quote and the key.
        let lit = Value::String(format!("{}\", \"arguments\": ", name_of(t))).to_string();
        g.push_str(&format!("c{i}: {lit} a{i} \"}}\"\na{i}: %json {}\n", schema(t)));
    }
    g
}

/// An assistant turn's earlier tool calls with `arguments` as a JSON object, as tool-aware
/// templates (Qwen's renders them with `tojson`) were trained on, not OpenAI's JSON string: fed
/// the escaped string, Qwen2.5-Coder-0.5B loops on the call until `max_tokens`. Arguments that do
/// not parse stay as sent.
fn with_object_arguments(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for c in calls {
            if let Some(args) = c.pointer_mut("/function/arguments") {
                if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()) {
                    *args = parsed;
                }
            }
        }
    }
    m
}

/// What a template without tool support gets told about the tools, and how to call one.
fn tool_instructions(tools: &[Value]) -> String {
    let mut s = String::from(
        "You can call these tools. To call one, answer with only:\n<tool_call>\n{\"name\": \"<tool name>\", \"arguments\": {<arguments as JSON>}}\n</tool_call>\n\n<tools>\n",
    );
    for t in tools {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str("</tools>");
    s
}

/// What an engine's typed failure means to the router: the request's fault (no fallback), a
/// busy model (try a fallback, else 429), or this target failing (fallback, and the breaker
/// counts it).
pub(crate) fn gen_error(model: &str, e: GenError) -> ProviderError {
    match e {
        GenError::Overloaded { capacity } => ProviderError::Overloaded {
            model: model.to_string(),
            capacity,
        },
        GenError::ContextOverflow(m) => ProviderError::ContextOverflow(m),
        GenError::InvalidRequest(m) => ProviderError::Invalid(m),
        GenError::KvCacheFull(m) => ProviderError::Unavailable(format!("local engine: {m}")),
        GenError::Stopped => ProviderError::Unavailable(format!("the engine of '{model}' has stopped")),
        GenError::Internal(m) => ProviderError::Unavailable(format!("local engine: {m}")),
    }
}

impl LocalModel {
    /// The activations' dtype (`f32`, `bf16`), as the model reported it at load.
    pub fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// The prompt text for a chat, via the model's own template.
    pub fn render_chat(&self, messages: &[Value], tools: &[Value]) -> Result<String, ProviderError> {
        self.render_chat_with(messages, tools, true)
    }

    /// The token ids of a chat rendered by the model's template, with or without the
    /// assistant turn's opening (a prompt-cache fragment has none unless asked for).
    pub fn chat_tokens(&self, messages: &[Value], tools: &[Value], add_generation_prompt: bool) -> Result<Vec<u32>, ProviderError> {
        let text = self.render_chat_with(messages, tools, add_generation_prompt)?;
        self.tokenizer.encode(&text).map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    /// Runs a prompt-cache control operation on the model's engine (blocking).
    pub fn prompt_cache(
        &self,
        op: abstractgateway_engines::text::prompt_keys::KeyOp,
    ) -> Result<Value, abstractgateway_engines::text::prompt_keys::KeyError> {
        self.engine.control(op)
    }

    fn render_chat_with(&self, messages: &[Value], tools: &[Value], add_generation_prompt: bool) -> Result<String, ProviderError> {
        let mut msgs: Vec<Value> = Vec::with_capacity(messages.len() + 1);
        let native_tools = self.template.handles_tools;
        for m in messages {
            let role = m["role"].as_str().unwrap_or("user");
            let content = m["content"].as_str().unwrap_or("").to_string();
            if native_tools {
                msgs.push(with_object_arguments(m));
                continue;
            }
            // Templates without tool support see tool traffic as plain turns.
            match role {
                "tool" => msgs.push(json!({"role": "user", "content": format!("<tool_response>\n{content}\n</tool_response>")})),
                "assistant" if m.get("tool_calls").map(|t| t.is_array()).unwrap_or(false) => {
                    let mut text = content;
                    for c in m["tool_calls"].as_array().into_iter().flatten() {
                        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
                        let args: Value = serde_json::from_str(args).unwrap_or(Value::String(args.into()));
                        text.push_str(&format!(
                            "<tool_call>\n{}\n</tool_call>",
                            json!({"name": c["function"]["name"], "arguments": args})
                        ));
                    }
                    msgs.push(json!({"role": "assistant", "content": text}));
                }
                _ => msgs.push(json!({"role": role, "content": content})),
            }
        }
        if !tools.is_empty() && !native_tools {
            let text = tool_instructions(tools);
            match msgs.first_mut() {
                Some(first) if first["role"] == "system" => {
                    let c = format!("{}\n\n{text}", first["content"].as_str().unwrap_or(""));
                    first["content"] = Value::String(c);
                }
                _ => msgs.insert(0, json!({"role": "system", "content": text})),
            }
        }
        let mut extra = Map::new();
        let tok = &self.tokenizer;
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        extra.insert("bos_token".into(), Value::String(name(tok.bos_id)));
        extra.insert("eos_token".into(), Value::String(name(tok.eos_id)));
        if native_tools && !tools.is_empty() {
            extra.insert("tools".into(), Value::Array(tools.to_vec()));
        }
        self.template
            .render(&Value::Array(msgs), add_generation_prompt, &extra)
            .map_err(|e| ProviderError::Invalid(format!("cannot render the chat template: {e}")))
    }

    /// The model's grammar factory (llguidance), built once, on first use.
    fn grammar_factory(&self) -> Result<Arc<GrammarFactory>, ProviderError> {
        self.grammars
            .get_or_init(|| {
                let t0 = std::time::Instant::now();
                let tok = &self.tokenizer;
                let eos = tok.eos_id.or(self.stop_ids.first().copied()).unwrap_or(0);
                let f = GrammarFactory::new(&tok.token_bytes, |i| tok.id_to_token(i), eos).map(Arc::new);
                tracing::info!(model = %self.info.id, ms = t0.elapsed().as_millis() as u64, "grammar support ready");
                f
            })
            .clone()
            .map_err(ProviderError::Invalid)
    }

    /// The constraint for this request: the tool call's arguments against the tool's schema
    /// when a call is forced, else the response schema (`response_format: json_schema`).
    fn grammar(&self, req: &TextRequest, forced: bool) -> Result<Option<Grammar>, ProviderError> {
        let spec = match (&req.prompt, forced) {
            (Prompt::Chat { tools, tool_choice, .. }, true) => GrammarSpec::Lark(tool_call_grammar(tools, tool_choice)),
            _ => match &req.params.json_schema {
                Some(s) => GrammarSpec::JsonSchema(s.clone()),
                None => return Ok(None),
            },
        };
        let factory = self.grammar_factory()?;
        match factory.compile(&spec) {
            Ok(g) => Ok(Some(g)),
            // A tool schema llguidance cannot take still gets a JSON object (the older,
            // weaker constraint) rather than a refused request.
            Err(e) if forced => {
                tracing::warn!(model = %self.info.id, error = %e, "tool schema not enforceable; constraining the call to a JSON object");
                Ok(None)
            }
            Err(e) => Err(ProviderError::Invalid(format!(
                "response_format.json_schema cannot be enforced: {e}"
            ))),
        }
    }

    /// The prompt's token ids, and the start of the answer when a tool call is forced.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<(Vec<u32>, Option<String>), ProviderError> {
        let (mut text, forced) = match prompt {
            Prompt::Chat {
                messages,
                tools,
                tool_choice,
            } => {
                let rendered = self.render_chat(messages, tools)?;
                (rendered, forced_tool_call(tools, tool_choice))
            }
            Prompt::Text(t) => (t.clone(), None),
        };
        if let Some(f) = &forced {
            text.push_str(f);
        }
        let ids = self.tokenizer.encode(&text).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        Ok((ids, forced))
    }

    fn start(&self, req: &TextRequest) -> Result<EventRx, ProviderError> {
        // A model at capacity is refused before any work is done for the request (template,
        // tokenizing): under a flood, refusals cost next to nothing.
        let slot = self.engine.reserve().map_err(|e| gen_error(&self.info.id, e))?;
        let (ids, forced) = self.prompt_ids(&req.prompt)?;
        let p = &req.params;
        if ids.is_empty() {
            return Err(ProviderError::Invalid("the prompt is empty".into()));
        }
        if ids.len() >= self.context {
            return Err(ProviderError::ContextOverflow(format!(
                "This model's maximum context length is {} tokens; the prompt has {} tokens.",
                self.context,
                ids.len()
            )));
        }
        let room = self.context - ids.len();
        let max_tokens = match p.max_tokens {
            Some(0) => return Err(ProviderError::Invalid("max_tokens must be at least 1".into())),
            Some(n) if n > room => {
                return Err(ProviderError::ContextOverflow(format!(
                    "This model's maximum context length is {} tokens; the prompt has {} tokens and max_tokens asks for {n} more.",
                    self.context,
                    ids.len()
                )))
            }
            Some(n) => n,
            None => room,
        };
        // llama.cpp's server defaults when the client leaves a knob unset.
        let sampling = SamplingParams {
            temperature: p.temperature.unwrap_or(0.8),
            top_k: p.top_k.unwrap_or(40),
            top_p: p.top_p.unwrap_or(0.95),
            min_p: p.min_p.unwrap_or(0.05),
            seed: p.seed,
            repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
            presence_penalty: p.presence_penalty.unwrap_or(0.0),
            frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
        };
        sampling.validate().map_err(ProviderError::Invalid)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stop_strings = p.stop.clone();
        let grammar = self.grammar(req, forced.is_some())?;
        let mut json_object = p.json_object && grammar.is_none();
        let mut json_prefix = None;
        if let Some(f) = forced {
            // The forced start of the call is part of the answer: the client (and the tool-call
            // parser) see it first. The model must complete it as valid JSON, and ends there.
            json_object = grammar.is_none();
            json_prefix = f.find('{').map(|i| f[i..].to_string());
            let _ = tx.send(Ok(TextEvent::Delta(f)));
            stop_strings.push("</tool_call>".into());
        }
        let gen = GenerateRequest {
            prompt_ids: ids,
            max_tokens,
            stop_ids: self.stop_ids.clone(),
            stop_strings,
            sampling,
            json_object,
            json_prefix,
            grammar,
            cache_scope: req.cache_scope.clone(),
            cache_key: req.cache_key.clone(),
            cache_key_auto: req.cache_key_auto,
        };
        let model = self.info.id.clone();
        self.engine.submit_reserved(
            slot,
            gen,
            Box::new(move |ev| {
                let out = match ev {
                    GenEvent::Token { text, .. } | GenEvent::Text(text) => {
                        if text.is_empty() {
                            // Nothing to release yet; still detect a gone client.
                            return !tx.is_closed();
                        }
                        Ok(TextEvent::Delta(text))
                    }
                    GenEvent::Done { reason, usage } => Ok(TextEvent::Done {
                        finish: reason.as_str().into(),
                        usage: Usage {
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                            cached_tokens: usage.cached_tokens,
                        },
                    }),
                    GenEvent::Error(e) => Err(gen_error(&model, e)),
                };
                tx.send(out).is_ok()
            }),
        );
        Ok(rx)
    }
}

#[cfg(test)]
mod history_tests {
    use serde_json::json;

    #[test]
    fn earlier_tool_call_arguments_go_back_as_objects() {
        let m = json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"notes.txt\"}"}},
            {"id": "b", "type": "function", "function": {"name": "x", "arguments": "not json"}}]});
        let out = super::with_object_arguments(&m);
        assert_eq!(out["tool_calls"][0]["function"]["arguments"], json!({"path": "notes.txt"}));
        assert_eq!(out["tool_calls"][1]["function"]["arguments"], "not json");
        assert_eq!(out["content"], "");
    }
}
