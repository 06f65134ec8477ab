"""Pipelines: graphs of the toolkit's own command lines, run on SLURM, locally, or printed.

A pipeline is an ordered graph of stages. A stage is one command line of a toolkit script (gendata.py,
rewardProcessor.py, ...) or a job array of them (shards over --start_index/--end_index), with

    kind      the resources it needs: "generation" and "training" (GPU), "scoring" (add_reward of a value
              with a model; GPU by default), "cpu" (model-free values, merge, assess, λ, win rates,
              figures); sized in the settings YAML
    after     the stages it waits for
    inputs    files or folders that must exist before anything is submitted (made by no stage)
    done      completion markers, one per task: how to tell from the files that the task's work is
              finished (a results file whose sidecar says complete, a scored column, a trained model's
              map_training.json, ...)

Backends for the same graph (`execute`):

    slurm     every unfinished stage is submitted with `sbatch --parsable --kill-on-invalid-dep=yes
              --dependency=afterok:<parents' job ids>`, so a failed stage cancels what depends on it
    local     the unfinished stages run one after another as subprocesses (a workstation)
    dry_run   print the graph and every batch script with its sbatch line; submit nothing

Re-running a pipeline is resuming it: finished tasks (by their markers) are skipped, stages whose job of
a previous submission is still pending or running are waited for rather than submitted again, and only
failed or missing work is submitted. `status` shows each stage's job id, state and log.

Job ids and log paths of a submission are kept in `{log_dir}/{pipeline}/jobs.json`.
"""
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from mapalign import REPO_ROOT
from mapalign import records
from mapalign.errors import InputError

ROOT = REPO_ROOT
DEFAULT_SETTINGS = os.path.join(ROOT, "submit", "cluster.yaml")
KINDS = ("generation", "scoring", "training", "cpu")
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


class PipelineError(InputError):
    """A pipeline cannot be built, submitted or run; the message names the input and the fix.
    (An InputError, so cli.main prints it as one `error:` line.)"""


# ---------------------------------------------------------------------------------------------
# Completion markers: what the toolkit leaves behind when a piece of work is finished


@dataclass
class Marker:
    """`check()` is True when the work is finished; `text` says what is checked."""
    check: object
    text: str

    def __call__(self):
        return bool(self.check())


def _complete_results(path):
    return os.path.isfile(path) and records.load_metadata(path).get("complete") is True


def results_done(path):
    """A results file whose metadata sidecar says complete (gendata, MC shards and merged shards)."""
    return Marker(lambda: _complete_results(path), f"{path} complete")


def shard_done(shard_glob, merged_path):
    """A generation shard: its file (matched by a glob when its name holds a λ solved at run time) is
    complete, or the shards were already merged into `merged_path`."""
    import glob
    return Marker(lambda: _complete_results(merged_path) or any(_complete_results(p) for p in glob.glob(shard_glob)),
                  f"{shard_glob} complete (or merged into {merged_path})")


def _holds_value(path, value):
    try:
        recs = records.load_records(path)
    except records.RecordsError:
        return False
    return all(isinstance(r.get(value), (int, float)) and not isinstance(r.get(value), bool) for r in recs)


def value_done(path, value):
    """A reward column: merged into the results file, or scored completely into its temp file (add_reward
    writes the temp file's sidecar last)."""
    from mapalign.merging import temp_reward_path
    temp = temp_reward_path(path, value)
    return Marker(lambda: os.path.isfile(records.metadata_path(temp)) or _holds_value(path, value),
                  f"{value!r} scored for {path}")


def values_merged(path, values):
    """Every value of `values` is a column of the results file."""
    return Marker(lambda: all(_holds_value(path, v) for v in values), f"{path} holds {', '.join(values)}")


def value_scored_with(path, value, model):
    """The merged `value` column was scored with `model` (the sidecar records each scorer's provenance)."""
    def check():
        provenance = ((records.load_metadata(path).get("rewards") or {}).get(value) or {})
        return _holds_value(path, value) and provenance.get("basemodel_for_perplexity") == model
    return Marker(check, f"{value!r} of {path} scored with {model}")


def file_done(path):
    """A file or folder exists (CSV tables, figures, λ files)."""
    return Marker(lambda: os.path.exists(path), f"{path} exists")


def model_done(folder):
    """A trained model folder: its map_training.json is written last (training.py)."""
    return Marker(lambda: os.path.isfile(os.path.join(folder, "map_training.json")),
                  f"{folder}/map_training.json exists")


def csv_rows_done(path, rows):
    """A CSV with at least `rows` data rows (appending CLIs such as gen_rand_MAP_lambda)."""
    def check():
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip()) - 1 >= rows
    return Marker(check, f"{path} has ≥ {rows} rows")


# ---------------------------------------------------------------------------------------------
# The graph


