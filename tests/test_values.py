"""mapalign.values scorers: every hub value through its real loading path on tiny local models, the
offline scorers for real, plugins and custom reward models (diversity: tests/test_diversity.py)."""
import subprocess
import sys

import numpy as np
import pytest

from mapalign import tiny
from mapalign import values
from conftest import ROOT

PROMPTS = ["How do I bake bread at home without a mixer?", "Tell me a joke about cats and dogs.", "hi",
           "Please explain how vaccines work in simple words.", "What is the best way to learn a new language?"]
CONTINUATIONS = ["Use a hot oven, a long rise and patience; knead by hand for ten minutes.",
                 "Why did the cat sit on the computer? To keep an eye on the mouse!", "",
                 "Vaccines show your immune system a harmless piece of a germ so it learns to fight it.",
                 "Practice every day."]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_values")
    return {
        "pair": tiny.tiny_sequence_classifier(str(root / "gpt2_rm"), num_labels=1, arch="gpt2"),
        "two_labels": tiny.tiny_sequence_classifier(str(root / "bert_cls"), num_labels=2, arch="bert"),
        "three_outputs": tiny.tiny_sequence_classifier(str(root / "gpt2_3"), num_labels=3, arch="gpt2", seed=1),
        "encoder": tiny.tiny_bert_encoder(str(root / "encoder")),
        "lm": tiny.tiny_causal_lm(str(root / "lm")),
    }


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Tests register values and overrides; put the registry back afterwards."""
    saved, overrides = dict(values.REGISTRY), dict(values._MODEL_OVERRIDES)
    yield
    values.REGISTRY.clear()
    values.REGISTRY.update(saved)
    values._MODEL_OVERRIDES.clear()
    values._MODEL_OVERRIDES.update(overrides)
    values._SCORERS.clear()


def _load(path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


def _one_logits(model, tokenizer, first, second=None):
    import torch
    with torch.no_grad():
        return model(**tokenizer(first, second, return_tensors="pt")).logits[0].double().numpy()


def _batched_equals_one_at_a_time(value, **kw):
    batched = values.load_scorer(value, batch_size=4, **kw)(PROMPTS, CONTINUATIONS)
    single = values.load_scorer(value, batch_size=1, **kw)(PROMPTS, CONTINUATIONS)
    assert batched.dtype == np.float64 and batched.shape == (len(PROMPTS),)
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)
    return batched


# --- registry --------------------------------------------------------------------------------

def test_registry_covers_task_values_with_original_models():
    for names in values.TASK_VALUES.values():
        for name in names:
            assert name in values.REGISTRY
    expected = {
        "humor": ("mohameddhiab/humor-no-humor", "full_text", "logit", 1),
        "positive": ("lvwerra/distilbert-imdb", "full_text", "probability", 1),
        "gpt2-helpful": ("Ray2333/gpt2-large-helpful-reward_model", "pair", "logit", 0),
        "gpt2-harmless": ("Ray2333/gpt2-large-harmless-reward_model", "pair", "logit", 0),
        "coherence": ("princeton-nlp/sup-simcse-bert-base-uncased", "prompt_and_continuation", "cosine", 0),
        "harmless": ("OpenAssistant/reward-model-deberta-v3-large-v2", "full_text", "log_probability", 0),
    }
    for name, (model_id, contract, score_type, label) in expected.items():
        spec = values.REGISTRY[name]
        assert (spec.model_id, spec.input_contract, spec.score_type, spec.label_index) == \
            (model_id, contract, score_type, label), name
        assert not spec.offline
    for name in ("sentiment", "harmlessness", "coherence-minilm", "perplexity", "diversity", "length"):
        assert values.REGISTRY[name].offline and values.REGISTRY[name].model_id is None
    assert values.REGISTRY["perplexity"].needs_basemodel
    assert values.display_name("gpt2-helpful") == "Helpfulness"
    assert values.display_name("coherence-minilm") == "Coherence (MiniLM)"


def test_unknown_value_lists_registered_values():
    with pytest.raises(KeyError, match="unknown value 'funny'.*humor.*gpt2-helpful"):
        values.load_scorer("funny")


def test_uncached_hub_value_names_model_and_override(monkeypatch, empty_hub_cache):
    monkeypatch.delenv("MAP_MODEL_HUMOR", raising=False)
    from mapalign import models
    assert models.hub_snapshot("mohameddhiab/humor-no-humor") is None
    with pytest.raises(models.ModelNotAvailableError) as err:
        values.load_scorer("humor")
    assert "mohameddhiab/humor-no-humor" in str(err.value) and "MAP_MODEL_HUMOR" in str(err.value)


def test_import_is_cheap():
    code = "import sys; from mapalign import values; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_mismatched_inputs_are_refused():
    scorer = values.load_scorer("length")
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        scorer(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="list of strings"):
        scorer("a", "b")
    assert scorer([], []).shape == (0,)


# --- original hub values on tiny models through the real loading path ---------------------------

def test_gpt2_pair_reward_batched_matches_original_per_sample_formula(tiny_models, monkeypatch):
    monkeypatch.setenv("MAP_MODEL_GPT2_HELPFUL", tiny_models["pair"])
    scores = _batched_equals_one_at_a_time("gpt2-helpful")
    model, tokenizer = _load(tiny_models["pair"])
    for p, c, s in zip(PROMPTS, CONTINUATIONS, scores):
        q = "\n\nHuman: " + p + " \n\nAssistant:"
        if c:  # the original: tokenizer(q, a) one sample at a time, raw scalar logit
            assert s == pytest.approx(_one_logits(model, tokenizer, q, c)[0], abs=1e-5)
    assert len(set(np.round(scores, 6))) == len(scores)
    values.clear_cache()
    again = values.load_scorer("gpt2-helpful", batch_size=4)(PROMPTS, CONTINUATIONS)
    np.testing.assert_array_equal(scores, again)  # deterministic, also after a reload


def test_gpt2_harmless_uses_set_model_path(tiny_models):
    values.set_model_path("gpt2-harmless", tiny_models["pair"])
    scorer = values.load_scorer("gpt2-harmless")
    assert scorer.model_location == tiny_models["pair"]
    _batched_equals_one_at_a_time("gpt2-harmless")


def test_humor_is_raw_logit_of_class_one(tiny_models):
    scores = _batched_equals_one_at_a_time("humor", model_path=tiny_models["two_labels"])
    model, tokenizer = _load(tiny_models["two_labels"])
    texts = values.full_texts_of(PROMPTS, CONTINUATIONS)
    assert texts[0] == PROMPTS[0] + " " + CONTINUATIONS[0] and texts[2] == "hi"
    for text, s in zip(texts, scores):
        assert s == pytest.approx(_one_logits(model, tokenizer, text)[1], abs=1e-5)


def test_positive_is_softmax_probability_of_class_one(tiny_models):
    scores = _batched_equals_one_at_a_time("positive", model_path=tiny_models["two_labels"])
    model, tokenizer = _load(tiny_models["two_labels"])
    for text, s in zip(values.full_texts_of(PROMPTS, CONTINUATIONS), scores):
        logits = _one_logits(model, tokenizer, text)
        assert s == pytest.approx(np.exp(logits[1]) / np.exp(logits).sum(), abs=1e-6)
    assert np.all((scores > 0) & (scores < 1))


def test_full_texts_argument_is_used_verbatim(tiny_models):
    scorer = values.load_scorer("humor", model_path=tiny_models["two_labels"])
    generated = [p + "\n" + c for p, c in zip(PROMPTS, CONTINUATIONS)]
    model, tokenizer = _load(tiny_models["two_labels"])
    scores = scorer(PROMPTS, CONTINUATIONS, full_texts=generated)
    assert scores[0] == pytest.approx(_one_logits(model, tokenizer, generated[0])[1], abs=1e-5)


def test_legacy_harmless_is_log_sigmoid_of_logit(tiny_models):
    scores = _batched_equals_one_at_a_time("harmless", model_path=tiny_models["pair"])
    model, tokenizer = _load(tiny_models["pair"])
    for text, s in zip(values.full_texts_of(PROMPTS, CONTINUATIONS), scores):
        if text:
            logit = _one_logits(model, tokenizer, text)[0]
            assert s == pytest.approx(-np.log1p(np.exp(-logit)), abs=1e-6)
    assert np.all(scores < 0)


def test_coherence_is_cosine_of_pooler_outputs(tiny_models):
    import torch
    from transformers import AutoModel, AutoTokenizer
    scores = _batched_equals_one_at_a_time("coherence", model_path=tiny_models["encoder"])
    model = AutoModel.from_pretrained(tiny_models["encoder"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["encoder"])
    with torch.no_grad():
        a = model(**tokenizer(PROMPTS[0], return_tensors="pt")).pooler_output[0]
        b = model(**tokenizer(CONTINUATIONS[0], return_tensors="pt")).pooler_output[0]
    assert scores[0] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)
    assert np.all(np.abs(scores) <= 1 + 1e-9)


def test_perplexity_batched_equals_original_per_text_loss(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    scores = _batched_equals_one_at_a_time("perplexity", basemodel_for_perplexity=tiny_models["lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["lm"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["lm"])
    for text, s in zip(values.full_texts_of(PROMPTS, CONTINUATIONS), scores):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        if ids.shape[1] >= 2:  # the original: loss with labels = input ids, one text at a time
            with torch.no_grad():
                assert s == pytest.approx(-model(input_ids=ids, labels=ids).loss.item(), abs=1e-5)
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)


def test_perplexity_accepts_loaded_model_and_defaults_to_smollm2(tiny_models, monkeypatch):
    from mapalign import models
    model, tokenizer = models.load_model_and_tokenizer(tiny_models["lm"], device="cpu")
    by_name = values.load_scorer("perplexity", basemodel_for_perplexity=tiny_models["lm"])(PROMPTS, CONTINUATIONS)
    by_object = values.load_scorer("perplexity", basemodel_for_perplexity=(model, tokenizer))(PROMPTS, CONTINUATIONS)
    np.testing.assert_allclose(by_name, by_object, atol=1e-6)
    asked = []

    def fake_loader(name, device=None, dtype=None, padding_side="left"):
        asked.append(name)
        return model, tokenizer
    monkeypatch.setattr(models, "load_model_and_tokenizer", fake_loader)
    values.load_scorer("perplexity", device="cpu", dtype="float32")
    assert asked == [models.DEFAULT_MODEL]


def test_scorers_and_models_are_cached(tiny_models):
    first = values.load_scorer("humor", model_path=tiny_models["two_labels"])
    assert values.load_scorer("humor", model_path=tiny_models["two_labels"]) is first
    n_models = len(values._MODELS)
    values.load_scorer("positive", model_path=tiny_models["two_labels"])  # same folder: model shared
    assert len(values._MODELS) == n_models


# --- offline scorers, for real -------------------------------------------------------------------

def test_sentiment_is_vader_compound_of_continuation():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    prompts = ["How was the movie?"] * 3
    conts = ["It was wonderful, I loved it!", "It was terrible and I hated it.", "It was a movie."]
    scores = values.score("sentiment", prompts, conts)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert scores[0] == SentimentIntensityAnalyzer().polarity_scores(conts[0])["compound"]


def test_harmlessness_is_one_minus_profanity_probability():
    from profanity_check import predict_prob
    conts = ["Have a lovely day, my friend.", "shut up you stupid fucking idiot"]
    scores = values.score("harmlessness", ["Say something."] * 2, conts)
    np.testing.assert_allclose(scores, 1 - predict_prob(conts))
    assert scores[0] > 0.8 > 0.2 > scores[1]


def test_coherence_minilm_ranks_paraphrase_above_unrelated_text():
    prompt = "How can I improve my sleep at night?"
    conts = ["Here are ways to sleep better at night: keep a regular bedtime and avoid screens.",
             "The stock market closed higher on Tuesday after strong bank earnings.", prompt]
    scores = values.score("coherence-minilm", [prompt] * 3, conts)
    assert scores[0] > scores[1] + 0.2
    assert scores[2] == pytest.approx(1.0, abs=1e-6)
    batched_vs_single = values.load_scorer("coherence-minilm", batch_size=1)([prompt] * 3, conts)
    np.testing.assert_allclose(scores, batched_vs_single, atol=1e-5)


def test_length_counts_whitespace_words_of_continuation():
    scores = values.score("length", ["a long prompt here", "x"], ["one two  three\nfour", ""])
    np.testing.assert_array_equal(scores, [4.0, 0.0])


# --- custom values ---------------------------------------------------------------------------------

def test_register_value_python_plugin():
    def politeness(prompts, continuations):
        return [float("please" in c.lower()) for c in continuations]
    spec = values.register_value("politeness", politeness, input_contract="continuation", description="1 if polite")
    assert spec.display_name == "Politeness" and "politeness" in values.list_values()
    np.testing.assert_array_equal(values.score("politeness", ["q", "q"], ["Please sit.", "Sit."]), [1.0, 0.0])
    with pytest.raises(ValueError, match="already registered"):
        values.register_value("politeness", politeness)
    values.register_value("broken", lambda p, c: [1.0], overwrite=True)
    with pytest.raises(ValueError, match="returned 1 scores for 2 texts"):
        values.score("broken", ["a", "b"], ["c", "d"])


def test_load_plugins_from_file_and_env(tmp_path, monkeypatch):
    plugin = tmp_path / "my_values.py"
    plugin.write_text("from mapalign import values\n"
                      "values.register_value('shouting', lambda p, c: [sum(ch.isupper() for ch in x) for x in c])\n")
    assert values.load_plugins(str(plugin)) == ["shouting"]
    np.testing.assert_array_equal(values.score("shouting", ["q"], ["HeLLo"]), [3.0])
    assert values.load_plugins(str(plugin)) == []  # imported once per process
    with pytest.raises(FileNotFoundError, match="plugin file not found"):
        values.load_plugins(str(tmp_path / "missing.py"))
    other = tmp_path / "env_values.py"
    other.write_text("from mapalign import values\nvalues.register_value('exclaims', lambda p, c: [x.count('!') for x in c])\n")
    monkeypatch.setenv("MAP_PLUGINS", str(other))
    assert "exclaims" in values.list_values()


def test_a_new_kind_of_scorer_is_one_registration(tmp_path):
    """A kind is one decorated builder (here in a plugin file): values of that kind load and score, a
    model-free kind goes to the pipeline's CPU jobs, and a second builder under the same name is refused."""
    from mapalign import pipeline
    plugin = tmp_path / "char_kind.py"
    plugin.write_text(
        "from mapalign import values\n"
        "@values.scorer_kind('char_count', model_free=True)\n"
        "def char_count(spec, **_):\n"
        "    return (lambda prompts, continuations, full_texts, progress: [len(c) for c in continuations]), None\n"
        "values.register_value(values.ValueSpec('chars', None, 'continuation', 'count', kind='char_count'))\n")
    try:
        assert values.load_plugins(str(plugin)) == ["chars"]
        np.testing.assert_array_equal(values.score("chars", ["q", "q"], ["abc", ""]), [3.0, 0.0])
        assert pipeline.scoring_kind("chars") == "cpu" and pipeline.scoring_kind("humor") == "scoring"
        with pytest.raises(ValueError, match="already registered"):
            values.scorer_kind("char_count")(lambda spec, **_: None)
    finally:
        values.KINDS.pop("char_count", None)
    with pytest.raises(ValueError, match="kind must be one of"):
        values.ValueSpec("x", None, "continuation", "count", kind="char_count")


