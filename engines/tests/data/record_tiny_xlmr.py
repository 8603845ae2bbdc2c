"""Records the reference for engines/tests/embedding_xlmr.rs, once, in a throwaway venv:

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers safetensors
    /tmp/refvenv/bin/python engines/tests/data/record_tiny_xlmr.py

It writes a tiny random-weight XLM-RoBERTa encoder as a sentence-transformers directory
(engines/tests/data/tiny-xlmr/: config.json, model.safetensors, a WordLevel tokenizer.json,
modules.json, 1_Pooling/config.json with CLS pooling, then Normalize) and, in
tiny_xlmr_reference.json, what transformers' XLMRobertaModel computes for a few token-id
sequences: the CLS state of each sequence alone and of the same sequences batched with right
padding, L2-normalised as sentence-transformers' Normalize module does.
"""
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import XLMRobertaConfig, XLMRobertaModel

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "tiny-xlmr")
os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)

torch.manual_seed(20261206)
vocab = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]
cfg = XLMRobertaConfig(
    vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
    bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu",
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
model = XLMRobertaModel(cfg, add_pooling_layer=False).eval()
# Random weights well away from the initialiser's near-zero biases, so every term matters.
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.2)
cfg_dict = cfg.to_dict()
cfg_dict["architectures"] = ["XLMRobertaModel"]
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg_dict, f, indent=2, sort_keys=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))

tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
tok.save(os.path.join(out, "tokenizer.json"))
with open(os.path.join(out, "modules.json"), "w") as f:
    json.dump([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], f, indent=2)
with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, f, indent=2)
with open(os.path.join(out, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": 32, "do_lower_case": False}, f)

texts = ["w1 w2 w3", "w10", "w5 w6 w7 w8 w9 w11 w12 w13 w14 w15", "w40 w41 w42 w43"]
seqs = [tok.encode(t).ids for t in texts]


def cls_normalised(hidden):
    v = hidden[:, 0]
    return torch.nn.functional.normalize(v, p=2, dim=1)


with torch.no_grad():
    single = [cls_normalised(model(input_ids=torch.tensor([s])).last_hidden_state)[0].tolist() for s in seqs]
    longest = max(len(s) for s in seqs)
    ids = torch.tensor([s + [1] * (longest - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in seqs])
    batched = cls_normalised(model(input_ids=ids, attention_mask=mask).last_hidden_state).tolist()

with open(os.path.join(here, "tiny_xlmr_reference.json"), "w") as f:
    json.dump({"recorded_with": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
               "texts": texts, "ids": seqs, "single": single, "batched": batched}, f, indent=1)
print("wrote", out, "and tiny_xlmr_reference.json")
