"""Records llama.cpp's greedy continuation and first-step top-10 logits on the Gemma 3 270M GGUF.

    v/bin/python models/tests/data/record_gemma3_refs.py <gemma-3-270m-q4_k_m.gguf> > models/tests/data/gemma3_greedy.json
(candle 0.11's quantized_gemma3 uses SiLU where Gemma 3 uses GELU, so it is no reference.)
"""
import json, sys
import llama_cpp
import numpy as np

PROMPTS = [[2, 818, 5279, 529, 7001, 563]]  # <bos>The capital of France is


def main(path):
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=2, verbose=False)
    cases = []
    for ids in PROMPTS:
        llm.reset()
        llm.eval(ids)
        row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        top = [[int(i), float(row[i])] for i in np.argsort(-row)[:10]]
        llm.reset()
        out = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(t)
            if len(out) >= 20:
                break
        cases.append({"prompt_ids": ids, "greedy_ids": out, "top_logits": top, "text": llm.detokenize(out).decode()})
    json.dump({"gguf": path.split("/")[-1], "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, greedy",
               "cases": cases}, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
