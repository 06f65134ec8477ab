"""submit/ on a real single-node SLURM (.ci/slurm.sh start; CI starts it): a small pipeline (tiny model, a
few prompts, CPU) through sbatch equals the local backend's outputs; a stage made to fail cancels its
dependents, status names it, and a resubmission completes the rest; `sbatch submit/submit_jobs.py` submits
the chain from inside a job; an unsatisfiable request fails at submission naming the setting."""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require

PY = sys.executable
VENV_BIN = os.path.dirname(PY)


def slurm_up():
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode == 0


def need_slurm():
    require(slurm_up(), "no SLURM cluster answers (start one with .ci/slurm.sh start and export SLURM_CONF)")


def settings_file(folder, extra=(), **kind_overrides):
    """Test cluster settings: partition debug, 1 CPU and no GPU per job, this interpreter; `extra` lines
    appended."""
    kinds = {k: {"gpus": 0, "cpus": 1, "mem": "1G"} for k in ("generation", "training", "scoring", "cpu")}
    for key, value in kind_overrides.items():
        kind, field = key.split("__")
        kinds[kind][field] = value
    lines = ["partition: debug", 'time: "00:10:00"', "mem: 1G", f"python: {PY}", "kinds:"]
    lines += [f"  {k}: {{{', '.join(f'{f}: {v}' for f, v in spec.items())}}}" for k, spec in kinds.items()]
    lines += list(extra)
    path = os.path.join(folder, "cluster.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def submit(script, *args, cwd, env=None):
    # jobs inherit this environment (sbatch --export=ALL): the venv first on PATH, one thread per job
    full_env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1",
                    **(env or {}))
    return subprocess.run([PY, os.path.join(ROOT, "submit", script), *args], cwd=cwd, capture_output=True,
                          text=True, env=full_env, timeout=300)


def job_ids(workdir, name):
    with open(os.path.join(workdir, "slurm_logs", name, "jobs.json")) as f:
        return [s["job_id"] for s in json.load(f)["stages"].values()]


def wait_for_jobs(ids, timeout=300):
    """Wait until none of the jobs (or their array tasks) is queued or running."""
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(0.5)
    queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    raise AssertionError(f"jobs {ids} still queued after {timeout} s:\n{queue}")


def logs(workdir, name):
    folder = os.path.join(workdir, "slurm_logs", name)
    out = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.endswith(".log"):
            with open(os.path.join(folder, entry)) as f:
                out.append(f"== {entry}\n{f.read()[-1500:]}")
    return "\n".join(out)


def status_rows(script, args, workdir, env=None):
    """{stage: state} from the `status` command's table, and its whole output."""
    out = submit(script, "status", *args, cwd=workdir, env=env)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 5 and not line.startswith(("failed", "cancelled")):
            rows[parts[0]] = parts[4]
    return rows, out.stdout


BASE_ARGS = ["--value_list=length,sentiment", "--num_prompts=6", "--shards=2", "--max_new_tokens=8", "--figures=False"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_lm_dir):
    """The base MAP pipeline (2 generation shards → merge → 2 rewards → merge → assess) through SLURM and,
    while its jobs run, through the local backend in another folder."""
    need_slurm()
    folder = str(tmp_path_factory.mktemp("slurm_base"))
    settings = settings_file(folder)
    args = BASE_ARGS + [f"--basemodel_name={tiny_lm_dir}", f"--settings={settings}", f"--workdir={folder}/run"]
    out = submit("submit_jobs.py", *args, cwd=folder)
    assert out.returncode == 0, out.stdout + out.stderr
    local = submit("submit_jobs.py", *BASE_ARGS, f"--basemodel_name={tiny_lm_dir}", "--backend=local",
                   f"--workdir={folder}/local", cwd=folder)
    wait_for_jobs(job_ids(f"{folder}/run", "map"))
    return folder, args, local


def test_slurm_outputs_equal_the_local_backends(base_run, tiny_lm_dir):
    folder, args, local = base_run
    rows, text = status_rows("submit_jobs.py", args, folder)
    assert rows and set(rows.values()) == {"COMPLETED"}, text + logs(f"{folder}/run", "map")
    assert local.returncode == 0, local.stdout + local.stderr
    results = os.path.join("results", f"{os.path.basename(tiny_lm_dir)}-builtin")
    with open(os.path.join(folder, "run", results + ".json")) as f:
        on_slurm = json.load(f)
    with open(os.path.join(folder, "local", results + ".json")) as f:
        here = json.load(f)
    assert len(on_slurm) == 6 and all({"length", "sentiment"} <= set(r) for r in on_slurm)
    assert on_slurm == here
    with open(os.path.join(folder, "run", results + "_realC-levels.csv")) as f, \
            open(os.path.join(folder, "local", results + "_realC-levels.csv")) as g:
        assert f.read() == g.read()
    again = submit("submit_jobs.py", *args, cwd=folder)          # resuming a finished pipeline submits nothing
    assert again.returncode == 0 and "every stage is complete; nothing to do" in again.stdout


