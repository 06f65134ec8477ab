"""Generation on the tiny LM: records and metadata, determinism, shards + merge = full run, resume after
an injected failure and after SIGKILL, refusing to clobber other settings."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mapalign import records
from conftest import ROOT
from mapalign.generation import TextGeneration
from mapalign.sampling import block_seed
from mapalign.merging import MergeProcessor


def _gen(tiny_lm_dir, folder, **kw):
    args = dict(basemodel_name=tiny_lm_dir, data_name="builtin", save_directory=str(folder), num_prompts=6,
                max_new_tokens=5, samples_per_prompt=2, progress=False)
    args.update(kw)
    return TextGeneration(**args)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_records_metadata_and_determinism(tmp_path, tiny_lm_dir):
    tg = _gen(tiny_lm_dir, tmp_path / "a", seed=3)
    path = tg.generate_from_original_model(batch_size=4)
    assert path == str(tmp_path / "a" / f"{os.path.basename(tiny_lm_dir)}-builtin.json")
    recs = _read(path)
    assert [r["id"] for r in recs] == [f"{i}-{s}" for i in range(6) for s in range(2)]
    assert [(r["prompt_id"], r["sample_id"]) for r in recs] == [(i, s) for i in range(6) for s in range(2)]
    assert [r["prompt"] for r in recs[::2]] == tg.prompts
    for r in recs:  # chat mode (the tiny tokenizer has a template): generated = prompt + " " + continuation
        assert r["generated"] == r["prompt"] + " " + r["continuation"]
        assert r["continuation"] == r["continuation"].strip()
    meta = records.load_metadata(path)
    assert meta["complete"] and meta["seed"] == 3 and meta["model"] == tiny_lm_dir
    assert meta["model_info"]["kind"] == "local" and "model.safetensors" in meta["model_info"]["weights"]
    assert meta["sampling"]["top_k"] == 50 and meta["sampling"]["temperature"] == 1.0
    assert meta["sampling"]["use_chat_template"] is True and meta["sampling"]["samples_per_prompt"] == 2
    assert meta["counts"] == {"prompts": 6, "records": 12, "new_tokens": meta["counts"]["new_tokens"],
                              "start_index": 0, "end_index": 6}
    assert 0 < meta["counts"]["new_tokens"] <= 12 * 5
    assert meta["prompt_source"]["data_name"] == "builtin" and "transformers" in meta["versions"]

    again = _gen(tiny_lm_dir, tmp_path / "b", seed=3).generate_from_original_model(batch_size=4)
    assert _read(again) == recs  # same seed, same records
    other = _gen(tiny_lm_dir, tmp_path / "c", seed=4).generate_from_original_model(batch_size=4)
    assert _read(other) != recs
    assert block_seed(0, 5) != block_seed(0, 6) and block_seed(0, 5) == block_seed(0, 5)


def test_raw_prompts_as_the_original(tmp_path, tiny_lm_dir):
    path = _gen(tiny_lm_dir, tmp_path, use_chat_template=False, samples_per_prompt=1).generate_from_original_model(
        batch_size=3)
    for r in _read(path):
        assert r["generated"].startswith(r["prompt"])
        assert r["generated"][len(r["prompt"]):].strip() == r["continuation"]
    assert records.load_metadata(path)["sampling"]["use_chat_template"] is False


def test_shards_merge_to_the_full_run(tmp_path, tiny_lm_dir):
    full = _read(_gen(tiny_lm_dir, tmp_path / "full").generate_from_original_model(batch_size=4))
    folder = tmp_path / "sharded"
    # batch_size 4 with 2 samples = 2 prompts per batch; shards on batch boundaries reproduce the full run
    first = _gen(tiny_lm_dir, folder).generate_from_original_model(batch_size=4, start_index=0, end_index=4)
    second = _gen(tiny_lm_dir, folder).generate_from_original_model(batch_size=4, start_index=4)
    base = f"{os.path.basename(tiny_lm_dir)}-builtin"
    assert first == str(folder / "temp" / f"{base}_0to4.json") and second == str(folder / "temp" / f"{base}_4to6.json")
    assert records.load_metadata(second)["counts"]["records"] == 4
    merged = MergeProcessor().merge_gendata_bypattern(str(folder / "temp" / f"{base}_*to*.json"))
    assert merged == str(folder / f"{base}.json")
    assert _read(merged) == full
    # the merged file carries the full run's settings, so re-running the full command finds it complete
    mtime = os.path.getmtime(merged)
    assert _gen(tiny_lm_dir, folder).generate_from_original_model(batch_size=4) == merged
    assert os.path.getmtime(merged) == mtime


def test_injected_failure_then_resume_equals_uninterrupted(tmp_path, tiny_lm_dir, monkeypatch):
    reference = _read(_gen(tiny_lm_dir, tmp_path / "ref").generate_from_original_model(batch_size=2))
    folder = tmp_path / "crash"
    tg = _gen(tiny_lm_dir, folder, checkpoint_every=1)
    real, calls = TextGeneration.sample_continuations, []

    def failing(self, *args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed after 3 batches")
        return real(self, *args, **kw)

    monkeypatch.setattr(TextGeneration, "sample_continuations", failing)
    with pytest.raises(KeyboardInterrupt):
        tg.generate_from_original_model(batch_size=2)
    out = tg.output_path()
    journal = records.journal_path(out)
    with records.Checkpoint(out, tg.fingerprint(0, 6)) as ckpt:
        assert not os.path.exists(out) and ckpt.state["next_prompt"] == 3 and len(ckpt.done) == 6
    monkeypatch.setattr(TextGeneration, "sample_continuations", real)
    assert _gen(tiny_lm_dir, folder, checkpoint_every=1).generate_from_original_model(batch_size=2) == out
    assert _read(out) == reference and not os.path.exists(journal)


def test_sigkill_mid_run_then_restart_equals_uninterrupted(tmp_path, tiny_lm_dir):
    settings = dict(num_prompts=150, max_new_tokens=8, samples_per_prompt=1)
    folder = tmp_path / "killed"
    cmd = [sys.executable, os.path.join(ROOT, "gendata.py"), f"--basemodel_name={tiny_lm_dir}",
           f"--save_directory={folder}", "--num_prompts=150", "--max_new_tokens=8", "--checkpoint_every=1",
           "--progress=False", "generate_from_original_model", "--batch_size=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tg = _gen(tiny_lm_dir, folder, **settings)
    journal = records.journal_path(tg.output_path())
    deadline = time.time() + 120
    while not (os.path.exists(journal) and os.path.getsize(journal) > 0) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(tg.output_path()), "the run finished before it could be killed"
    with records.Checkpoint(tg.output_path(), tg.fingerprint(0, 150)) as ckpt:
        done = len(ckpt.done)
    assert 0 <= done < 150
    out = tg.generate_from_original_model(batch_size=1)
    reference = _gen(tiny_lm_dir, tmp_path / "ref", **settings).generate_from_original_model(batch_size=1)
    assert _read(out) == _read(reference)


def test_existing_output_with_other_settings_is_refused(tmp_path, tiny_lm_dir):
    path = _gen(tiny_lm_dir, tmp_path).generate_from_original_model(batch_size=4)
    before = open(path).read()
    with pytest.raises(records.CheckpointMismatch, match=r"sampling\.max_new_tokens=5.*=6.*--overwrite=True"):
        _gen(tiny_lm_dir, tmp_path, max_new_tokens=6).generate_from_original_model(batch_size=4)
    assert open(path).read() == before
    _gen(tiny_lm_dir, tmp_path, max_new_tokens=6, overwrite=True).generate_from_original_model(batch_size=4)
    assert records.load_metadata(path)["sampling"]["max_new_tokens"] == 6
    with pytest.raises(ValueError, match="invalid prompt range"):
        _gen(tiny_lm_dir, tmp_path).generate_from_original_model(start_index=5, end_index=5)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        _gen(tiny_lm_dir, tmp_path, samples_per_prompt=0)


def test_direction_prompts_and_grid(tmp_path, tiny_lm_dir):
    from mapalign import dpa
    gen = _gen(tiny_lm_dir, tmp_path, direction=-15, samples_per_prompt=1, num_prompts=2)
    path = gen.generate_from_original_model()
    assert path.endswith("_w=97,-26.json")
    recs = records.load_records(path)
    assert all(r["weights"] == [97, -26] and r["theta"] == -15 for r in recs)
    assert dpa.parse_system_prompt(recs[0]["system"]) == (["helpfulness", "verbosity"], [97, -26])
    model, tokenizer = gen.load_model()
    seen = []
    real = tokenizer.__class__.__call__

    def spy(self, text, *a, **k):
        seen.extend(text if isinstance(text, list) else [text])
        return real(self, text, *a, **k)
    import unittest.mock
    with unittest.mock.patch.object(tokenizer.__class__, "__call__", spy):
        gen.sample_continuations(["hi"], 1)
    assert any("<|im_start|>system\n" + recs[0]["system"] in t for t in seen)
    grid = _gen(tiny_lm_dir, tmp_path / "grid", samples_per_prompt=1, num_prompts=2).generate_direction_grid(step=45)
    assert [os.path.basename(p) for p in grid] == [f"{os.path.basename(tiny_lm_dir)}-builtin_w={w}.json"
                                                   for w in ("71,-71", "100,0", "71,71")]
