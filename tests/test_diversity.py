"""diversity.py: the original diversity formula and NLTK-compatible tokenisation, checked by hand and
against the values stored in the original project's reference files."""
import json
import os

import numpy as np
import pytest

from mapalign import diversity
from mapalign import values
from conftest import LLAMA_FILE, OPT_FILE, needs_reference


def test_diversity_formula_by_hand():
    # tokens a b a b: bigrams 2 distinct / (3 + 1), trigrams 2 / (2 + 1), 4-grams 1 / (1 + 1)
    assert diversity.diversity_of("a b a b") == pytest.approx(2 / 4 * 2 / 3 * 1 / 2)
    assert diversity.diversity_of("only three words") == 0.0
    # through the registry: the value scores prompt + continuation
    scores = values.score("diversity", ["a b"], ["a b"])
    assert scores[0] == pytest.approx(2 / 4 * 2 / 3 * 1 / 2)


@pytest.mark.parametrize("text, tokens", [
    ("Don't stop. Mr. Smith went home.", ["Do", "n't", "stop", ".", "Mr.", "Smith", "went", "home", "."]),
    ('He said "no" (twice), e.g. today!', ["He", "said", "``", "no", "''", "(", "twice", ")", ",", "e.g", ".",
                                            "today", "!"]),
    ("I cannot go... Really?", ["I", "can", "not", "go", "...", "Really", "?"]),
    ("1. Pen Swap. Swap pens", ["1", ".", "Pen", "Swap", ".", "Swap", "pens"]),
])
def test_word_tokenize_follows_nltk_conventions(text, tokens):
    assert diversity.word_tokenize(text) == tokens


@needs_reference
@pytest.mark.parametrize("path", [LLAMA_FILE, OPT_FILE])
def test_diversity_matches_reference(path):
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    ours = np.array([diversity.diversity_of(r["generated"]) for r in records])
    stored = np.array([r["diversity"] for r in records])
    agree = np.mean(np.abs(ours - stored) <= 1e-9)
    assert agree >= 0.995, f"diversity agrees with the stored values on {agree:.4f} of {os.path.basename(path)}"
    assert np.max(np.abs(ours - stored)) < 0.1
