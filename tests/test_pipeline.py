"""pipeline.py without a cluster: shard ranges, settings and their errors, markers, batch scripts, dry runs
of the submit/ scripts (ALT and DPA included), the checks made before anything is submitted, and the
local backend. The runs on a real SLURM are in test_submit.py."""
import json
import os
import subprocess
import sys

import pytest

from mapalign import pipeline
from conftest import ROOT

PY = sys.executable


def submit(script, *args, cwd, env=None):
    """Run a submit/ script; returns the CompletedProcess (text)."""
    return subprocess.run([PY, os.path.join(ROOT, "submit", script), *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_shard_ranges_cover_the_prompts_without_gaps():
    assert pipeline.shard_ranges(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert pipeline.shard_ranges(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert pipeline.shard_ranges(5, 1) == [(0, 5)]


def test_settings_overlay_keeps_the_defaults(tmp_path):
    user = write(tmp_path / "c.yaml", "partition: gpu\naccount: lab\nkinds:\n  cpu: {cpus: 3}\n")
    s = pipeline.load_settings(user)
    assert s["partition"] == "gpu" and s["account"] == "lab"
    assert s["kinds"]["cpu"]["cpus"] == 3 and s["kinds"]["cpu"]["gpus"] == 0   # merged per key
    assert s["kinds"]["generation"]["gpus"] == 1                              # GPU stages from the defaults
    assert s["kinds"]["training"]["gpus"] == 1


@pytest.mark.parametrize("text, words", [
    ("partitoin: gpu\n", ["partitoin", "unknown key"]),
    ("partition: gpu\nkinds:\n  generation: {gpu: 1}\n", ["gpu", "kinds.generation"]),
    ("partition: gpu\nkinds:\n  eval: {cpus: 1}\n", ["kinds.eval", "unknown stage kind"]),
    ("partition: gpu\nsetup: module load cuda\n", ["setup", "list"]),
    ("partition: [gpu\n", ["not valid YAML"]),
])
def test_settings_errors_name_the_key_and_the_file(tmp_path, text, words):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.load_settings(path)
    assert str(path) in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_missing_partition_and_sbatch_are_refused(tmp_path, monkeypatch):
    with pytest.raises(pipeline.PipelineError, match="no partition"):
        pipeline.require_cluster(pipeline.load_settings())
    settings = pipeline.load_settings(write(tmp_path / "c.yaml", "partition: gpu\n"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pipeline.PipelineError, match="sbatch is not on PATH"):
        pipeline.require_cluster(settings)


def test_refusal_hint_names_the_setting():
    options = [("--partition=x", "partition"), ("--mem=8G", "kinds.cpu.mem"), ("--gres=gpu:1", "kinds.cpu.gpus")]
    assert pipeline._refusal_hint("Invalid generic resource (gres) specification", options) == ["kinds.cpu.gpus"]
    assert pipeline._refusal_hint("Memory specification can not be satisfied", options) == ["kinds.cpu.mem"]
    assert pipeline._refusal_hint("invalid partition specified: x", options) == ["partition"]


def test_markers_follow_the_toolkits_files(tmp_path):
    from mapalign import records
    results = str(tmp_path / "m-d.json")
    done = pipeline.results_done(results)
    scored = pipeline.value_done(results, "length")
    merged = pipeline.values_merged(results, ["length"])
    assert not done() and not scored()
    records.save_json_atomic([{"prompt": "a", "generated": "a b"}], results)
    assert not done()                                   # no sidecar saying complete: a half-made file
    records.save_metadata(results, {"complete": True})
    assert done() and not scored() and not merged()
    temp = tmp_path / "temp" / "m-d_temp_length.json"
    os.makedirs(temp.parent)
    records.save_json_atomic([{"id": "0", "length": 1.0}], str(temp))
    assert not scored()                                 # add_reward writes its sidecar last
    records.save_metadata(str(temp), {"value": "length"})
    assert scored() and not merged()
    records.save_json_atomic([{"prompt": "a", "generated": "a b", "length": 1.0}], results)
    os.remove(records.metadata_path(str(temp)))
    assert scored() and merged()                        # merged: the temp files are gone, the column is there


def test_graph_rejects_unknown_parents_and_duplicates(tmp_path):
    pipe = pipeline.Pipeline("p", tmp_path)
    pipe.add("a", "gendata.py", [], done=pipeline.file_done("x"))
    with pytest.raises(pipeline.PipelineError, match="defined twice"):
        pipe.add("a", "gendata.py", [], done=pipeline.file_done("x"))
    with pytest.raises(pipeline.PipelineError, match="waits for"):
        pipe.add("b", "gendata.py", [], done=pipeline.file_done("x"), after=["nope"])
    with pytest.raises(pipeline.PipelineError, match="kind"):
        pipe.add("c", "gendata.py", [], done=pipeline.file_done("x"), kind="tpu")


def test_only_unfinished_array_tasks_are_planned(tmp_path, capsys):
    """A job array whose shard 1 is finished resubmits shards 0 and 2 only, still after its parent."""
    pipe = pipeline.Pipeline("arr", tmp_path)
    first = pipe.add("first", "gendata.py", ["x"], done=pipeline.file_done(str(tmp_path / "first")))
    pipe.add("shards", "gendata.py", tasks=[[f"--start_index={i}"] for i in range(3)],
             done=[pipeline.file_done(str(tmp_path / f"s{i}")) for i in range(3)], kind="generation", after=[first])
    write(tmp_path / "s1", "")
    assert pipeline.plan_of(pipe) == {"first": [0], "shards": [0, 2]}
    pipeline.execute(pipe, dry=True)
    text = capsys.readouterr().out
    assert "#   shards [generation] 2/3 tasks to run <- first" in text
    assert "--dependency=afterok:<first> --array=0,2 " in text
    assert "  0) " in text and "  2) " in text and "  1) " not in text
    write(tmp_path / "first", "")
    assert pipeline.plan_of(pipe) == {"shards": [0, 2]}      # a finished parent is no dependency


def test_dry_run_prints_the_chain_and_submits_nothing(tmp_path):
    out = submit("submit_jobs.py", "--dry_run=True", "--num_prompts=8", "--shards=2", "--c_list=0.3,0.9",
                 "--aligners=mc,ppo", "--value_list=sentiment,harmlessness", f"--workdir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # generation is a job array over the prompt shards, merged by mergeProcessor.py
    assert "--array=0,1" in text and "--start_index=0 --end_index=4" in text and "--start_index=4 --end_index=8" in text
    assert "merge_gendata_bypattern" in text
    # one add_reward job per value, all waiting for the merged generation; the merge waits for both
    assert "--dependency=afterok:<generate-merge> " in text
    assert "afterok:<base-reward-sentiment>:<base-reward-harmlessness>" in text
    assert text.count("--kill-on-invalid-dep=yes") == 23
    # λ is solved once and handed on as a file
    lam_file = "results/smollm2-135m-builtin_c=0.3,0.9_val=sentiment,harmlessness.lambda.json"
    assert f"optimize_lambda --save_lambda={lam_file}" in text
    assert text.count(f"--lam_list=@{lam_file}") == 3
    assert "trainPPO.py" in text and "collect_multiple_results" in text
    # GPUs for generation and training, none for merge/assess
    generate = text.split("# ---- generate\n")[1].split("# ----")[0]
    merge = text.split("# ---- generate-merge\n")[1].split("# ----")[0]
    assert "#SBATCH --gres=gpu:1" in generate and "--gres" not in merge
    # model-free values are scored on CPUs, reward models on GPUs
    assert "#   base-reward-sentiment [cpu] to run <- generate-merge" in text
    assert [pipeline.scoring_kind(v) for v in ("length", "diversity", "coherence", "gpt2-helpful", "perplexity")] \
        == ["cpu", "cpu", "scoring", "scoring", "scoring"]
    assert not os.path.exists(tmp_path / "slurm_logs")


@pytest.mark.parametrize("script, stages, flags", [
    ("submit_ALT_pipeline.py", ["sample", "feedback", "train", "validate"],
     "trainALT.py train --iteration=2 --output_dir=models/ALT --model_name=smollm2-135m --seed=0 "
     "--value_list=sentiment,length --data_name=builtin --num_train_prompts=64"),
    ("submit_DPA_pipeline.py", ["sample", "score", "select", "train", "evaluate"],
     "trainDPA.py select --iteration=2 --output_dir=models/DPA --model_name=smollm2-135m --seed=0"),
])
def test_alt_and_dpa_chain_one_job_per_stage_and_iteration(tmp_path, script, stages, flags):
    out = submit(script, "--value_list=sentiment,length", "--iterations=2", "--dry_run=True", f"--workdir={tmp_path}",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    graph = [line for line in out.stdout.splitlines() if line.startswith("#   ")]
    assert [line.split()[1] for line in graph] == [f"{s}-{i}" for i in (1, 2) for s in stages]
    assert f"#   {stages[0]}-2 [generation] to run <- train-1" in out.stdout   # the next round samples the new model
    assert flags in out.stdout


def test_alt_chain_runs_trainALT_for_real_and_its_markers_see_each_stage(tmp_path, tiny_lm_dir):
    """The ALT pipeline's flags and completion markers match trainALT.py: one local iteration on a tiny
    model runs sample → feedback → train → validate, and a rerun finds every stage complete."""
    options = "{max_new_tokens: 6, num_train_epochs: 1, batch_size: 8}"
    args = ("--value_list=length", "--iterations=1", f"--model_name={tiny_lm_dir}", "--num_prompts=2",
            "--samples_per_prompt=5", "--num_validation_prompts=2", "--backend=local", f"--workdir={tmp_path}",
            "--output_dir=alt", "--stage_options={" + ", ".join(f"{s}: {options}" for s in
                                                          ("sample", "feedback", "train", "validate")) + "}")
    out = submit("submit_ALT_pipeline.py", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line.split(":")[0] for line in out.stdout.splitlines() if line.endswith(" s")] \
        == ["sample-1", "feedback-1", "train-1", "validate-1"]
    with open(tmp_path / "alt" / "iter1" / "validate.json") as f:
        assert json.load(f)["best"]["n"] == 2
    again = submit("submit_ALT_pipeline.py", *args, cwd=tmp_path)
    assert again.returncode == 0 and "every stage is complete; nothing to do" in again.stdout


def test_missing_input_is_one_error_before_anything_is_submitted(tmp_path):
    out = submit("submit_perplexity_correction.py", "--file_path=results/nope.json", "--basemodel_name=gpt2",
                 f"--workdir={tmp_path}", "--backend=local", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: missing input(s), nothing submitted: results/nope.json (needed by stage reward-perplexity)"]


def test_unknown_value_is_refused_before_anything_runs(tmp_path):
    out = submit("submit_jobs.py", "--value_list=sentiment,nosuchvalue", "--dry_run=True", f"--workdir={tmp_path}",
                 cwd=tmp_path)
    assert out.returncode == 2 and "unknown value 'nosuchvalue'" in out.stderr


def test_bad_settings_through_the_cli(tmp_path):
    write(tmp_path / "c.yaml", "partition: debug\nqueue: long\n")
    out = submit("submit_jobs.py", "--settings=c.yaml", f"--workdir={tmp_path}/w", cwd=tmp_path)
    assert out.returncode == 2 and "unknown key(s) ['queue']" in out.stderr and "c.yaml" in out.stderr
    out = submit("submit_jobs.py", f"--workdir={tmp_path}/w", cwd=tmp_path)
    assert out.returncode == 2 and "no partition" in out.stderr
    assert not os.path.exists(tmp_path / "w" / "slurm_logs" / "map" / "jobs.json")


def scored_file(path, n=40, seed=0):
    """A small scored results file (two values) for the λ stages."""
    import numpy as np
    from mapalign import records
    rng = np.random.default_rng(seed)
    recs = [{"prompt": f"p{i}", "generated": f"p{i} x", "id": f"{i}-0", "prompt_id": i, "sample_id": 0,
             "length": float(rng.integers(1, 30)), "sentiment": float(rng.uniform(-1, 1))} for i in range(n)]
    records.save_json_atomic(recs, str(path))
    return str(path)


def test_local_backend_runs_in_order_and_resumes(tmp_path):
    """gen_rand_MAP_lambda jobs (CPU, no model) through the local backend; a second run skips them."""
    os.makedirs(tmp_path / "results")
    scored_file(tmp_path / "results" / "s.json")
    args = ["--file_path=results/s.json", "--value_list=length,sentiment", "--dims=2,1", "--num_lambda=3",
            f"--workdir={tmp_path}", "--backend=local"]
    out = submit("submit_MAP-DPO-PPO_comparison.py", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for k in (1, 2):
        with open(tmp_path / "results" / f"rand_MAP_lambda_{k}D.csv") as f:
            rows = f.read().strip().splitlines()
        assert len(rows) == 4 and rows[0].startswith("filepath,c_Levels")
    again = submit("submit_MAP-DPO-PPO_comparison.py", *args, cwd=tmp_path)
    assert again.returncode == 0 and "every stage is complete; nothing to do" in again.stdout


def test_local_backend_reports_the_failed_stage_and_skips_its_children(tmp_path):
    """A λ stage on an infeasible palette fails; what needs λ does not run."""
    os.makedirs(tmp_path / "results")
    scored_file(tmp_path / "results" / "s.json")
    pipe = pipeline.Pipeline("lam", tmp_path)
    lam = pipeline.add_lambda(pipe, "lambda", "results/s.json", ["length"], "1000", "results/lam.json")
    pipe.add("after", "alignValues.py", ["--value_list=length", "--file_path=results/s.json", "--c_list=1",
                                         "optimize_lambda"], done=pipeline.file_done("never"), after=[lam])
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.execute(pipe, backend="local")
    assert "lambda (log" in str(e.value) and "not run: after" in str(e.value)
    with open(tmp_path / "slurm_logs" / "lam" / "lambda-local.log") as f:
        assert "no λ reaches the palette" in f.read()
    assert not os.path.exists(tmp_path / "results" / "lam.json")


def test_lambda_file_round_trip(tmp_path):
    """optimize_lambda --save_lambda writes the λ target that --lam_list=@FILE and the trainers'
    --lambda_file read back."""
    from mapalign import arguments
    from mapalign import lambda_targets
    from mapalign.align import AlignValues
    path = scored_file(tmp_path / "s.json")
    align = AlignValues("length,sentiment", path, c_list="12,0.1")
    lam, ok = align.optimize_lambda(verbose=False, save_lambda=str(tmp_path / "lam.json"))
    assert ok
    with open(tmp_path / "lam.json") as f:
        saved = json.load(f)
    assert saved["values"] == ["length", "sentiment"] and saved["c"] == [12.0, 0.1] and saved["status"] == "feasible"
    assert arguments.float_list(f"@{tmp_path / 'lam.json'}", "lam_list") == lam
    assert lambda_targets.load_target(str(tmp_path / "lam.json"))["lam"] == lam == saved["lam"]
    with pytest.raises(ValueError, match="--lam_list=@.* does not exist"):
        arguments.float_list(f"@{tmp_path / 'none.json'}", "lam_list")
