"""Model soups: weighted parameter averages of fine-tuned models, streamed tensor by tensor.

    # the original DPO-Soup: (1 − α)·helpful-only + α·harmless-only DPO model
    python getDPOsoup.py soup --basemodel_name=smollm2-135m --sample_size=2000 --beta=0.1 --harmless_lambda=0.3
    # any weighted soup of N full models (weights sum to 1) or of N LoRA adapters
    python getDPOsoup.py weighted_soup --model_paths=modelsDPO/a,modelsDPO/b,modelsDPO/c \
        --weights=0.2,0.3,0.5 --save_path=modelsDPO/soup/abc

Full models: every tensor becomes Σ_i w_i·θ_i (computed in float32, stored in the first model's
dtype); the weights must sum to 1, so a shared base is kept. Only one output shard plus one tensor
per input is in memory at a time, so memory stays at about one shard, not N models.

LoRA adapters (folders with adapter_config.json; for trainer outputs the `adapter/` subfolder): the
soup of the merged models θ0 + Σ_i w_i·s_i·B_i·A_i is represented exactly by concatenating the
adapters along the rank dimension, A = [A_1; ...; A_N] and B = [w_1·s_1·B_1, ..., w_N·s_N·B_N] with
scaling 1 (s_i = lora_alpha_i / r_i, or / √r_i with rsLoRA), so the result is again a LoRA adapter of
rank Σ r_i. Averaging the A and B factors separately would not give the averaged update. With LoRA the
weights need not sum to 1 (they weight the updates; a sum ≠ 1 is task arithmetic).
"""
import json
import os
import shutil
import tempfile

from mapalign import arguments
from mapalign import models
from mapalign import records
from mapalign import training
from mapalign.errors import ExistsError, InputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SKIP_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", training.METADATA_FILE,
              "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "training_args.bin"}
ADAPTER_FILE = "adapter_model.safetensors"


class SoupError(InputError):
    """The models cannot be souped; the message names the mismatch and the fix."""


# ---------------------------------------------------------------------------------------------
# Lazy tensor access

class TensorSource:
    """Read one model folder's tensors one at a time (safetensors shards, or a .bin through mmap)."""

    def __init__(self, folder, weights_file=None):
        from safetensors import safe_open
        self.folder = folder
        self._handles, self._where = {}, {}
        index = os.path.join(folder, "model.safetensors.index.json")
        if weights_file is not None:
            files = [weights_file]
        elif os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            files = ["model.safetensors"]
        elif os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
            files = ["pytorch_model.bin"]
        else:
            raise SoupError(f"{folder!r} holds no model.safetensors(.index.json) or pytorch_model.bin; pass folders "
                            "written by save_pretrained.")
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".safetensors"):
                handle = safe_open(path, framework="pt")
                keys = list(handle.keys())
            else:
                import torch
                handle = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                keys = list(handle.keys())
            self._handles[name] = handle
            for key in keys:
                self._where[key] = name

    def keys(self):
        return list(self._where)

    def get(self, key):
        handle = self._handles[self._where[key]]
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]


