"""Rule-based and linear text scorers that need no neural model: VADER sentiment and alt-profanity-check."""
import numpy as np

from mapalign.values.kinds import scorer_kind


@scorer_kind("vader", model_free=True)
def vader(spec, **_):
    """VADER compound sentiment of each continuation, in [-1, 1]."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    analyzer = SentimentIntensityAnalyzer()

    def run(prompts, continuations, full_texts, progress):
        return [analyzer.polarity_scores(c)["compound"] for c in continuations]
    return run, "vaderSentiment"


@scorer_kind("profanity", model_free=True)
def profanity(spec, **_):
    """1 - P(profane) of each continuation under alt-profanity-check, in [0, 1]."""
    from profanity_check import predict_prob  # import loads the model (~1.5 s)

    def run(prompts, continuations, full_texts, progress):
        # One call for all texts: per-text calls are ~60x slower.
        return 1.0 - np.asarray(predict_prob(list(continuations)), dtype=np.float64)
    return run, "alt-profanity-check"
