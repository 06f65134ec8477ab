"""Kinds of value scorer: how a value's number is computed (a sequence classifier, an embedder, a causal LM, a
lexicon, a Python function, ...). A ValueSpec names its kind; load_scorer calls the kind's builder.

A kind is one registration: a builder decorated with `scorer_kind` in any module of this folder (each is
imported here, so its kinds exist as soon as mapalign.values is imported) or in a plugin file:

    from mapalign import values

    @values.scorer_kind("char_count")                      # model_free=True: no GPU needed in the pipeline
    def char_count(spec, batch_size, **_):
        def run(prompts, continuations, full_texts, progress):
            return [len(c) for c in continuations]
        return run, None                                   # (run, where the model came from)

    values.register_value(values.ValueSpec("chars", None, "continuation", "count", kind="char_count"))

A builder is called as builder(spec, location=, device=, batch_size=, basemodel=, dtype=, hint=) and returns
(run, model_location). location: the model the value loads (values.model_path_for); basemodel: the
perplexity base model (a name or a (model, tokenizer) pair); hint: text to append to a model-not-found
error (how to point the value at a local copy). run(prompts, continuations, full_texts, progress) returns
one float per text; full_texts is None unless the value's input contract is "full_text".

Importing this package is cheap: builders import torch / transformers when called.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Kind:
    """A registered kind. torch: run is called under torch.no_grad(). model_free: scored without a neural
    model, so the pipeline runs its reward jobs on a CPU node."""
    name: str
    build: Callable
    torch: bool = False
    model_free: bool = False


KINDS = {}    # kind name -> Kind
MODELS = {}   # loaded models shared between scorers: key -> (model, tokenizer, source)


def scorer_kind(name, torch=False, model_free=False):
    """Decorator registering `builder` as the scorer builder of kind `name` (see the module docstring).
    Registering a name twice is refused unless it is the same function (a module imported again)."""
    def register(builder):
        old = KINDS.get(name)
        if old is not None and (old.build.__module__, old.build.__qualname__) != \
                (builder.__module__, builder.__qualname__):
            raise ValueError(f"scorer kind {name!r} is already registered (by {old.build.__module__}."
                             f"{old.build.__qualname__})")
        KINDS[name] = Kind(name, builder, torch=torch, model_free=model_free)
        return builder
    return register


def load_model(model_class, location, device, dtype, what, hint=""):
    """(model, tokenizer, source) of a transformers `model_class` (e.g. "AutoModel"), loaded once per
    process through models.load_pretrained and shared by every scorer that asks for the same model."""
    from mapalign import models
    device = device or models.default_device()
    key = (model_class, location, device, str(dtype))
    if key not in MODELS:
        MODELS[key] = models.load_pretrained(location, model_class, device=device, dtype=dtype, what=what, hint=hint)
    return MODELS[key]


# Every module in this folder defines kinds: import them all (in name order) so their decorators run.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
