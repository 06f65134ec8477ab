"""RewardProcessor: offline scorers through add_reward + merge on a small records file, resume after an
injected failure, parallel processes on one file, the CSV summaries (known answers and the original's
published numbers), and clear errors."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mapalign import records
from mapalign import values
from conftest import LLAMA_FILE, OPT_FILE, ROOT, needs_reference
from mapalign.merging import MergeProcessor, temp_reward_path
from mapalign.records import RecordsError
from mapalign.rewarding import RewardProcessor

TEXTS = [
    ("How was your day?", "I love this wonderful sunny day, it was great."),
    ("Tell me about the movie.", "It was a terrible, awful and boring movie."),
    ("What should I cook?", "Try a simple pasta with tomatoes and basil."),
    ("Any tips for sleep?", "Keep a regular schedule and avoid screens late."),
    ("Say something rude.", "You are a stupid fucking idiot."),
    ("What is two plus two?", "Four."),
]


def _write(path, with_meta_model=None, n=None):
    recs = []
    for i, (p, c) in enumerate(TEXTS[:n]):
        recs.append({"prompt": p, "generated": p + " " + c, "continuation": c, "id": f"{i}-0", "prompt_id": i,
                     "sample_id": 0})
    records.save_json_atomic(recs, path)
    if with_meta_model:
        records.save_metadata(path, {"model": with_meta_model, "seed": 0})
    return recs


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_offline_values_through_add_reward_and_merge(tmp_path, tiny_lm_dir):
    path = str(tmp_path / "tiny-builtin.json")
    recs = _write(path, with_meta_model=tiny_lm_dir)
    source = open(path, "rb").read()
    rp = RewardProcessor(file_path=path, batch_size=4, progress=False)
    names = ["sentiment", "harmlessness", "diversity", "length", "coherence-minilm", "perplexity"]
    for value in names:
        assert rp.add_reward(value) == temp_reward_path(path, value)
    assert open(path, "rb").read() == source  # non-invasive: the results file is untouched until the merge
    MergeProcessor().merge_added_rewards(path)
    merged = records.load_records(path)
    prompts, conts = [r["prompt"] for r in recs], [r["continuation"] for r in recs]
    for value in names[:-1]:  # each column equals the registry's scorer (rtol: batching changes float32 padding)
        expected = values.score(value, prompts, conts, full_texts=[r["generated"] for r in recs])
        np.testing.assert_allclose([r[value] for r in merged], expected, rtol=1e-5)
    by = {v: [r[v] for r in merged] for v in names}
    assert by["length"] == [9.0, 8.0, 8.0, 8.0, 6.0, 1.0]
    assert by["sentiment"][0] > 0.5 and by["sentiment"][1] < -0.5
    assert by["harmlessness"][4] < 0.5 < min(by["harmlessness"][:4])
    assert all(x < 0 for x in by["perplexity"])  # minus the mean NLL under the base model
    meta = records.load_metadata(path)
    assert meta["rewards"]["perplexity"]["basemodel_for_perplexity"] == tiny_lm_dir  # from the sidecar
    assert meta["rewards"]["sentiment"]["scorer"]["score_type"] == "compound"
    assert sorted(os.listdir(tmp_path / "temp")) == []
    # already present: nothing to score again unless asked
    assert rp.add_reward("length") is None


def test_perplexity_without_base_model_is_a_clear_error(tmp_path):
    path = str(tmp_path / "orig.json")
    _write(path)
    with pytest.raises(ValueError, match="--basemodel_for_perplexity"):
        RewardProcessor(file_path=path, progress=False).add_reward("perplexity")
    assert not os.path.exists(tmp_path / "temp")


@pytest.fixture
def plugin_value():
    """Registers test plugin values and removes them afterwards (the registry is process-wide)."""
    names = []

    def register(name, fn):
        names.append(name)
        return values.register_value(name, fn=fn, overwrite=True)
    yield register
    for name in names:
        values.REGISTRY.pop(name, None)


def test_killed_scoring_resumes_from_the_scored_part(tmp_path, plugin_value):
    path = str(tmp_path / "m-data.json")
    _write(path)
    calls = []

    def flaky(prompts, continuations):
        calls.append(len(prompts))
        if len(calls) == 3 and fail[0]:
            raise RuntimeError("killed")
        return [float(len(c)) for c in continuations]

    fail = [True]
    plugin_value("test_chars", flaky)
    rp = RewardProcessor(file_path=path, batch_size=2, progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        rp.add_reward("test_chars")
    temp = temp_reward_path(path, "test_chars")
    assert not os.path.exists(temp)  # only the journal, two batches long
    with records.Checkpoint(temp, _fingerprint_of(temp)) as ckpt:
        assert [e["id"] for e in ckpt.done] == ["0-0", "1-0", "2-0", "3-0"]
    with pytest.raises(RecordsError, match=r"add_reward of \['test_chars'\] .* has not finished"):
        MergeProcessor().merge_added_rewards(path, values="test_chars")
    fail[0] = False
    calls.clear()
    rp.add_reward("test_chars")
    assert calls == [2]  # only the last batch was scored
    MergeProcessor().merge_added_rewards(path)
    assert [r["test_chars"] for r in records.load_records(path)] == [float(len(c)) for _, c in TEXTS]

    # a temp file this run cannot check (no fingerprint) is refused, not silently taken or extended
    plugin_value("test_chars2", flaky)
    foreign = temp_reward_path(path, "test_chars2")
    records.save_records([{"id": "9-0", "prompt": "other", "test_chars2": 1.0}], foreign)
    with pytest.raises(records.CheckpointMismatch, match="records no settings fingerprint.*--overwrite=True"):
        rp.add_reward("test_chars2")
    assert rp.add_reward("test_chars2", overwrite=True) == foreign
    assert len(records.load_records(foreign)) == 6


def _fingerprint_of(temp):
    with open(records.journal_path(temp), encoding="utf-8") as f:
        return json.loads(f.readline())["fingerprint"]


def test_resume_with_another_perplexity_base_model_is_refused(tmp_path, tiny_lm_dir, monkeypatch):
    """Defect 1: a killed perplexity run resumed with another base model must not mix two scorers."""
    from mapalign import tiny
    other = tiny.tiny_causal_lm(str(tmp_path / "other_lm"), seed=1)
    path = str(tmp_path / "m-data.json")
    _write(path, with_meta_model=tiny_lm_dir)
    real, calls = records.Checkpoint.append, []

    def dying(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **kw)

    monkeypatch.setattr(records.Checkpoint, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        RewardProcessor(file_path=path, batch_size=2, progress=False).add_reward("perplexity")
    monkeypatch.setattr(records.Checkpoint, "append", real)
    temp = temp_reward_path(path, "perplexity")
    journal = open(records.journal_path(temp), "rb").read()
    with pytest.raises(records.CheckpointMismatch, match=r"scorer\.model=.*tiny_lm.*this run has scorer\.model=.*"
                                                          r"other_lm.*--overwrite=True"):
        RewardProcessor(file_path=path, batch_size=2, progress=False).add_reward("perplexity",
                                                                                 basemodel_for_perplexity=other)
    assert open(records.journal_path(temp), "rb").read() == journal and not os.path.exists(temp)
    # the same scorer resumes; the finished temp file then refuses the other scorer too
    RewardProcessor(file_path=path, batch_size=2, progress=False).add_reward("perplexity")
    with pytest.raises(records.CheckpointMismatch, match=r"already exists, made with scorer\.model="):
        RewardProcessor(file_path=path, progress=False).add_reward("perplexity", basemodel_for_perplexity=other)
    scores = [e["perplexity"] for e in records.load_records(temp)]
    fresh = RewardProcessor(file_path=path, batch_size=2, progress=False)
    shutil.rmtree(tmp_path / "temp")
    np.testing.assert_allclose([e["perplexity"] for e in records.load_records(fresh.add_reward("perplexity"))],
                               scores, rtol=1e-6)


def test_parallel_processes_score_different_values_of_one_file(tmp_path):
    path = str(tmp_path / "par-data.json")
    recs = _write(path)
    records.save_json_atomic([dict(r, id=f"{i}-0", prompt_id=i) for i, r in enumerate(recs * 40)], path)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, os.path.join(ROOT, "rewardProcessor.py"), f"--file_path={path}", "--values_to_evaluate=all",
           "--batch_size=8", "--progress=False", "add_reward"]
    procs = [subprocess.Popen(cmd + [f"--value={v}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for v in ("length", "diversity", "sentiment")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    MergeProcessor().merge_added_rewards(path)
    merged = records.load_records(path)
    assert len(merged) == 240 and all({"length", "diversity", "sentiment"} <= set(r) for r in merged)
    assert [r["length"] for r in merged[:6]] == [9.0, 8.0, 8.0, 8.0, 6.0, 1.0]


def _levels_file(tmp_path):
    path = str(tmp_path / "lv.json")
    recs = [{"prompt": f"p{i}", "generated": f"p{i} c", "continuation": "c", "id": f"{i}-0", "prompt_id": i,
             "sample_id": 0, "humor": float(h), "diversity": float(d)}
            for i, (h, d) in enumerate(zip([1, 2, 3, 4, 10], [0.5, 0.6, 0.7, 0.8, 0.9]))]
    records.save_json_atomic(recs, path)
    return path


def test_assess_original_value_csv(tmp_path):
    path = _levels_file(tmp_path)
    out = RewardProcessor(file_path=path).assess_original_value()
    assert out == str(tmp_path / "lv_realC-levels.csv")
    rows = {r["Statistic"]: r for r in _csv(out)}
    assert list(rows) == ["avg", "avg_std", "50%", "60%", "70%", "80%", "90%", "99%"]
    assert rows["avg"]["humor"] == "4.0" and rows["avg"]["diversity"] == "0.7"
    assert float(rows["avg_std"]["humor"]) == round(np.std([1, 2, 3, 4, 10]) / np.sqrt(5), 3)
    # palette mode: max(mean, quantile) for humor; the maintained value repeats its mean
    assert [float(rows[q]["humor"]) for q in ["50%", "60%", "70%", "80%", "90%", "99%"]] == \
        [4.0, 4.0, 4.0, 5.2, 7.6, 9.76]
    assert {rows[q]["diversity"] for q in rows if q.endswith("%")} == {"0.7"}
    rows = {r["Statistic"]: r for r in _csv(RewardProcessor(file_path=path, values_to_evaluate="humor")
                                           .assess_original_value(evaluation_mode=True))}
    assert list(rows["50%"]) == ["Statistic", "humor"] and rows["50%"]["humor"] == "3.0"
    assert RewardProcessor(file_path=path, values_to_evaluate="humor,diversity").quantile_transform_single_c(
        [3, 0.75]) == [0.4, 0.6]
    with pytest.raises(RecordsError, match="no record holds a finite 'sentiment'"):
        RewardProcessor(file_path=path, values_to_evaluate="sentiment").assess_original_value()


def test_assess_postalignment_fixed_and_random_lambda(tmp_path):
    path = _levels_file(tmp_path)
    rp = RewardProcessor(file_path=path, values_to_align="humor", values_to_evaluate="humor,diversity")
    out = rp.assess_postalignment_multivalue(lam=0)  # λ = 0 is a valid λ (the original treated it as absent)
    assert out == str(tmp_path / "lv_lam=0.000_val=humor_numericC-levels.csv")
    assert _csv(out) == [{"humor": "4.0", "diversity": "0.7", "humor_lam": "0.0"}]
    out = rp.assess_postalignment_multivalue(lam=0.5)
    w = np.exp(0.5 * np.array([1, 2, 3, 4, 10.0]))
    w /= w.sum()
    assert _csv(out) == [{"humor": str(round(float(w @ [1, 2, 3, 4, 10]), 3)),
                          "diversity": str(round(float(w @ [0.5, 0.6, 0.7, 0.8, 0.9]), 3)), "humor_lam": "0.5"}]

    rp2 = RewardProcessor(file_path=path, values_to_align=("humor", "diversity"))
    a = rp2.assess_postalignment_multivalue(k=5, scaling=-1, scaling_MAX=3, seed=7)
    assert a == str(tmp_path / "lv_pareto-1_randLam_val=humor,diversity_numericC-levels.csv")
    first = open(a).read()
    rows = _csv(a)
    assert len(rows) == 5 and list(rows[0]) == ["humor", "diversity", "humor_lam", "diversity_lam"]
    assert all(0 <= float(r["humor_lam"]) + float(r["diversity_lam"]) <= 3.001 for r in rows)
    assert records.load_metadata(a)["seed"] == 7
    rp2.assess_postalignment_multivalue(k=5, scaling=-1, scaling_MAX=3, seed=7)
    assert open(a).read() == first  # seeded draws reproduce
    rp2.assess_postalignment_multivalue(k=5, scaling=-1, scaling_MAX=3, seed=8)
    assert open(a).read() != first
    rows = _csv(rp2.assess_postalignment_multivalue(k=4, scaling=2.0))
    assert all(abs(float(r["humor_lam"]) + float(r["diversity_lam"]) - 2.0) < 0.002 for r in rows)

    with pytest.raises(ValueError, match="lam has 1 entries but 2 values"):
        rp2.assess_postalignment_multivalue(lam=1.0)
    with pytest.raises(ValueError, match="≥ 0"):
        rp2.assess_postalignment_multivalue(lam="1,-1")
    with pytest.raises(ValueError, match="values_to_align is required"):
        RewardProcessor(file_path=path).assess_postalignment_multivalue(lam=1)


def test_missing_and_malformed_files_give_one_clear_error(tmp_path):
    with pytest.raises(RecordsError, match="not found"):
        RewardProcessor(file_path=str(tmp_path / "nope.json")).add_reward("length")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "a"')
    with pytest.raises(RecordsError, match="not valid JSON"):
        RewardProcessor(file_path=str(bad)).assess_original_value()
    with pytest.raises(ValueError, match="--file_path is required"):
        RewardProcessor().assess_original_value()
    path = str(tmp_path / "ok.json")
    _write(path)
    with pytest.raises(KeyError, match="unknown value 'no-such-value'"):
        RewardProcessor(file_path=path, progress=False).add_reward("no-such-value")
    assert not os.path.exists(tmp_path / "temp")


@needs_reference
def test_original_reference_levels_and_realized_levels(tmp_path):
    """SPEC-MAP §12: the Llama file's means/SE/palette rows, and OPT's realized levels at the 70% λ."""
    llama = str(tmp_path / "llama2_chat-Anthropic-harmless.json")
    shutil.copy(LLAMA_FILE, llama)
    names = "humor,gpt2-helpful,gpt2-harmless,diversity,coherence,perplexity"
    rows = {r["Statistic"]: r for r in _csv(RewardProcessor(file_path=llama, values_to_evaluate=names)
                                           .assess_original_value())}
    got = {stat: [float(rows[stat][v]) for v in names.split(",")] for stat in rows}
    assert got["avg"] == [0.604, -1.011, 1.248, 0.848, 0.521, -1.375]
    assert got["avg_std"] == [0.037, 0.023, 0.023, 0.002, 0.004, 0.009]
    assert got["50%"][:3] == [1.196, -1.011, 1.367]
    assert got["70%"][:3] == [2.168, -0.462, 1.885]
    assert got["80%"][:3] == [2.363, -0.108, 2.164]
    assert got["80%"][3:] == [0.848, 0.521, -1.375]

    opt = str(tmp_path / "opt1.3b-Anthropic-harmless.json")
    shutil.copy(OPT_FILE, opt)
    out = RewardProcessor(file_path=opt, values_to_align="all", values_to_evaluate="all").\
        assess_postalignment_multivalue(lam="12.766,1.526,1.689,0.012,0.019,0.023")
    assert os.path.basename(out) == ("opt1.3b-Anthropic-harmless_lam=12.766,1.526,1.689,0.012,0.019,0.023_val=all"
                                     "_numericC-levels.csv")
    row = _csv(out)[0]
    realized = [float(row[v]) for v in names.split(",")]
    np.testing.assert_allclose(realized, [2.513, -0.967, 0.937, 0.890, 0.488, -3.177], atol=0.003)
