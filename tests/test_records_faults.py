"""Fault injection for the checkpoint protocol (records.Checkpoint): SIGKILL gendata, MC decoding and
add_reward at random points (several seeds, .json and .jsonl inputs), resume, and compare with an
uninterrupted run: the records must be identical. Parallel add_reward of three values on one file with one
of them killed and resumed, then merge: nothing lost. Tiny models and a plugin scorer that sleeps a little
per batch (so every run has a window to be killed in)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mapalign import records
from mapalign import values
from conftest import ROOT
from mapalign.generation import TextGeneration
from mapalign.merging import MergeProcessor, temp_reward_path
from mapalign.rewarding import RewardProcessor

PLUGIN = '''
import time
from mapalign import values


def _slow(measure):
    def fn(prompts, continuations):
        time.sleep(0.02)  # a window to kill the process in
        return [float(measure(c)) + 0.001 * len(p) for p, c in zip(prompts, continuations)]
    return fn


values.register_value("fault_chars", fn=_slow(len), overwrite=True)
values.register_value("fault_words", fn=_slow(lambda c: len(c.split())), overwrite=True)
values.register_value("fault_vowels", fn=_slow(lambda c: sum(ch in "aeiou" for ch in c)), overwrite=True)
'''
PLUGIN_VALUES = ("fault_chars", "fault_words", "fault_vowels")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("plugin") / "fault_values.py")
    with open(path, "w") as f:
        f.write(PLUGIN)
    values.load_plugins(path)
    yield path
    for name in PLUGIN_VALUES:
        values.REGISTRY.pop(name, None)


def _env(plugin):
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MAP_PLUGINS=plugin)


def _batches_in(journal):
    """Batch lines journaled so far (the first line is the fingerprint)."""
    try:
        with open(journal, "rb") as f:
            return max(0, f.read().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _kill_at_random_point(cmd, journal, output, rng, env, max_batches):
    """Run `cmd`, SIGKILL it once its journal holds a random number of batches (plus a random few ms,
    so the kill may land anywhere, mid-write included). Returns the batches journaled at the kill."""
    target = int(rng.integers(1, max_batches + 1))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while _batches_in(journal) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(float(rng.uniform(0, 0.01)))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err.decode()[-2000:]}"
    assert not os.path.exists(output), "the run finished before it could be killed"
    return _batches_in(journal)


# --------------------------------------------------------------------------------------------
# gendata (generation) and MC decoding

GEN = dict(data_name="builtin", num_prompts=24, max_new_tokens=6, samples_per_prompt=1, checkpoint_every=1,
           progress=False)


def _gen_cmd(tiny_lm_dir, folder, *method):
    return [sys.executable, os.path.join(ROOT, "gendata.py"), f"--basemodel_name={tiny_lm_dir}",
            f"--save_directory={folder}", "--data_name=builtin", "--num_prompts=24", "--max_new_tokens=6",
            "--checkpoint_every=1", "--progress=False", *method]


@pytest.fixture(scope="module")
def gen_reference(tiny_lm_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen_ref")
    return open(TextGeneration(basemodel_name=tiny_lm_dir, save_directory=str(folder), **GEN)
                .generate_from_original_model(batch_size=1), "rb").read()


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkilled_generation_resumes_to_the_uninterrupted_file(tiny_lm_dir, tmp_path, plugin, gen_reference, seed):
    rng = np.random.default_rng(seed)
    gen = TextGeneration(basemodel_name=tiny_lm_dir, save_directory=str(tmp_path), **GEN)
    out = gen.output_path()
    cmd = _gen_cmd(tiny_lm_dir, tmp_path, "generate_from_original_model", "--batch_size=1")
    done = _kill_at_random_point(cmd, records.journal_path(out), out, rng, _env(plugin), max_batches=12)
    assert done < 24
    assert gen.generate_from_original_model(batch_size=1) == out
    assert open(out, "rb").read() == gen_reference
    assert not os.path.exists(records.journal_path(out))


MC = dict(lam_list="0.5", value_list="fault_chars", MC_nsamples=2, batch_size=2)


@pytest.fixture(scope="module")
def mc_reference(tiny_lm_dir, tmp_path_factory, plugin):
    folder = tmp_path_factory.mktemp("mc_ref")
    gen = TextGeneration(basemodel_name=tiny_lm_dir, save_directory=str(folder), **GEN)
    return records.load_records(gen.generate_from_MC_aligned_model(**MC))


@pytest.mark.parametrize("seed", [3, 4])
def test_sigkilled_mc_decoding_resumes_to_the_uninterrupted_shard(tiny_lm_dir, tmp_path, plugin, mc_reference, seed):
    rng = np.random.default_rng(seed)
    cmd = _gen_cmd(tiny_lm_dir, tmp_path, "generate_from_MC_aligned_model", "--lam_list=0.5",
                   "--value_list=fault_chars", "--MC_nsamples=2", "--batch_size=2")
    gen = TextGeneration(basemodel_name=tiny_lm_dir, save_directory=str(tmp_path), **GEN)
    from mapalign import decoding
    out = decoding.shard_path(str(tmp_path), gen.base_name, [0.5], "fault_chars", 0, 24)
    done = _kill_at_random_point(cmd, records.journal_path(out), out, rng, _env(plugin), max_batches=12)
    assert done < 24
    assert gen.generate_from_MC_aligned_model(**MC) == out
    assert records.load_records(out) == mc_reference


# --------------------------------------------------------------------------------------------
# add_reward

def _results_file(folder, ext, n=80):
    recs = [{"prompt": f"prompt {i}", "generated": f"prompt {i} answer {'abc ' * (i % 7)}",
             "continuation": f"answer {'abc ' * (i % 7)}".strip(), "id": f"{i}-0", "prompt_id": i, "sample_id": 0}
            for i in range(n)]
    path = os.path.join(str(folder), f"m-data{ext}")
    records.save_records(recs, path)
    return path


def _reward_cmd(path, value):
    return [sys.executable, os.path.join(ROOT, "rewardProcessor.py"), f"--file_path={path}", "--batch_size=2",
            "--progress=False", "add_reward", f"--value={value}"]


@pytest.mark.parametrize("ext", [".json", ".jsonl"])
@pytest.mark.parametrize("seed", [5, 6])
def test_sigkilled_add_reward_resumes_to_the_uninterrupted_scores(tmp_path, plugin, ext, seed):
    rng = np.random.default_rng(seed)
    ref_path = _results_file(tmp_path / "ref", ext) if os.makedirs(tmp_path / "ref") is None else None
    reference = records.load_records(RewardProcessor(file_path=ref_path, batch_size=2, progress=False)
                                     .add_reward("fault_chars"))
    path = _results_file(tmp_path, ext)
    source = open(path, "rb").read()
    temp = temp_reward_path(path, "fault_chars")
    assert temp.endswith("_temp_fault_chars" + ext)  # the temp file keeps the input's format
    done = _kill_at_random_point(_reward_cmd(path, "fault_chars"), records.journal_path(temp), temp, rng,
                                 _env(plugin), max_batches=12)
    assert done < 40
    assert RewardProcessor(file_path=path, batch_size=2, progress=False).add_reward("fault_chars") == temp
    assert records.load_records(temp) == reference
    assert open(path, "rb").read() == source  # add_reward never touches the results file
    MergeProcessor().merge_added_rewards(path)
    merged = records.load_records(path)
    assert [r["fault_chars"] for r in merged] == [e["fault_chars"] for e in reference]
    assert open(path, encoding="utf-8").read() == records.dumps_records(merged, records.results_format(path))


def test_parallel_add_reward_with_one_killed_then_merge_loses_nothing(tmp_path, plugin):
    path = _results_file(tmp_path, ".jsonl")
    recs = records.load_records(path)
    env = _env(plugin)
    survivors = [subprocess.Popen(_reward_cmd(path, v), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for v in ("fault_words", "fault_vowels")]
    temp = temp_reward_path(path, "fault_chars")
    _kill_at_random_point(_reward_cmd(path, "fault_chars"), records.journal_path(temp), temp,
                          np.random.default_rng(7), env, max_batches=12)
    for proc in survivors:
        assert proc.wait(timeout=180) == 0, proc.stderr.read().decode()[-2000:]
    # merging now takes the two finished values and leaves the interrupted one for later
    MergeProcessor().merge_added_rewards(path)
    assert not any("fault_chars" in r for r in records.load_records(path))
    RewardProcessor(file_path=path, batch_size=2, progress=False).add_reward("fault_chars")
    MergeProcessor().merge_added_rewards(path)
    merged = records.load_records(path)
    prompts, conts = [r["prompt"] for r in recs], [r["continuation"] for r in recs]
    for value in PLUGIN_VALUES:
        assert [r[value] for r in merged] == list(values.get_spec(value).fn(prompts, conts))
    assert sorted(os.listdir(tmp_path / "temp")) == []