def test_load_scorers_loads_a_value_list_and_keeps_given_scorers():
    mine = lambda p, c: [0.0] * len(c)  # noqa: E731
    scorers = values.load_scorers(["length", "sentiment"], scorers={"length": mine})
    assert scorers["length"] is mine and scorers["sentiment"] is values.load_scorer("sentiment")
    np.testing.assert_allclose(scorers["sentiment"](["q"], ["I love it"]),
                               values.score("sentiment", ["q"], ["I love it"]))


def test_register_reward_model_single_and_multi_output(tiny_models):
    names = values.register_reward_model("my-rm", tiny_models["two_labels"], input_contract="pair",
                                         score="probability", label_index=0)
    assert names == ["my-rm"]
    model, tokenizer = _load(tiny_models["two_labels"])
    q = "\n\nHuman: " + PROMPTS[0] + " \n\nAssistant:"
    logits = _one_logits(model, tokenizer, q, CONTINUATIONS[0])
    assert values.score("my-rm", PROMPTS[:1], CONTINUATIONS[:1])[0] == \
        pytest.approx(np.exp(logits[0]) / np.exp(logits).sum(), abs=1e-6)

    names = values.register_reward_model("ignored", tiny_models["three_outputs"],
                                         output_names=["helpful-r", "honest-r", "harmless-r"])
    assert names == ["helpful-r", "honest-r", "harmless-r"]
    model, tokenizer = _load(tiny_models["three_outputs"])
    texts = values.full_texts_of(PROMPTS, CONTINUATIONS)
    expected = np.array([_one_logits(model, tokenizer, t) for t in texts])
    for k, name in enumerate(names):
        np.testing.assert_allclose(_batched_equals_one_at_a_time(name), expected[:, k], atol=1e-5)
    with pytest.raises(ValueError, match="score must be"):
        values.register_reward_model("x", tiny_models["pair"], score="cosine")
