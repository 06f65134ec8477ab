#!/usr/bin/env python3
#SBATCH --job-name=submit_comparison
#SBATCH --output=submit_comparison-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""Random feasible MAP palettes for the comparison with DPO and PPO: one CPU job per dimension k, each
drawing `num_lambda` λ for the first k values (alignValues.py gen_rand_MAP_lambda, scaling_MAX 6, as the
original's 6D/5D/4D runs).

    python submit/submit_MAP-DPO-PPO_comparison.py --settings=my.yaml --file_path=results/smollm2-135m-builtin.json --value_list=sentiment,harmlessness,length --dims=3,2
"""
import os
import sys


def _repo_root():
    # under `sbatch submit/x.py` this file runs from a copy in SLURM's spool folder: the job's Command= names
    # the original; else look from the folder sbatch was called in
    places = [os.path.abspath(__file__)]
    if os.environ.get("SLURM_JOB_ID"):
        import re
        import subprocess
        job = subprocess.run(["scontrol", "show", "job", os.environ["SLURM_JOB_ID"]], capture_output=True, text=True)
        places += re.findall(r"Command=(\S+)", job.stdout)
    places += [os.environ.get("SLURM_SUBMIT_DIR", ""), os.getcwd()]
    for place in filter(None, places):
        folder = os.path.dirname(place) if place.endswith(".py") else place
        for candidate in (folder, os.path.dirname(folder)):
            if os.path.isfile(os.path.join(candidate, "pipeline.py")):
                return candidate
    sys.exit("error: cannot find the toolkit (pipeline.py); run from the repository or its submit/ folder")


sys.path.insert(0, _repo_root())
import cli  # noqa: E402
import pipeline  # noqa: E402
from errors import InputError  # noqa: E402


def main(file_path, value_list="all", dims="6,5,4", num_lambda=100, scaling_MAX=6, seed=0, save_directory="results",
         name="map-comparison", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the random-λ jobs and submit them (or run them locally, print them, or show their status).

    Args:
        file_path: scored results file (every value of value_list merged in).
        value_list: values in order; dimension k uses the first k ("all": the task's six).
        dims: the dimensions k (the original: 6, 5, 4).
        num_lambda, scaling_MAX, seed: as gen_rand_MAP_lambda (100 λ, scaling_MAX 6).
        save_directory: CSVs go to {save_directory}/rand_MAP_lambda_{k}D.csv.
        name: pipeline name (log folder {log_dir}/{name}, job names {name}:{stage}).
        workdir: folder the stages run in (relative paths resolve there).
        backend: "slurm" (sbatch dependency chain) or "local" (subprocesses, in order).
        dry_run: print the graph and every batch script; submit nothing.
        settings: cluster YAML (default submit/cluster.yaml; copy and edit it).
        status: show each stage's job, state and log instead of submitting (also: `<script> status ...`).
    """
    from values import expand_value_list
    values = expand_value_list(value_list)
    pipeline.check_values(values)
    pipe = pipeline.Pipeline(name, workdir)
    os.chdir(pipe.workdir)
    for k in [int(x) for x in cli.float_list(dims, "dims")]:
        if not 1 <= k <= len(values):
            raise InputError(f"--dims: {k} is not between 1 and the {len(values)} values of --value_list")
        prefix = os.path.join(save_directory, f"rand_MAP_lambda_{k}D")
        pipe.add(f"rand-lambda-{k}D", "alignValues.py",
                 pipeline.flags(value_list=values[:k], file_path=file_path, seed=seed)
                 + ["gen_rand_MAP_lambda", f"--num_lambda={int(num_lambda)}", f"--scaling_MAX={scaling_MAX}",
                    f"--save_prefix={prefix}"],
                 done=pipeline.csv_rows_done(prefix + ".csv", int(num_lambda)), inputs=[file_path])
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
