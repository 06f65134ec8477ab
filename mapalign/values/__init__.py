"""Human values and their scorers: the one place that says which values exist and how each is scored.

Importing this package is cheap (no torch): scorers import their heavy dependencies when first used.

    scorer = values.load_scorer("humor")            # loaded once per process
    scores = scorer(prompts, continuations)         # np.ndarray float64, one score per pair
    scorers = values.load_scorers(["humor", "length"])   # name -> scorer, for a value list
    values.score("diversity", prompts, continuations)
    values.REGISTRY["gpt2-helpful"]                 # ValueSpec: model, input contract, score type, kind, ...
Models of hub values can be pointed elsewhere (a local folder) with the model_path= argument,
values.set_model_path(value, path) or the environment variable MAP_MODEL_<VALUE>
(e.g. MAP_MODEL_GPT2_HELPFUL). Custom values: register_value (Python function),
register_reward_model (a sequence-classification folder), load_plugins("my_values.py") or
$MAP_PLUGINS; a new kind of scorer: the scorer_kind decorator (see mapalign.values.kinds).

Layout: registry.py (names, specs, task lists, plugins, rm:FOLDER values, fingerprints), kinds/ (one module
per kind of scorer: classifier, embedder, causal_lm, lexicon, textstats, plugin), batching.py (tokenisation
shared by the model kinds), scorer.py (load_scorer / load_scorers / score and the caches).
"""
from mapalign.values.kinds import KINDS, MODELS as _MODELS, scorer_kind
from mapalign.values.kinds.classifier import PAIR_QUESTION
from mapalign.values.kinds.embedder import MINILM_PACKAGE, MINILM_PIP, minilm_folder
from mapalign.values.registry import (
    ALL_SUPPORTED_VALUES, DISPLAY_NAMES, INPUT_CONTRACTS, MAINTAINED_VALUES, REGISTRY, RM_PREFIX, SCORE_TYPES,
    TASK_NAME, TASK_VALUES, ValueSpec, _MODEL_OVERRIDES, _SCORERS, display_name, expand_value_list, get_spec,
    list_values, load_plugins, model_env_var, model_path_for, register_reward_model, register_value, rm_heads,
    scorer_fingerprint, set_model_path, spec_dict)
from mapalign.values.scorer import Scorer, clear_cache, full_texts_of, load_scorer, load_scorers, score

__all__ = [  # the public API (also what user plugins use); _MODELS, _MODEL_OVERRIDES, _SCORERS: caches for tests
    "ALL_SUPPORTED_VALUES", "DISPLAY_NAMES", "INPUT_CONTRACTS", "KINDS", "MAINTAINED_VALUES", "MINILM_PACKAGE",
    "MINILM_PIP", "PAIR_QUESTION", "REGISTRY", "RM_PREFIX", "SCORE_TYPES", "Scorer", "TASK_NAME", "TASK_VALUES",
    "ValueSpec", "_MODELS", "_MODEL_OVERRIDES", "_SCORERS", "clear_cache", "display_name", "expand_value_list",
    "full_texts_of", "get_spec", "list_values", "load_plugins", "load_scorer", "load_scorers", "minilm_folder",
    "model_env_var", "model_path_for", "register_reward_model", "register_value", "rm_heads", "score",
    "scorer_fingerprint", "scorer_kind", "set_model_path", "spec_dict"]
