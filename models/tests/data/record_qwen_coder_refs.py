"""Records llama.cpp's greedy completions on Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), for
engines/tests/qwen_coder_reference.rs.

    /tmp/llvenv/bin/python models/tests/data/record_qwen_coder_refs.py \
        .models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf > models/tests/data/qwen_coder_0.5b_greedy.json

Prompts are rendered as the GGUF's Qwen2.5 chat template renders one user message (its default
system prompt); generation is greedy (temperature 0, repeat penalty 1) from llama.cpp via
llama-cpp-python, 64 tokens unless <|im_end|> comes first, with the first step's ten largest
logits. Prompts are chosen to run the full 64 tokens.
"""
import hashlib, json, sys
import llama_cpp
import numpy as np

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
    "Write a Rust function that reverses a string, and explain how it works.",
    "Write a bash one-liner that counts the lines of every .rs file in a directory, and explain it.",
    "What is the capital of France? Answer, then describe the city in a paragraph.",
    "Write a SQL query that lists the ten customers with the most orders, and explain each clause.",
    "Describe how HTTP keep-alive works.",
]
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IM_END = 151645
MAX = 64


def render(user):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def main(path):
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, seed=0)
    cases = []
    for p in PROMPTS:
        prompt = render(p)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        top = [[int(i), float(row[i])] for i in np.argsort(-row, kind="stable")[:10]]
        llm.reset()
        out = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(tok)
            if tok == IM_END or len(out) >= MAX:
                break
        cases.append({"user": p, "prompt": prompt, "prompt_ids": ids, "greedy_ids": out, "top_logits": top,
                      "text": llm.detokenize(out).decode("utf-8", "replace")})
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    json.dump({"gguf_sha256": sha, "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, greedy, 2 threads",
               "cases": cases}, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
