"""Records reference tokenizations for tests/tokenizer_reference.rs with llama.cpp.

Run once per model (committed outputs: smollm2_tokens.json, gemma3_tokens.json):
    python3 -m venv v && v/bin/pip install llama-cpp-python
    v/bin/python models/tests/data/record_tokenizer_refs.py <SmolLM2-135M-Instruct.Q4_1.gguf> > smollm2_tokens.json
    v/bin/python models/tests/data/record_tokenizer_refs.py <gemma-3-270m-q4_k_m.gguf> > gemma3_tokens.json
Special tokens are parsed (`special=True`) and BOS is added when the GGUF asks for it
(`add_bos=True` = llama.cpp's `add_special`; SmolLM2 says no, Gemma 3 says yes).

llama.cpp is the reference implementation of GGUF tokenizers (its `smollm` pre-tokenizer splits
digits one by one, then applies GPT-2's regex). Strings are deterministic: hand-picked cases plus a
seeded random mix of scripts, digits, code, whitespace and special tokens.
"""
import json, random, sys, hashlib
import llama_cpp

HAND = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "a", " a", "a ", "Hello world", "Hello  world", " Hello world ",
    "What is the capital of France?", "The capital of France is Paris.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|endoftext|>", "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start", "|im_end|>",
    "1", "12", "123", "1234567890", "3.14159", "1,000,000", "v2.0.1-rc3", "2026-11-24T06:18:57Z", "0x1F600", "-42", "1e-9",
    "I'm", "you're", "we've", "they'll", "she'd", "it's", "DON'T", "Y'ALL'RE",
    "café", "naïve", "Ünïcödé", "Straße", "ﬁ ligature", "e\u0301 combining", "Ａ full width", "\u00a0nbsp\u00a0",
    "日本語のテキスト", "中文文本测试", "한국어 텍스트", "Русский текст", "Ελληνικά", "עברית טקסט", "نص عربي", "हिन्दी पाठ", "ภาษาไทย",
    "emoji 😀🎉👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "\u202ertl override\u202c", "zero\u200bwidth", "\ufeffBOM",
    "def f(x):\n    return x ** 2\n", "fn main() { println!(\"{}\", 1 + 2); }", "SELECT * FROM runs WHERE status = 'waiting';",
    "{\"a\": [1, 2, {\"b\": null}], \"c\": true}", "<div class=\"x\">&amp;</div>", "https://example.com/path?q=1&r=2#frag",
    "C:\\Users\\name\\file.txt", "/usr/local/bin/abstractgateway --port 8080", "$HOME/.config", "a\\nb", "tab\tseparated\tvalues",
    "!!!???...", "---===___", "(((nested)))", "[brackets] {braces} <angles>", "@user #hashtag", "50% off — €20 £15 ¥100",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n", "<bos><eos>", "<start_of_turn", "▁already▁escaped",
    "    indented code", "\r\nwindows line", "mixed\r\n\r\nbreaks\n\r", "trailing spaces   ", "   ", "\u3000ideographic space",
]

WORDS = ["the", "gateway", "run", "ledger", "token", "café", "日本", "Привет", "émoji", "λ", "x", "ID", "HTTP/1.1", "JSON", "α-β"]
PIECES = WORDS + [" ", "  ", "\n", "\t", "0", "7", "42", "2026", "3.5", "😀", "🎉", ",", ".", "'s", "'ll", "(", ")", "{", "}", "\"",
                  "<|im_start|>", "<|im_end|>", "->", "::", "==", "//", "#", "$", "%", "_", "\\", "\u0301", "ß", "Ω", "中", "한"]


def random_strings(n, seed=20261124):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        k = rnd.randint(1, 24)
        out.append("".join(rnd.choice(PIECES) for _ in range(k)))
    return out


def main(path):
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    cases = []
    for text in HAND + random_strings(300):
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        cases.append({"text": text, "ids": ids})
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    json.dump({"model": path.rsplit("/", 1)[-1], "gguf_sha256": sha, "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
               "options": {"add_bos": True, "special": True}, "cases": cases}, sys.stdout, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main(sys.argv[1])
