"""Loading and calling value scorers: the one scorer loader (load_scorer for one value, load_scorers for a
list), the Scorer wrapper that checks inputs and outputs, and the caches.

    scorer = values.load_scorer("humor")            # loaded once per process
    scores = scorer(prompts, continuations)         # np.ndarray float64, one score per pair
    scorers = values.load_scorers(["humor", "length"], device="cuda")   # name -> Scorer
    values.score("diversity", prompts, continuations)
"""
import numpy as np

from mapalign.errors import InputError
from mapalign.values.kinds import KINDS, MODELS
from mapalign.values.registry import _SCORERS, get_spec, model_path_for, override_hint


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
        if KINDS[self.spec.kind].torch:
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
        run, where = KINDS[spec.kind].build(spec, location=location, device=device, batch_size=batch_size,
                                            basemodel=base, dtype=dtype, hint=override_hint(spec))
        _SCORERS[key] = Scorer(spec, run, where, progress)
    scorer = _SCORERS[key]
    scorer.progress = progress
    return scorer


def score(value, prompts, continuations, full_texts=None, progress=False, **kw):
    """Score one value: load_scorer(value, **kw)(prompts, continuations) -> float64 array (n,)."""
    return load_scorer(value, **kw)(prompts, continuations, full_texts=full_texts, progress=progress)


def load_scorers(value_names, device=None, basemodel_for_perplexity=None, scorers=None):
    """Scorers for `value_names`: name -> scorer(prompts, continuations) -> float64 (n,), each from
    load_scorer (cached per process). Entries of `scorers` (a dict) are used as given (custom or
    pre-loaded scorers)."""
    scorers = dict(scorers or {})
    for name in value_names:
        if name not in scorers:
            scorers[name] = load_scorer(name, device=device, basemodel_for_perplexity=basemodel_for_perplexity)
    return scorers


def clear_cache():
    """Forget loaded scorers and models (frees memory; the next load_scorer reloads)."""
    _SCORERS.clear()
    MODELS.clear()
