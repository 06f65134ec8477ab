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

from mapalign import arguments
from mapalign import pipeline
from mapalign.errors import InputError


def main(file_path, value_list="all", dims="6,5,4", num_lambda=100, scaling_MAX=6, seed=0, save_directory="results",
         name="map-comparison", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the random-λ jobs and submit them (or run them locally, print them, or show their status).

    Args:
        file_path: scored results file (every value of value_list merged in).
        value_list: values in order; dimension k uses the first k ("all": the task's six).
        dims: the dimensions k (the original: 6, 5, 4).
        num_lambda, scaling_MAX, seed: as gen_rand_MAP_lambda (100 λ, scaling_MAX 6).
        save_directory: CSVs go to {save_directory}/rand_MAP_lambda_{k}D.csv.
    """
    from mapalign.values import expand_value_list
    values = expand_value_list(value_list)
    pipeline.check_values(values)
    pipe = pipeline.start(name, workdir)
    for k in [int(x) for x in arguments.float_list(dims, "dims")]:
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
