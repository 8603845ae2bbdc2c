"""Records llama.cpp greedy completions for the engine's reference test.

    v/bin/python models/tests/data/record_greedy_refs.py <SmolLM2 .gguf> > models/tests/data/smollm2_greedy.json
Prompts are rendered with the model's ChatML template; generation is greedy (temperature 0,
repeat penalty 1) from llama.cpp via llama-cpp-python, up to 48 tokens or <|im_end|>, and the
first step's ten largest logits. Also run on the derived qwen2/qwen3 files
(models/tests/common/derive.rs) for engines/tests/derived_archs.rs.
"""
import json, sys, hashlib
import llama_cpp
import numpy as np

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "What is 12 + 30?",
    "Name a color of the rainbow.",
]


def chatml(user):
    return ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def main(path):
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, seed=0)
    cases = []
    for p in PROMPTS:
        prompt = chatml(p)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        # The first step's ten largest logits: a numeric check finer than token agreement.
        llm.eval(ids)
        row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        top = sorted(range(len(row)), key=lambda i: -row[i])[:10]
        top_logits = [[i, float(row[i])] for i in top]
        llm.reset()
        out = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(tok)
            if tok == 2 or len(out) >= 48:
                break
        cases.append({"user": p, "prompt": prompt, "prompt_ids": ids, "greedy_ids": out, "top_logits": top_logits,
                      "text": llm.detokenize(out).decode("utf-8", "replace")})
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    json.dump({"gguf_sha256": sha, "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, greedy", "cases": cases},
              sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