FLAKY_PLUGIN = '''
import os
from mapalign.values import register_value

def flaky(prompts, continuations):
    if os.path.exists(os.environ["FLAKY_FLAG"]):
        raise RuntimeError("the flaky value was made to fail")
    return [float(len(c)) for c in continuations]

register_value("flaky", flaky)
'''


def test_failed_stage_cancels_its_dependents_and_resubmission_completes(tiny_lm_dir, tmp_path):
    """MAP-D for a fixed λ: MC generation → merge → add_reward length, flaky → merge → assess.
    flaky fails while its flag file exists: merge and assess are cancelled; status names the failure; after
    removing the flag the same command resubmits only flaky, merge and assess."""
    need_slurm()
    plugin, flag = tmp_path / "flaky.py", tmp_path / "FAIL"
    plugin.write_text(FLAKY_PLUGIN)
    flag.write_text("")
    env = {"MAP_PLUGINS": str(plugin), "FLAKY_FLAG": str(flag)}
    args = ["--lam_list=0.5", "--value_list=length", "--evaluate_values=length,flaky", "--num_prompts=4",
            "--shards=1", "--MC_nsamples=2", "--max_new_tokens=6", f"--basemodel_name={tiny_lm_dir}",
            f"--settings={settings_file(str(tmp_path))}", f"--workdir={tmp_path}/run"]
    out = submit("submit_MC-aligned_pipeline.py", *args, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for_jobs(job_ids(f"{tmp_path}/run", "mapd"))
    rows, status = status_rows("submit_MC-aligned_pipeline.py", args, tmp_path, env=env)
    detail = status + logs(f"{tmp_path}/run", "mapd")
    assert rows == {"mc-generate": "COMPLETED", "mc-generate-merge": "COMPLETED", "mc-reward-length": "COMPLETED",
                    "mc-reward-flaky": "FAILED", "mc-merge-rewards": "CANCELLED", "mc-assess": "CANCELLED"}, detail
    assert "failed: stage mc-reward-flaky" in status and "mc-reward-flaky-" in status
    failed_log = [line for line in status.splitlines() if line.startswith("failed:")][0].split("log ")[-1]
    with open(failed_log) as f:
        assert "the flaky value was made to fail" in f.read()

    flag.unlink()
    again = submit("submit_MC-aligned_pipeline.py", *args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "complete, skipped: mc-generate, mc-generate-merge, mc-reward-length" in again.stdout
    submitted = [line.split(":")[0] for line in again.stdout.splitlines() if ": submitted job" in line]
    assert submitted == ["mc-reward-flaky", "mc-merge-rewards", "mc-assess"]
    wait_for_jobs(job_ids(f"{tmp_path}/run", "mapd"))
    rows, status = status_rows("submit_MC-aligned_pipeline.py", args, tmp_path, env=env)
    assert set(rows.values()) == {"COMPLETED"}, status
    name = f"{os.path.basename(tiny_lm_dir)}-builtin_lam=0.500_val=length.json"
    with open(tmp_path / "run" / "results" / name) as f:
        recs = json.load(f)
    assert len(recs) == 4 and all("flaky" in r and "length" in r for r in recs)
    assert os.path.isfile(tmp_path / "run" / "results" / name.replace(".json", "_realC-levels.csv"))


def test_sbatch_the_submit_script_chains_lambda_and_mc_decoding(base_run, tmp_path):
    """`sbatch submit/submit_jobs.py --c_list=...` on the finished base run: the job itself submits
    λ → MC decoding (λ read from the λ file) → rewards → merge → assess → win rates."""
    folder, args, _ = base_run
    work = str(tmp_path / "run")
    shutil.copytree(os.path.join(folder, "run"), work, ignore=shutil.ignore_patterns("slurm_logs"))
    args = [a for a in args if not a.startswith("--workdir")] + [f"--workdir={work}", "--c_list=0,-1",
                                                                "--MC_nsamples=2", "--mc_shards=1"]
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1")
    out = subprocess.run(["sbatch", "--parsable", os.path.join(ROOT, "submit", "submit_jobs.py"), *args],
                         cwd=str(tmp_path), capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    submit_job = out.stdout.strip()
    wait_for_jobs([submit_job], timeout=120)
    with open(tmp_path / f"submit_jobs-{submit_job}.log") as f:
        submit_log = f.read()
    assert "lambda: submitted job" in submit_log and "complete, skipped: generate" in submit_log, submit_log
    wait_for_jobs(job_ids(work, "map"))
    rows, text = status_rows("submit_jobs.py", args, str(tmp_path))
    assert set(rows.values()) <= {"COMPLETED", "complete"}, text + logs(work, "map")
    lam_files = glob.glob(os.path.join(work, "results", "*_c=0,-1_val=length,sentiment.lambda.json"))
    assert len(lam_files) == 1
    with open(lam_files[0]) as f:
        lam = json.load(f)
    assert lam["status"] == "feasible" and lam["values"] == ["length", "sentiment"]
    aligned = glob.glob(os.path.join(work, "results", "MAP-D", "*_val=length,sentiment.json"))
    assert len(aligned) == 1
    with open(aligned[0]) as f:
        recs = json.load(f)
    assert len(recs) == 6 and all("sentiment" in r and "chosen_index" in r for r in recs)
    assert glob.glob(os.path.join(work, "results", "winrates_*.tex"))


def test_unsatisfiable_request_fails_at_submission_naming_the_setting(tmp_path):
    """kinds.cpu.gpus = 1 on a node without GPUs: sbatch refuses at once; the error shows SLURM's message
    and the setting, and nothing stays queued."""
    need_slurm()
    from test_pipeline import scored_file
    os.makedirs(tmp_path / "results")
    scored_file(tmp_path / "results" / "s.json")
    settings = settings_file(str(tmp_path), cpu__gpus=1)
    out = submit("submit_MAP-DPO-PPO_comparison.py", "--file_path=results/s.json", "--value_list=length,sentiment",
                 "--dims=2,1", "--num_lambda=2", f"--settings={settings}", f"--workdir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    message = out.stderr.strip()
    assert message.startswith("error: SLURM refused stage 'rand-lambda-2D' (cpu):"), message
    assert "Invalid generic resource (gres) specification" in message
    assert "Change kinds.cpu.gpus in " + settings in message and "nothing was submitted" in message


def test_refusal_after_some_submissions_cancels_them(tmp_path):
    """The second stage asks for a GPU the node lacks: the first, already queued, is cancelled."""
    need_slurm()
    from mapalign import pipeline
    from test_pipeline import scored_file
    os.makedirs(tmp_path / "results")
    scored_file(tmp_path / "results" / "s.json")
    pipe = pipeline.Pipeline("refused", tmp_path)
    first = pipe.add("first", "alignValues.py", ["--value_list=length", "--file_path=results/s.json",
                                                 "--c_list=1", "optimize_lambda", "--save_lambda=results/l.json"],
                     done=pipeline.file_done("results/l.json"))
    pipe.add("second", "rewardProcessor.py", ["--file_path=results/s.json", "add_reward", "--value=length"],
             done=pipeline.file_done("never"), kind="scoring", after=[first])
    # held for a minute, so the first job is surely still queued when the second is refused
    settings = settings_file(str(tmp_path), extra=["sbatch_options: [--begin=now+60]"], scoring__gpus=2)
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.execute(pipe, backend="slurm", settings=settings)
    message = str(e.value)
    assert "SLURM refused stage 'second' (scoring)" in message and "kinds.scoring.gpus" in message
    job = message.split("already submitted (")[1].rstrip(")")
    state = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "JobState=CANCELLED" in state


def test_status_falls_back_to_the_job_completion_log(tmp_path, monkeypatch):
    """Once slurmctld has forgotten a job (scontrol: invalid job id), its state comes from `sacct -c`."""
    need_slurm()
    from mapalign import pipeline
    out = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap=exit 3"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    wait_for_jobs([job], timeout=60)
    assert pipeline.job_records(job)[0]["JobState"] == "FAILED"
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    end = time.time() + 10
    while time.time() < end and not pipeline.job_records(job):  # the completion log is written just after the end
        time.sleep(0.2)
    entries = pipeline.job_records(job)
    assert [(e["JobId"], e["JobState"], e["ExitCode"]) for e in entries] == [(job, "FAILED", "3:0")]


def test_resubmitting_while_jobs_wait_keeps_them(tmp_path):
    """Running the command again while its jobs are still queued submits nothing new."""
    need_slurm()
    from test_pipeline import scored_file
    os.makedirs(tmp_path / "results")
    scored_file(tmp_path / "results" / "s.json")
    settings = settings_file(str(tmp_path), extra=["sbatch_options: [--begin=now+120]"])
    args = ["--file_path=results/s.json", "--value_list=length,sentiment", "--dims=2,1", "--num_lambda=2",
            f"--settings={settings}", f"--workdir={tmp_path}"]
    first = submit("submit_MAP-DPO-PPO_comparison.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ids = job_ids(str(tmp_path), "map-comparison")
    try:
        again = submit("submit_MAP-DPO-PPO_comparison.py", *args, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "submitted job" not in again.stdout
        assert again.stdout.count("of the previous submission is still queued or running; keeping it") == 2
        assert job_ids(str(tmp_path), "map-comparison") == ids
        rows, text = status_rows("submit_MAP-DPO-PPO_comparison.py", args, tmp_path)
        assert rows == {"rand-lambda-2D": "PENDING", "rand-lambda-1D": "PENDING"}, text
    finally:
        subprocess.run(["scancel", *ids])
