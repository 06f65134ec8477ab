"""Statistics of the words of a text: the original's diversity (mapalign.diversity) and the length in words."""
from mapalign.diversity import diversity_of
from mapalign.values.kinds import scorer_kind


@scorer_kind("diversity", model_free=True)
def diversity(spec, **_):
    """Distinct n-gram ratio of each full text (mapalign.diversity.diversity_of)."""
    def run(prompts, continuations, full_texts, progress):
        return [diversity_of(t) for t in full_texts]
    return run, None


@scorer_kind("length", model_free=True)
def length(spec, **_):
    """Number of whitespace-separated words of each continuation."""
    def run(prompts, continuations, full_texts, progress):
        return [len(c.split()) for c in continuations]
    return run, None
