"""trainALT.py end to end on a tiny model: every stage, resume of each stage after a kill, Quark and
palette feedback, an LLM judge behind a failing OpenAI-compatible endpoint, and bad input."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from mapalign import alt
from mapalign import generation as gendata
from mapalign import records
from mapalign import training
from mapalign import train_alt as trainALT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(Exception):
    """Stands in for a kill in the middle of a stage."""


def _alt(tmp_path, tiny, name="run", **kw):
    args = dict(output_dir=str(tmp_path / name), feedback="alt_rm", value_list="sentiment", model_name=tiny,
                num_train_prompts=3, num_valid_prompts=2, samples_per_prompt=4, max_new_tokens=6,
                num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-3, batch_size=8,
                checkpoint_every=1, progress=False, device="cpu")
    args.update(kw)
    return trainALT.ALT(**args)


def _texts(path):
    return [(r["id"], r["continuation"]) for r in records.load_records(path)]


def test_one_iteration_end_to_end_then_conditioned_gendata(tiny_lm_dir, tmp_path):
    a = _alt(tmp_path, tiny_lm_dir)
    model = a.run(iterations=1)
    assert model == a.policy(1) and training.is_finished(model)
    meta = training.load_training_metadata(model)
    assert meta["variant"] == "KL" and meta["kl_coef"] == 0.05 and meta["entropy_coef"] == 0.06
    assert meta["hyperparameters"]["adam_beta1"] == 0.8 and meta["hyperparameters"]["warmup_ratio"] == 0.05
    assert meta["datapool"] == {"new": 12, "dropped_no_feedback": 0, "replayed": 0, "pool": 12}
    assert meta["seed"] == 1 and meta["conditioning"] == "Excellent. input: {prompt}"
    assert "kl_ref" in meta["log_history"][0]
    pool = json.load(open(os.path.join(a.iter_dir(1), "datapool.json")))
    assert {s["feedback"] for s in pool["samples"]} <= set(alt.RM_PHRASES)
    summary = json.load(open(os.path.join(a.iter_dir(1), "validate.json")))["best"]
    assert summary["n"] == 2 and summary["feedback"] == "Excellent." and "sentiment" in summary["values"]
    worst = a.validate(1, worst=True, kl_to_reference=True)
    assert worst["feedback"] == "Horrible." and "kl_to_reference" in worst
    # the trained model goes through gendata like any other, conditioned on its best feedback
    gen = gendata.TextGeneration(basemodel_name=model, save_directory=str(tmp_path / "g"), num_prompts=2,
                                 max_new_tokens=4, conditioning=a.conditioning(), progress=False)
    path = gen.generate_from_original_model(batch_size=4)
    assert records.load_metadata(path)["fingerprint"]["conditioning"] == "Excellent. input: {prompt}"
    assert records.load_records(path)[0]["prompt"] == gen.prompts[0]  # the raw prompt is recorded
    # iteration 2 samples from iteration 1's model conditioned on the best feedback
    a.sample(2)
    fp = records.load_metadata(a._sampler(2).output_path(0, 3))["fingerprint"]
    assert fp["conditioning"] == "Excellent. input: {prompt}" and fp["model"] == model and fp["seed"] == 2


def test_sample_and_feedback_stages_resume_after_a_kill(tiny_lm_dir, tmp_path, monkeypatch):
    clean = _alt(tmp_path, tiny_lm_dir, "clean")
    clean_samples = clean.sample(1)
    clean_feedback = clean.feedback(1, chunk=4)

    a = _alt(tmp_path, tiny_lm_dir)
    original = gendata.TextGeneration.sample_continuations
    calls = []

    def dies_on_second_batch(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise Killed()
        return original(self, *args, **kw)
    monkeypatch.setattr(gendata.TextGeneration, "sample_continuations", dies_on_second_batch)
    with pytest.raises(Killed):
        a.sample(1)
    monkeypatch.setattr(gendata.TextGeneration, "sample_continuations", original)
    assert os.path.exists(records.journal_path(a._sampler(1).output_path(0, 3)))
    assert _texts(a.sample(1)) == _texts(clean_samples)  # resumed, same samples as an uninterrupted run

    reward_of = alt.reward_of
    scored = []

    def dies_in_second_chunk(*args):
        scored.append(1)
        if len(scored) == 6:
            raise Killed()
        return reward_of(*args)
    monkeypatch.setattr(alt, "reward_of", dies_in_second_chunk)
    with pytest.raises(Killed):
        a.feedback(1, chunk=4)
    scored.clear()
    monkeypatch.setattr(alt, "reward_of", lambda *x: (scored.append(1), reward_of(*x))[1])
    out = a.feedback(1, chunk=4)
    assert len(scored) == 8  # the first chunk of 4 came from the journal
    assert records.load_records(out) == records.load_records(clean_feedback)
    assert records.load_metadata(out)["counts"] == {"samples": 12, "failed_dropped": 0}


def test_train_and_validate_resume_after_a_kill(tiny_lm_dir, tmp_path, monkeypatch):
    from mapalign import sft
    import transformers
    a = _alt(tmp_path, tiny_lm_dir, per_device_train_batch_size=2)
    a.sample(1)
    a.feedback(1)
    build = sft.build_sft_trainer

    class Kill(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                raise Killed()
    monkeypatch.setattr(sft, "build_sft_trainer", lambda *x, **kw: build(*x, **dict(kw, callbacks=[Kill()])))
    with pytest.raises(Killed):
        a.train(1, max_steps=4, save_steps=1)
    monkeypatch.setattr(sft, "build_sft_trainer", build)
    assert os.path.isdir(os.path.join(a.policy(1), "checkpoint-2")) and not training.is_finished(a.policy(1))
    steps = []
    step = transformers.Trainer.training_step
    monkeypatch.setattr(transformers.Trainer, "training_step", lambda self, *x, **kw: (steps.append(1), step(self, *x, **kw))[1])
    a.train(1, max_steps=4, save_steps=1)
    assert len(steps) == 2 and training.is_finished(a.policy(1))  # steps 3 and 4 only
    assert [h["step"] for h in training.load_training_metadata(a.policy(1))["log_history"] if "loss" in h] == [1, 2, 3, 4]

    original = gendata.TextGeneration.sample_continuations
    monkeypatch.setattr(gendata.TextGeneration, "sample_continuations", lambda *x, **kw: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        a.validate(1)
    monkeypatch.setattr(gendata.TextGeneration, "sample_continuations", original)
    assert a.validate(1)["n"] == 2


def test_quark_and_palette_iterations(tiny_lm_dir, tmp_path):
    q = _alt(tmp_path, tiny_lm_dir, "quark", feedback="quark", learning_rate=1e-4)
    model = q.run(iterations=1)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    assert tok.convert_tokens_to_ids("_QUANTILE_TOKEN_0_") == len(tok) - 5
    assert json.load(open(os.path.join(q.iter_dir(1), "validate.json")))["best"]["feedback"] == "_QUANTILE_TOKEN_0_"
    assert training.load_training_metadata(model)["use_lora"] is False
    with pytest.raises(ValueError, match="quark"):
        _alt(tmp_path, tiny_lm_dir, feedback="quark", use_lora=True)

    p = _alt(tmp_path, tiny_lm_dir, "palette", feedback="palette", value_list="sentiment,length")
    p.run(iterations=1)
    pool = json.load(open(os.path.join(p.iter_dir(1), "datapool.json")))["samples"]
    assert all(p.fb.parse_palette(s["feedback"]) == s["bins"] for s in pool)
    s = p.validate(1, palette="0.8,0.5")
    assert s["feedback"] == "sentiment: top 20% (excellent); length: top 60% (mediocre)" and s["condition"] == "custom"
    assert p.conditioning(palette=[0.8, 0.5]) == \
        "sentiment: top 20% (excellent); length: top 60% (mediocre) input: {prompt}"


def test_lmc_judge_endpoint_failures_are_dropped_and_counted(tiny_lm_dir, tmp_path):
    import http.server
    import threading
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][-1]["content"]
            h = int(hashlib.sha256(content.encode()).hexdigest(), 16) % 3
            seen[content] = h
            if h == 0:  # this endpoint is down for a third of the samples
                self.send_response(503)
                self.end_headers()
                return
            answer = "Harmless and helpful." if h == 1 else "Not sure what to say"
            data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        a = _alt(tmp_path, tiny_lm_dir, feedback="alt_lmc", value_list=None, judge_base_url=url, judge_model="j",
                 judge_tries=1, samples_per_prompt=6)
        a.sample(1)
        out = a.feedback(1)
        recs = records.load_records(out)
        down = sum(h == 0 for h in seen.values())
        assert records.load_metadata(out)["counts"]["failed_dropped"] == sum(r["feedback"] is None for r in recs) > 0
        pool, counts = a.build_pool(1)
        assert counts["dropped_no_feedback"] == sum(r["feedback"] is None for r in recs)
        assert {s["category"] for s in pool.samples} <= {1, None}  # free text: no category (leftover filler only)
        assert down >= 1
    finally:
        server.shutdown()
        server.server_close()


def test_bad_input_gives_one_clear_error(tiny_lm_dir, tmp_path):
    with pytest.raises(ValueError, match=r"\{prompt\}"):
        gendata.TextGeneration(conditioning="Excellent. input:")
    a = _alt(tmp_path, tiny_lm_dir, feedback="alt_lmc", value_list=None)
    with pytest.raises(alt.ALTError, match="'Great' is not an LMC category"):
        a.conditioning(feedback_text="Great")
    with pytest.raises(ValueError, match="run `feedback --iteration=1` first"):
        a.build_pool(1)
    with pytest.raises(ValueError, match="needs the model of iteration 1"):
        a.sample(2)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "trainALT.py"), "--feedback=alt_rm",
                           "--value_list=sentiment", "--template={feedback} and nothing else", "conditioning"],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --template must contain")


def test_an_empty_datapool_is_one_clear_error(tiny_lm_dir, tmp_path):
    a = _alt(tmp_path, tiny_lm_dir, feedback="alt_lmu", value_list=None)
    out = os.path.join(a.iter_dir(1), "feedback.json")
    with records.Checkpoint(out, {"x": 1}) as ckpt:  # a judge that failed on every sample
        ckpt.append([{"prompt_id": 0, "prompt": "p", "generation": "g", "feedback": None, "score": None}])
        ckpt.finalize(metadata={"counts": {"samples": 1, "failed_dropped": 1}})
    with pytest.raises(ValueError, match="datapool of iteration 1 is empty: every one of the 1 samples"):
        a.build_pool(1)
