"""Python values: `spec.fn(prompts, continuations)` (values.register_value, rm:FOLDER heads), called in
batches of the value's batch_size."""
import numpy as np

from mapalign.values.batching import batches
from mapalign.values.kinds import scorer_kind


@scorer_kind("python")
def python(spec, batch_size, **_):
    """Calls spec.fn on slices of batch_size pairs; each call must return one float per pair."""
    def run(prompts, continuations, full_texts, progress):
        out = []
        for start in batches(list(range(len(prompts))), batch_size, progress, spec.name):
            stop = start + batch_size
            part = np.asarray(spec.fn(prompts[start:stop], continuations[start:stop]), dtype=np.float64).reshape(-1)
            if part.shape[0] != len(prompts[start:stop]):
                raise ValueError(f"plugin value {spec.name!r} returned {part.shape[0]} scores for "
                                 f"{len(prompts[start:stop])} texts; it must return one float per text")
            out.append(part)
        return np.concatenate(out)
    return run, getattr(spec.fn, "__module__", None)