@dataclass
class Stage:
    """One stage: `tasks` holds one argument list per task (one task: a plain job; several: a job array),
    `done` one marker per task."""
    name: str
    script: str
    tasks: list
    done: list
    kind: str = "cpu"
    after: list = field(default_factory=list)
    inputs: list = field(default_factory=list)

    @property
    def is_array(self):
        return len(self.tasks) > 1

    def pending(self):
        """Indices of the tasks whose markers say unfinished."""
        return [i for i, marker in enumerate(self.done) if not marker()]


class Pipeline:
    """An ordered graph of stages (parents are added before their children, so insertion order is a
    topological order). `workdir` is where the commands run (relative paths resolve there)."""

    def __init__(self, name, workdir="."):
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise PipelineError(f"pipeline name {name!r} may hold only letters, digits and _ . + -")
        self.name = name
        self.origin = os.getcwd()  # relative paths given by the user (the settings file) resolve here
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.stages = {}

    def add(self, name, script, args=None, tasks=None, done=None, kind="cpu", after=(), inputs=()):
        """Add a stage running `python {script} {args}` (or a job array: `tasks`, one argument list per
        task, with `done` one marker per task). Returns `name`, for the children's `after`."""
        if name in self.stages:
            raise PipelineError(f"stage {name!r} is defined twice in pipeline {self.name!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.+=,-]+", name):
            raise PipelineError(f"stage name {name!r} may hold only letters, digits and _ . + = , -")
        if kind not in KINDS:
            raise PipelineError(f"stage {name!r}: kind {kind!r} is not one of {KINDS}")
        after = [a for a in after if a]
        unknown = [a for a in after if a not in self.stages]
        if unknown:
            raise PipelineError(f"stage {name!r} waits for {unknown}, which are not (yet) in the pipeline")
        tasks = [list(map(str, args or []))] if tasks is None else [list(map(str, t)) for t in tasks]
        done = done if isinstance(done, list) else [done]
        if len(done) != len(tasks) or any(d is None for d in done):
            raise PipelineError(f"stage {name!r}: give one completion marker per task ({len(tasks)} tasks)")
        self.stages[name] = Stage(name, script, tasks, done, kind, list(after), list(inputs))
        return name

    def children(self, name):
        return [s.name for s in self.stages.values() if name in s.after]

    def descendants(self, name):
        out, todo = set(), [name]
        while todo:
            for child in self.children(todo.pop()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out


def shard_ranges(n, shards):
    """Split prompts [0, n) into `shards` contiguous ranges of near-equal size: [(start, end), ...]."""
    shards = max(1, min(int(shards), n))
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]


# ---------------------------------------------------------------------------------------------
# Settings: one small YAML (submit/cluster.yaml holds the defaults and a commented example)

TOP_KEYS = {"partition", "account", "qos", "time", "mem", "log_dir", "python", "setup", "sbatch_options", "kinds"}
KIND_KEYS = {"cpus", "gpus", "mem", "time"}