class ShardWriter:
    """Write tensors into safetensors shards of at most `max_shard_bytes`, plus an index when > 1."""

    def __init__(self, folder, prefix="model", max_shard_bytes=2 * 1024 ** 3):
        self.folder, self.prefix, self.max = folder, prefix, int(max_shard_bytes)
        self.current, self.size, self.shards, self.weight_map = {}, 0, [], {}

    def add(self, key, tensor):
        nbytes = tensor.numel() * tensor.element_size()
        if self.current and self.size + nbytes > self.max:
            self._flush()
        self.current[key] = tensor.contiguous()
        self.size += nbytes

    def _flush(self):
        from safetensors.torch import save_file
        name = f"{self.prefix}-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.current, os.path.join(self.folder, name), metadata={"format": "pt"})
        self.shards.append(name)
        self.weight_map.update({k: name for k in self.current})
        self.current, self.size = {}, 0

    def close(self):
        if self.current or not self.shards:
            self._flush()
        total = len(self.shards)
        if total == 1:
            os.replace(os.path.join(self.folder, self.shards[0]),
                       os.path.join(self.folder, f"{self.prefix}.safetensors"))
            return
        renamed = {}
        for i, name in enumerate(self.shards, 1):
            final = f"{self.prefix}-{i:05d}-of-{total:05d}.safetensors"
            os.replace(os.path.join(self.folder, name), os.path.join(self.folder, final))
            renamed[name] = final
        index = {"metadata": {}, "weight_map": {k: renamed[v] for k, v in sorted(self.weight_map.items())}}
        with open(os.path.join(self.folder, f"{self.prefix}.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)


# ---------------------------------------------------------------------------------------------
# Soups

def _check_weights(model_paths, weights, need_unit_sum):
    paths = arguments.str_list(model_paths, "model_paths")
    w = arguments.float_list(weights, "weights")
    if len(paths) != len(w):
        raise SoupError(f"{len(paths)} models but {len(w)} weights; give one weight per model")
    if need_unit_sum and abs(sum(w) - 1.0) > 1e-6:
        raise SoupError(f"full-model soup weights must sum to 1 (they sum to {sum(w):.6g}); otherwise the shared "
                        "base weights get rescaled. Normalise them, or soup LoRA adapters (--lora=True).")
    if all(x == 0 for x in w):
        raise SoupError("all soup weights are 0")
    return paths, w


def _copy_side_files(src, dst):
    """Config, generation config, tokenizer and chat template of `src` (not weights or metadata)."""
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if os.path.isfile(path) and name not in SKIP_FILES and not name.endswith(WEIGHT_SUFFIXES) \
                and not name.startswith("."):
            shutil.copy2(path, os.path.join(dst, name))


def _prepare_output(save_path, overwrite):
    if os.path.exists(save_path) and not overwrite:
        raise ExistsError(f"{save_path!r} exists; pass --overwrite=True to replace it or choose another "
                          "--save_path")
    parent = os.path.dirname(os.path.abspath(save_path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(os.path.normpath(save_path))}-")


def _finish_output(tmp, save_path, metadata):
    records.save_json_atomic(metadata, os.path.join(tmp, training.METADATA_FILE), indent=2)
    if os.path.exists(save_path):
        shutil.rmtree(save_path)
    os.replace(tmp, save_path)
    return save_path


def first_mismatch(sources):
    """(source, up to 5 tensor names in one but not both) of the first TensorSource whose tensor names differ
    from the first source's; None when all hold the same names."""
    keys = set(sources[0].keys())
    for src in sources[1:]:
        if set(src.keys()) != keys:
            return src, sorted(keys ^ set(src.keys()))[:5]
    return None


def soup_full_models(paths, weights, tmp, max_shard_bytes):
    import torch
    sources = [TensorSource(p) for p in paths]
    keys = sources[0].keys()
    odd = first_mismatch(sources)
    if odd:
        src, diff = odd
        raise SoupError(f"{src.folder!r} and {paths[0]!r} hold different tensors (e.g. {diff}); soups need models "
                        "of the same architecture fine-tuned from the same base.")
    writer = ShardWriter(tmp, "model", max_shard_bytes)
    for key in keys:
        first = sources[0].get(key)
        if not first.is_floating_point():
            for src in sources[1:]:
                if not torch.equal(src.get(key), first):
                    raise SoupError(f"non-float tensor {key!r} differs between {paths[0]!r} and {src.folder!r}")
            writer.add(key, first)
            continue
        total = None
        for src, w in zip(sources, weights):
            if w == 0.0:  # skipped, so a weight of 0/1 returns the other model exactly
                continue
            t = first if src is sources[0] else src.get(key)
            if t.shape != first.shape:
                raise SoupError(f"tensor {key!r} has shape {tuple(t.shape)} in {src.folder!r} but "
                                f"{tuple(first.shape)} in {paths[0]!r}")
            term = t.to(torch.float32) if w == 1.0 else t.to(torch.float32) * w
            total = term if total is None else total + term
        writer.add(key, total.to(first.dtype))
    writer.close()


def _adapter_dir(path):
    for folder in (path, os.path.join(path, "adapter")):
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            return folder
    raise SoupError(f"{path!r} holds no LoRA adapter (adapter_config.json, directly or in adapter/); pass adapter "
                    "folders with --lora=True, or full models with --lora=False.")


def soup_lora_adapters(paths, weights, tmp):
    """Exact soup of LoRA adapters by rank concatenation (module docstring)."""
    import math

    import torch
    folders = [_adapter_dir(p) for p in paths]
    configs = []
    for folder in folders:
        with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
            configs.append(json.load(f))
    for folder, cfg in zip(folders, configs):
        if cfg.get("peft_type") != "LORA":
            raise SoupError(f"{folder!r} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be souped")
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora"):
            raise SoupError(f"{folder!r} uses rank/alpha patterns or DoRA, which this soup does not support; "
                            "merge the adapters into full models and soup those instead.")
    if len({c.get("base_model_name_or_path") for c in configs}) > 1:
        raise SoupError(f"the adapters were trained on different base models "
                        f"({sorted({str(c.get('base_model_name_or_path')) for c in configs})})")
    scales = [c["lora_alpha"] / (math.sqrt(c["r"]) if c.get("use_rslora") else c["r"]) for c in configs]
    sources = [TensorSource(f, ADAPTER_FILE) for f in folders]
    keys = sources[0].keys()
    odd = first_mismatch(sources)
    if odd:
        src, diff = odd
        raise SoupError(f"adapters {src.folder!r} and {folders[0]!r} adapt different modules (e.g. {diff}); "
                        "train them with the same target modules.")
    used = [i for i, w in enumerate(weights) if w != 0.0]
    tensors = {}
    for key in keys:
        parts = [sources[i].get(key) for i in used]
        if ".lora_A." in key or ".lora_embedding_A" in key:
            tensors[key] = torch.cat(parts, dim=0)  # (r, in) blocks stacked along the rank
        elif ".lora_B." in key or ".lora_embedding_B" in key:
            tensors[key] = torch.cat([p.to(torch.float32) * (weights[i] * scales[i])
                                      for p, i in zip(parts, used)], dim=1).to(parts[0].dtype)
        else:  # modules_to_save and biases: a plain weighted sum
            tensors[key] = sum(p.to(torch.float32) * weights[i] for p, i in zip(parts, used)).to(parts[0].dtype)
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(tmp, ADAPTER_FILE), metadata={"format": "pt"})
    rank = sum(configs[i]["r"] for i in used)
    config = dict(configs[0], r=rank, lora_alpha=rank, use_rslora=False)
    with open(os.path.join(tmp, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    for name in os.listdir(paths[0]):  # the tokenizer comes from the first model, as in the original
        if name.startswith(("tokenizer", "special_tokens_map", "chat_template")):
            shutil.copy2(os.path.join(paths[0], name), os.path.join(tmp, name))
    return rank


def weighted_soup(model_paths, weights, save_path, lora=False, max_shard_size_gb=2.0, overwrite=False):
    """Write the weighted soup of N models (or N LoRA adapters) to `save_path`.

    Args:
        model_paths: folders (comma-separated or a list); config and tokenizer come from the first.
        weights: one weight per folder; must sum to 1 for full models.
        save_path: output folder (written to a temporary folder and renamed into place).
        lora: soup the LoRA adapters (each folder or its adapter/ subfolder) instead of full weights.
        max_shard_size_gb: output shard size for full models.
        overwrite: replace an existing save_path.
    Returns:
        save_path (with map_training.json listing sources and weights).
    """
    paths, w = _check_weights(model_paths, weights, need_unit_sum=not lora)
    for p in paths:
        if not os.path.isdir(p):
            raise SoupError(f"model folder not found: {p!r}")
    tmp = _prepare_output(save_path, overwrite)
    try:
        metadata = {"method": "model soup", "kind": "lora" if lora else "full", "sources": paths, "weights": w}
        if lora:
            metadata["rank"] = soup_lora_adapters(paths, w, tmp)
            metadata["scaling"] = 1.0
        else:
            _copy_side_files(paths[0], tmp)
            soup_full_models(paths, w, tmp, max_shard_size_gb * 1024 ** 3)
        return _finish_output(tmp, save_path, metadata)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def soup(basemodel_name, sample_size, beta, harmless_lambda, save_path=None, lora=False, overwrite=False):
    """The original DPO-Soup: (1 − α)·θ_helpful + α·θ_harmless of the p = 0.0 and p = 1.0 DPO models.

    Args:
        basemodel_name: base model of the DPO runs (as passed to trainDPO.train_dpo --model_name).
        sample_size, beta: as in trainDPO.py; they locate modelsDPO/{model}-{n}sample-{β}beta-{p}harmless.
        harmless_lambda: interpolation factor α in [0, 1].
        save_path: default modelsDPO/soup/{model}-{n}sample-{β}beta-{α}soup, as the original.
        lora: soup the two runs' LoRA adapters instead of their full weights.
    Returns:
        the save_path.
    """
    alpha = float(harmless_lambda)
    if not 0.0 <= alpha <= 1.0:
        raise SoupError(f"--harmless_lambda must lie in [0, 1]; got {harmless_lambda!r}")
    stem = f"{models.model_short_name(basemodel_name)}-{int(sample_size)}sample-{float(beta)}beta"
    helpful, harmless = (os.path.join("modelsDPO", f"{stem}-{p}harmless") for p in (0.0, 1.0))
    for path, p in ((helpful, 0.0), (harmless, 1.0)):
        if not os.path.isdir(path):
            raise SoupError(f"DPO model {path!r} not found; train it first: python trainDPO.py train_dpo "
                            f"--model_name={basemodel_name} --sample_size={sample_size} --beta={beta} "
                            f"--harmless_ratio={p}")
    save_path = save_path or os.path.join("modelsDPO", "soup", f"{stem}-{alpha}soup")
    return weighted_soup([helpful, harmless], [1.0 - alpha, alpha], save_path, lora=lora, overwrite=overwrite)