def _read_yaml(path):
    import yaml
    if not os.path.isfile(path):
        raise PipelineError(f"settings file not found: {path}; copy submit/cluster.yaml and edit it")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise PipelineError(f"settings file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"settings file {path} must be a mapping of keys to values")
    return data


def _check_keys(data, path):
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise PipelineError(f"settings file {path}: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    kinds = data.get("kinds") or {}
    if not isinstance(kinds, dict):
        raise PipelineError(f"settings file {path}: 'kinds' must map stage kinds {KINDS} to resources")
    for kind, spec in kinds.items():
        if kind not in KINDS:
            raise PipelineError(f"settings file {path}: unknown stage kind 'kinds.{kind}'; allowed: {list(KINDS)}")
        if not isinstance(spec, dict):
            raise PipelineError(f"settings file {path}: 'kinds.{kind}' must be a mapping with keys {sorted(KIND_KEYS)}")
        bad = sorted(set(spec) - KIND_KEYS)
        if bad:
            raise PipelineError(f"settings file {path}: unknown key(s) {bad} in 'kinds.{kind}'; "
                                f"allowed: {sorted(KIND_KEYS)}")
    for key in ("setup", "sbatch_options"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise PipelineError(f"settings file {path}: '{key}' must be a list of lines")


def load_settings(path=None):
    """The defaults (submit/cluster.yaml) overlaid with the user's file `path` (kinds merged per key).

    Returns a dict with every key of TOP_KEYS; `source` names the files read. Raises PipelineError
    for a missing file, invalid YAML, an unknown key or stage kind, or a malformed value.
    """
    defaults = _read_yaml(DEFAULT_SETTINGS)
    _check_keys(defaults, DEFAULT_SETTINGS)
    settings = {key: defaults.get(key) for key in TOP_KEYS}
    settings["kinds"] = {kind: dict((defaults.get("kinds") or {}).get(kind) or {}) for kind in KINDS}
    settings["source"] = [DEFAULT_SETTINGS]
    if path and os.path.abspath(path) != DEFAULT_SETTINGS:
        user = _read_yaml(path)
        _check_keys(user, path)
        for key, value in user.items():
            if key == "kinds":
                for kind, spec in (value or {}).items():
                    settings["kinds"][kind].update(spec or {})
            else:
                settings[key] = value
        settings["source"].append(os.path.abspath(path))
    return settings


def _settings_file(settings):
    return settings["source"][-1]


def require_cluster(settings):
    """What SLURM submission needs beyond the defaults: a partition and sbatch on PATH."""
    if not settings.get("partition"):
        raise PipelineError(f"no partition in the settings ({_settings_file(settings)}): set `partition:` "
                            "(sinfo lists them) in your copy of submit/cluster.yaml and pass --settings=FILE")
    for tool in ("sbatch", "scontrol"):
        if shutil.which(tool) is None:
            raise PipelineError(f"{tool} is not on PATH: run on a SLURM login node (or load its module), or use "
                                "--backend=local / --dry_run=True")


# ---------------------------------------------------------------------------------------------
# Batch scripts


def log_folder(pipe, settings):
    folder = os.path.expanduser(os.path.expandvars(settings.get("log_dir") or "slurm_logs"))
    return os.path.join(pipe.workdir, folder, pipe.name) if not os.path.isabs(folder) else \
        os.path.join(folder, pipe.name)


def sbatch_options(pipe, stage, settings):
    """The #SBATCH options of a stage, each as (option, setting it comes from) for error messages."""
    spec = settings["kinds"].get(stage.kind) or {}
    logs = log_folder(pipe, settings)
    out = [(f"--job-name={pipe.name}:{stage.name}", None),
           (f"--output={logs}/{stage.name}-{'%A_%a' if stage.is_array else '%j'}.log", "log_dir")]
    for key, option in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos")):
        if settings.get(key):
            out.append((f"{option}={settings[key]}", key))
    time = spec.get("time") or settings.get("time")
    if time:
        out.append((f"--time={time}", f"kinds.{stage.kind}.time" if spec.get("time") else "time"))
    mem = spec.get("mem") or settings.get("mem")
    if mem:
        out.append((f"--mem={mem}", f"kinds.{stage.kind}.mem" if spec.get("mem") else "mem"))
    out.append(("--nodes=1", None))
    out.append(("--ntasks=1", None))
    if spec.get("cpus"):
        out.append((f"--cpus-per-task={int(spec['cpus'])}", f"kinds.{stage.kind}.cpus"))
    if spec.get("gpus"):
        out.append((f"--gres=gpu:{int(spec['gpus'])}", f"kinds.{stage.kind}.gpus"))
    for line in settings.get("sbatch_options") or []:
        out.append((str(line), "sbatch_options"))
    return out


def _command(settings, stage, args):
    python = settings.get("python") or sys.executable
    return " ".join([shlex.quote(python), shlex.quote(os.path.join(ROOT, stage.script))]
                    + [shlex.quote(a) for a in args])


def batch_script(pipe, stage, settings, task_ids=None, local=False):
    """The bash script of a stage: #SBATCH lines (not for local runs), the settings' set-up lines (SLURM
    only: module loads and the like belong to the cluster), `cd workdir`, then the command; for a job
    array a `case` on $SLURM_ARRAY_TASK_ID over `task_ids` (default every task)."""
    lines = ["#!/bin/bash"]
    if not local:
        lines += [f"#SBATCH {option}" for option, _ in sbatch_options(pipe, stage, settings)]
    lines += [f"# pipeline {pipe.name}, stage {stage.name} ({stage.kind})"
              + (f", after {', '.join(stage.after)}" if stage.after else ""), "set -euo pipefail"]
    if not local:
        lines += [str(line) for line in settings.get("setup") or []]
    lines.append(f"cd {shlex.quote(pipe.workdir)}")
    if stage.is_array:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for i in (range(len(stage.tasks)) if task_ids is None else task_ids):
            lines.append(f"  {i}) {_command(settings, stage, stage.tasks[i])} ;;")
        lines += ['  *) echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 1 ;;', "esac"]
    else:
        lines.append(_command(settings, stage, stage.tasks[0]))
    return "\n".join(lines) + "\n"


def _array_spec(task_ids):
    return ",".join(str(i) for i in task_ids)


# ---------------------------------------------------------------------------------------------
# Checks before anything runs


def check_scripts(pipe, plan):
    """Every stage that will run must name a toolkit script of this checkout."""
    scripts = {pipe.stages[name].script for name in plan}
    absent = sorted(s for s in scripts if not os.path.isfile(os.path.join(ROOT, s)))
    if absent:
        raise PipelineError(f"script(s) {absent} are not in this checkout ({ROOT}); nothing submitted. Update "
                            "the toolkit, or use --dry_run=True to see the plan")


def check_inputs(pipe, plan):
    """Every input of every stage that will run must exist (inputs are made by no stage)."""
    missing = [(name, path) for name in plan for path in pipe.stages[name].inputs
               if not os.path.exists(os.path.join(pipe.workdir, path))]
    if missing:
        raise PipelineError("missing input(s), nothing submitted: " + "; ".join(
            f"{path} (needed by stage {name})" for name, path in missing))


@contextlib.contextmanager
def _inside(folder):
    """Markers name paths as the commands do, relative to the pipeline's working folder."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def plan_of(pipe):
    """{stage: pending task indices} for the stages with unfinished work, in graph order."""
    with _inside(pipe.workdir):
        return {name: pending for name, stage in pipe.stages.items() if (pending := stage.pending())}


# ---------------------------------------------------------------------------------------------
# SLURM


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def job_records(job_id):
    """The states of a job (one entry per array task) from `scontrol show job -o`, falling back to
    `sacct` (accounting database) or `sacct -c` (job-completion log) once slurmctld has forgotten the job
    (MinJobAge). Entries: dicts with JobId,
    ArrayTaskId (or None), JobState, ExitCode, Reason. [] when neither knows the job."""
    out = _run(["scontrol", "show", "job", "-o", str(job_id)])
    entries = []
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if fields.get("JobState"):
                entries.append({"JobId": fields.get("JobId"), "ArrayTaskId": fields.get("ArrayTaskId"),
                                "JobState": fields["JobState"], "ExitCode": fields.get("ExitCode"),
                                "Reason": fields.get("Reason")})
    if entries:
        return entries
    # the accounting database where there is one, else the job-completion log (jobcomp/filetxt)
    for sacct in (["sacct"], ["sacct", "-c"]):
        out = _run(sacct + ["-n", "-P", "-j", str(job_id), "--format=JobID,State,ExitCode"])
        if out.returncode != 0:
            continue
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 3 and parts[0] and "." not in parts[0]:  # job steps (ID.batch) are not tasks
                task = parts[0].split("_")[1] if "_" in parts[0] else None
                entries.append({"JobId": parts[0], "ArrayTaskId": task, "JobState": parts[1].split()[0],
                                "ExitCode": parts[2], "Reason": None})
        if entries:
            break
    return entries


def _state_path(pipe, settings):
    return os.path.join(log_folder(pipe, settings), "jobs.json")


def load_state(pipe, settings):
    path = _state_path(pipe, settings)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _refusal_hint(message, options):
    """The setting behind SLURM's refusal: match words of its message to the options' settings."""
    text = message.lower()
    rules = (("gres", ".gpus"), ("gpu", ".gpus"), ("memory", "mem"), ("partition", "partition"),
             ("account", "account"), ("qos", "qos"), ("time limit", "time"), ("cpu", ".cpus"),
             ("node configuration", ".cpus"))
    settings = [s for _, s in options if s]
    for word, key in rules:
        if word in text:
            hits = [s for s in settings if s == key or s.endswith(key)]
            if hits:
                return hits
    return settings


def submit_slurm(pipe, settings, plan):
    """Submit the plan's stages in graph order; returns {stage: job id}. A stage whose job of an earlier
    submission is still pending or running is not submitted again: its children wait for that job.
    When sbatch refuses a stage, the jobs submitted so far are cancelled and PipelineError names SLURM's
    message and the setting to change."""
    folder = log_folder(pipe, settings)
    os.makedirs(os.path.join(folder, "scripts"), exist_ok=True)
    previous = load_state(pipe, settings).get("stages", {})
    jobs, submitted, submitted_stages = {}, [], set()
    for name, pending in plan.items():
        stage = pipe.stages[name]
        old = previous.get(name, {}).get("job_id")
        if old and any(e["JobState"] in ACTIVE_STATES for e in job_records(old)):
            if not any(p in submitted_stages for p in stage.after):
                jobs[name] = old
                print(f"{name}: job {old} of the previous submission is still queued or running; keeping it")
                continue
            # it waits for a job that is being replaced (e.g. a failed parent it was not yet cancelled for)
            _run(["scancel", old])
        script = batch_script(pipe, stage, settings, task_ids=pending if stage.is_array else None)
        script_path = os.path.join(folder, "scripts", f"{name}.sh")
        records.write_text_atomic(script, script_path)
        cmd = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
        parents = [jobs[p] for p in stage.after if p in jobs]
        if parents:
            cmd.append("--dependency=afterok:" + ":".join(parents))
        if stage.is_array:
            cmd.append(f"--array={_array_spec(pending)}")
        cmd.append(script_path)
        out = _run(cmd)
        if out.returncode != 0:
            message = (out.stderr or out.stdout).strip()
            for job in submitted:
                _run(["scancel", job])
            hint = _refusal_hint(message, sbatch_options(pipe, stage, settings))
            raise PipelineError(
                f"SLURM refused stage {name!r} ({stage.kind}): {message}. Change "
                f"{' or '.join(hint) if hint else 'the settings'} in {_settings_file(settings)}"
                + (f"; cancelled the {len(submitted)} job(s) already submitted ({', '.join(submitted)})"
                   if submitted else "; nothing was submitted"))
        job = out.stdout.strip().split(";")[0]
        jobs[name] = job
        submitted.append(job)
        submitted_stages.add(name)
        previous[name] = {"job_id": job, "script": script_path, "tasks": pending,
                          "log": os.path.join(folder, f"{name}-{'%A_%a' if stage.is_array else '%j'}.log"),
                          "submitted": records.timestamp()}
        print(f"{name}: submitted job {job}" + (f" (array {_array_spec(pending)})" if stage.is_array else "")
              + (f" after {', '.join(parents)}" if parents else ""))
    records.save_json_atomic({"pipeline": pipe.name, "workdir": pipe.workdir, "stages": previous},
                             _state_path(pipe, settings), indent=2)
    return jobs


def _log_path(template, job_id, task=None):
    return template.replace("%A", str(job_id)).replace("%a", str(task)).replace("%j", str(job_id))


def status(pipe, settings, echo=True):
    """Each stage's completion (from its markers) and its last job's id, state and log.

    Returns a list of dicts: stage, kind, done ("k/n" tasks finished), job_id, state (the worst of its
    tasks: FAILED, CANCELLED, ... or COMPLETED; "complete" when the markers say done and no job is known),
    exit_code, reason, log. Prints a table and names the failed stages when `echo`."""
    state = load_state(pipe, settings).get("stages", {})
    rows = []
    for name, stage in pipe.stages.items():
        with _inside(pipe.workdir):
            finished = len(stage.tasks) - len(stage.pending())
        entry = state.get(name, {})
        job = entry.get("job_id")
        jobs = job_records(job) if job and shutil.which("scontrol") else []
        bad = [e for e in jobs if e["JobState"] not in ("COMPLETED",)]
        worst = bad[0] if bad else (jobs[0] if jobs else None)
        log = entry.get("log")
        if log and worst:
            log = _log_path(log, job, worst.get("ArrayTaskId"))
        if worst and finished == len(stage.tasks) and worst["JobState"] not in ACTIVE_STATES | {"COMPLETED"}:
            worst = None  # its outputs are complete now (made after that job, e.g. by hand): no failure to report
        rows.append({"stage": name, "kind": stage.kind, "done": f"{finished}/{len(stage.tasks)}", "job_id": job,
                     "state": worst["JobState"] if worst else ("complete" if finished == len(stage.tasks)
                                                               else "not submitted"),
                     "exit_code": worst.get("ExitCode") if worst else None,
                     "reason": worst.get("Reason") if worst else None, "log": log})
    if echo:
        width = max(len(r["stage"]) for r in rows) + 2
        print(f"pipeline {pipe.name} ({pipe.workdir})")
        print(f"  {'stage':<{width}}{'kind':<12}{'done':<7}{'job':<10}{'state':<16}log")
        for r in rows:
            print(f"  {r['stage']:<{width}}{r['kind']:<12}{r['done']:<7}{str(r['job_id'] or '-'):<10}"
                  f"{r['state']:<16}{r['log'] or '-'}")
        for r in rows:
            if r["state"] in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"):
                print(f"failed: stage {r['stage']} (job {r['job_id']}, {r['state']}, exit {r['exit_code']}); "
                      f"log {r['log']}")
        cancelled = [r["stage"] for r in rows if r["state"] == "CANCELLED"]
        if cancelled:
            print(f"cancelled (a stage they wait for failed, or scancel): {', '.join(cancelled)}. "
                  "Fix the failure and run the same command again to resume.")
    return rows


# ---------------------------------------------------------------------------------------------
# Local and dry runs


def run_local(pipe, settings, plan):
    """Run the plan's stages in graph order as subprocesses (tasks one after another), logging to
    `{log_dir}/{pipeline}/{stage}-local[_task].log`. A failed stage skips its descendants; the others
    still run. Raises PipelineError naming the failed stages and their logs at the end."""
    folder = log_folder(pipe, settings)
    os.makedirs(folder, exist_ok=True)
    failed, skipped = {}, set()
    for name, pending in plan.items():
        stage = pipe.stages[name]
        if name in skipped:
            print(f"{name}: skipped (a stage it waits for failed)")
            continue
        script = batch_script(pipe, stage, settings, task_ids=pending if stage.is_array else None, local=True)
        for i in pending:
            log = os.path.join(folder, f"{name}-local{f'_{i}' if stage.is_array else ''}.log")
            print(f"{name}{f' [task {i}]' if stage.is_array else ''}: running (log {log})", flush=True)
            env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i))
            started = time.time()
            with open(log, "w", encoding="utf-8") as f:
                rc = subprocess.run(["bash", "-c", script], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
            print(f"{name}{f' [task {i}]' if stage.is_array else ''}: {'done' if rc == 0 else 'failed'} "
                  f"in {time.time() - started:.1f} s", flush=True)
            if rc != 0:
                failed[name] = log
                skipped |= pipe.descendants(name)
                print(f"{name}: FAILED (exit {rc}); log {log}")
                break
    if failed:
        raise PipelineError("stage(s) failed: " + "; ".join(f"{n} (log {p})" for n, p in failed.items())
                            + (f"; not run: {', '.join(sorted(skipped))}" if skipped else "")
                            + ". Fix it and run the same command again to resume.")


def dry_run(pipe, settings, plan):
    """Print the dependency graph and every batch script with the sbatch line that would submit it."""
    print(f"# pipeline {pipe.name}: {len(pipe.stages)} stages, {len(plan)} with work to do (workdir {pipe.workdir})")
    for name, stage in pipe.stages.items():
        todo = plan.get(name, [])
        what = "complete" if not todo else (f"{len(todo)}/{len(stage.tasks)} tasks to run" if stage.is_array
                                             else "to run")
        print(f"#   {name} [{stage.kind}] {what}" + (f" <- {', '.join(stage.after)}" if stage.after else ""))
    for name, pending in plan.items():
        stage = pipe.stages[name]
        parents = [p for p in stage.after if p in plan]
        line = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
        if parents:
            line.append("--dependency=afterok:" + ":".join(f"<{p}>" for p in parents))
        if stage.is_array:
            line.append(f"--array={_array_spec(pending)}")
        line.append(f"{log_folder(pipe, settings)}/scripts/{name}.sh")
        print(f"\n# ---- {name}\n# {' '.join(line)}")
        print(batch_script(pipe, stage, settings, task_ids=pending if stage.is_array else None), end="")


def execute(pipe, backend="slurm", dry=False, settings=None, show_status=False):
    """Run `pipe` on a backend ("slurm" or "local"), or print it (`dry`), or show its status.

    settings: path of the cluster YAML (default: submit/cluster.yaml, the defaults).
    Everything is checked before anything runs: the settings (and for SLURM a partition and sbatch on
    PATH), the inputs of every stage that will run. Returns {stage: job id} for SLURM, else None
    (status: its rows)."""
    config = load_settings(settings and os.path.join(pipe.origin, os.path.expanduser(settings)))
    if show_status:
        return status(pipe, config)
    if backend not in ("slurm", "local"):
        raise PipelineError(f"--backend must be 'slurm' or 'local'; got {backend!r}")
    plan = plan_of(pipe)
    if dry:
        try:
            check_inputs(pipe, plan)
        except PipelineError as e:  # a preview still shows the plan; a submission would stop here
            print(f"# warning: {e}")
        return dry_run(pipe, config, plan)
    check_inputs(pipe, plan)
    check_scripts(pipe, plan)
    if not plan:
        print(f"pipeline {pipe.name}: every stage is complete; nothing to do")
        return {} if backend == "slurm" else None
    skipped = [n for n in pipe.stages if n not in plan]
    if skipped:
        print(f"complete, skipped: {', '.join(skipped)}")
    if backend == "local":
        return run_local(pipe, config, plan)
    require_cluster(config)
    return submit_slurm(pipe, config, plan)


# ---------------------------------------------------------------------------------------------
# Building blocks of the MAP pipelines (submit/*.py compose these)


def check_values(values):
    """Every value must be registered (mapalign.values); one error naming the unknown ones."""
    from mapalign import values as registry
    try:
        for v in values:
            registry.get_spec(v)
    except KeyError as e:
        raise PipelineError(e.args[0] if e.args else str(e)) from None


def scoring_kind(value):
    """"cpu" for a value scored without a neural model (its kind is registered model_free: length, diversity,
    sentiment, profanity), so its add_reward job needs no GPU; else "scoring"."""
    from mapalign import values as registry
    return "cpu" if registry.KINDS[registry.get_spec(value).kind].model_free else "scoring"


def count_prompts(data_name, num_prompts=None, seed=0, **prompt_options):
    """How many prompts a generation will cover: loads the source (so a data set that is not available
    fails here, before anything is submitted) and applies num_prompts."""
    from mapalign.prompts import load_prompts
    try:
        n = len(load_prompts(data_name, seed=seed, **prompt_options))
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"prompt source {data_name!r} cannot be loaded here: {e}") from None
    return min(n, int(num_prompts)) if num_prompts else n


def base_name(model, data_name):
    """`{model short name}-{data tag}`, the stem gendata gives the outputs of this model × prompt set."""
    from mapalign.models import model_short_name
    from mapalign.prompts import data_tag
    return f"{model_short_name(model)}-{data_tag(data_name)}"


def flags(**options):
    """`--key=value` arguments for the options that are not None (lists comma-joined)."""
    out = []
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out.append(f"--{key}={value}")
    return out


def add_generation(pipe, name, model, data_name, save_directory, n_prompts, shards=1, gen_options=None,
                   after=(), inputs=()):
    """Generation from `model` over the first `n_prompts` prompts: one job, or a job array of `shards`
    shards (--start_index/--end_index) joined by mergeProcessor.py merge_gendata_bypattern.

    gen_options: further gendata.py flags (dict, e.g. num_prompts, max_new_tokens, seed, device).
    Returns (last stage name, results path `{save_directory}/{base}.json`)."""
    base = base_name(model, data_name)
    out = os.path.join(save_directory, f"{base}.json")
    common = flags(basemodel_name=model, data_name=data_name, save_directory=save_directory,
                   **(gen_options or {}))
    if int(shards) <= 1:
        pipe.add(name, "gendata.py", common + ["generate_from_original_model"], done=results_done(out),
                 kind="generation", after=after, inputs=inputs)
        return name, out
    ranges = shard_ranges(n_prompts, shards)
    temp = os.path.join(save_directory, "temp")
    pipe.add(name, "gendata.py",
             tasks=[common + ["generate_from_original_model", f"--start_index={s}", f"--end_index={e}"]
                    for s, e in ranges],
             done=[shard_done(os.path.join(temp, f"{base}_{s}to{e}.json"), out) for s, e in ranges],
             kind="generation", after=after, inputs=inputs)
    merge = pipe.add(f"{name}-merge", "mergeProcessor.py",
                     ["merge_gendata_bypattern", f"--json_file_pattern={os.path.join(temp, base)}_*to*.json"],
                     done=results_done(out), after=[name])
    return merge, out


def add_mc_generation(pipe, name, model, data_name, save_directory, n_prompts, lam, values, output_path,
                      shards=1, mc_options=None, gen_options=None, after=()):
    """MAP-D: MC-aligned generation (a job array over prompt shards) with λ given as numbers or as
    "@FILE" (solved by an earlier stage), merged into `output_path`. Returns (merge stage, output_path).

    The shards go to `{save_directory}/temp/` under the original's names, which hold λ; with "@FILE" λ is
    unknown until the pipeline runs, so give each λ file its own save_directory (shards of another λ there
    would be taken for this one's)."""
    base = base_name(model, data_name)
    temp = os.path.join(save_directory, "temp")
    val = ",".join(values)
    lam_glob = "*" if str(lam).startswith("@") else records.lam_string([float(x) for x in str(lam).split(",")])
    common = flags(basemodel_name=model, data_name=data_name, save_directory=save_directory, **(gen_options or {}))
    ranges = shard_ranges(n_prompts, shards)
    pipe.add(name, "gendata.py",
             tasks=[common + ["generate_from_MC_aligned_model", f"--lam_list={lam}", f"--value_list={val}",
                              f"--start_index={s}", f"--end_index={e}"] + flags(**(mc_options or {}))
                    for s, e in ranges],
             done=[shard_done(os.path.join(temp, f"{base}_lam={lam_glob}_val={val}_{s}to{e}.json"), output_path)
                   for s, e in ranges],
             kind="generation", after=after)
    merge = pipe.add(f"{name}-merge", "mergeProcessor.py",
                     ["merge_gendata_bypattern",
                      f"--json_file_pattern={os.path.join(temp, base)}_lam={lam_glob}_val={val}_*to*.json",
                      f"--output_path={output_path}"], done=results_done(output_path), after=[name])
    return merge, output_path


def add_rewards(pipe, prefix, results_path, values, after=(), basemodel_for_perplexity=None, assess=True,
                evaluation_mode=True, reward_options=None):
    """`add_reward` per value as parallel jobs (kind "scoring", or "cpu" for values without a model) →
    merge_added_rewards → (assess_original_value, writing `{stem}_realC-levels.csv`). Returns the name of
    the last stage."""
    check_values(values)
    scored = []
    for value in values:
        extra = flags(basemodel_for_perplexity=basemodel_for_perplexity) if value == "perplexity" else []
        scored.append(pipe.add(f"{prefix}-reward-{value}", "rewardProcessor.py",
                               flags(file_path=results_path, **(reward_options or {}))
                               + ["add_reward", f"--value={value}"] + extra,
                               done=value_done(results_path, value), kind=scoring_kind(value), after=after))
    last = pipe.add(f"{prefix}-merge-rewards", "mergeProcessor.py",
                    ["merge_added_rewards", f"--original_file_path={results_path}"],
                    done=values_merged(results_path, values), after=scored)
    if assess:
        stem = records.file_stem(results_path)
        last = pipe.add(f"{prefix}-assess", "rewardProcessor.py",
                        flags(file_path=results_path, values_to_evaluate=values)
                        + ["assess_original_value", f"--evaluation_mode={evaluation_mode}"],
                        done=file_done(stem + "_realC-levels.csv"), after=[last])
    return last


def add_lambda(pipe, name, results_path, values, c_list, lambda_path, after=(), align_options=None):
    """Solve λ for palette `c_list` on the scored results file (alignValues.py optimize_lambda); the
    λ goes to `lambda_path`, read by later stages as `--lam_list=@{lambda_path}`. An infeasible palette
    fails this stage, which cancels what needs λ."""
    return pipe.add(name, "alignValues.py",
                    flags(value_list=values, file_path=results_path, c_list=c_list, **(align_options or {}))
                    + ["optimize_lambda", f"--save_lambda={lambda_path}"],
                    done=file_done(lambda_path), after=after)


def add_win_rates(pipe, name, model_files, base_file, file_prefix, after=()):
    """Win rates of the aligned files against the base file (plot/plot_cal_winrate.py), JSON + LaTeX."""
    first = pipe.add(name, "plot/plot_cal_winrate.py",
                     ["collect_multiple_results", f"--model_files={','.join(model_files)}",
                      f"--base_model_file={base_file}", f"--file_prefix={file_prefix}"],
                     done=file_done(file_prefix + ".json"), after=after)
    return pipe.add(f"{name}-table", "plot/plot_cal_winrate.py",
                    ["render_latex_table", f"--win_rate_results_list={file_prefix}.json",
                     f"--file_prefix={file_prefix}"], done=file_done(file_prefix + ".tex"), after=[first])


def stage_options_of(stage_options, stages):
    """--stage_options (None or {stage: {flag: value}}) as a dict over `stages`; PipelineError naming the
    stages for anything else."""
    options = stage_options or {}
    if not isinstance(options, dict) or set(options) - set(stages):
        raise PipelineError(f"--stage_options must map stages {list(stages)} to flag dicts; got {stage_options!r}")
    return options


def add_iterations(pipe, script, stages, iterations, args_of, done_of, kinds):
    """The stages of an iterated trainer (ALT, DPA): for i = 1..iterations, stage s runs
    `python {script} {s} {args_of(i, s)}` as stage "{s}-{i}", done when done_of(i, s) says so, sized by
    kinds[s]. Within an iteration each stage waits for the one before; iteration i's first stage waits
    for iteration i-1's "train"; the last stage (a validation) is waited for by nothing."""
    previous_train = None
    for i in range(1, int(iterations) + 1):
        after = [previous_train]
        for stage in stages:
            name = pipe.add(f"{stage}-{i}", script, [stage] + args_of(i, stage), done=done_of(i, stage),
                            kind=kinds[stage], after=after)
            if stage == "train":
                previous_train = name
            if stage != stages[-1]:
                after = [name]


def add_histograms(pipe, name, results_path, after=()):
    """The reward histograms of a results file (plot/plot_reward_dist.py plot_hist)."""
    stem = records.file_stem(results_path)
    return pipe.add(name, "plot/plot_reward_dist.py", ["plot_hist", f"--json_file={results_path}"],
                    done=file_done(stem + "_reward_hist.pdf"), after=after)


# ---------------------------------------------------------------------------------------------
# What every submit/ script shares: its entry point, its first step and the flags of `execute`

# Every script's `main(..., name, workdir, backend, dry_run, settings, status)` ends with
# `execute(pipe, backend, dry_run, settings, status)`; `main` below appends this to its docstring's Args
# so `--help` explains them ({script}: the script's file name).
COMMON_FLAGS_DOC = """\
        name: pipeline name (log folder {{log_dir}}/{{name}}, job names {{name}}:{{stage}}).
        workdir: folder the stages run in (relative paths resolve there).
        backend: "slurm" (sbatch dependency chain) or "local" (subprocesses, in order).
        dry_run: print the graph and every batch script; submit nothing.
        settings: cluster YAML (default submit/cluster.yaml; copy and edit it).
        status: show each stage's job, state and log instead of submitting (also: `{script} status ...`)."""


def start(name, workdir):
    """The empty Pipeline `name` of a submit/ script, run in `workdir`; the process moves there too, so
    the completion markers and prompt files it checks resolve where the stages will run."""
    pipe = Pipeline(name, workdir)
    os.chdir(pipe.workdir)
    return pipe


def main(build):
    """Entry point of a submit/ script: `python submit/x.py [status] --flags`. A leading `status`
    word means --status=True; the rest goes to `build` through cli.main (fire). `build`'s docstring (an
    Args section ending with its own flags) gains COMMON_FLAGS_DOC."""
    from mapalign import cli
    script = os.path.basename(sys.argv[0])
    build.__doc__ = build.__doc__.rstrip() + "\n" + COMMON_FLAGS_DOC.format(script=script) + "\n    "
    if len(sys.argv) > 1 and sys.argv[1] == "status":
        sys.argv = [sys.argv[0]] + sys.argv[2:] + ["--status=True"]
    cli.main(build)
