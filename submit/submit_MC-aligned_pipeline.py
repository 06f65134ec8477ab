#!/usr/bin/env python3
#SBATCH --job-name=submit_MC
#SBATCH --output=submit_MC-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""MAP-D for a given λ as a SLURM chain: MC-aligned generation (a job array over prompt shards) → merge
shards → add_reward per value (parallel jobs) → merge → assess (evaluation mode).

    python submit/submit_MC-aligned_pipeline.py --settings=my.yaml --value_list=sentiment,harmlessness --lam_list=2.09,8.61
    python submit/submit_MC-aligned_pipeline.py ... --lam_list=@results/x.lambda.json   # from alignValues --save_lambda
"""
import os

from mapalign import arguments
from mapalign import pipeline
from mapalign import records
from mapalign.errors import InputError


def main(lam_list, value_list, basemodel_name="smollm2-135m", data_name="builtin", save_directory="results",
         num_prompts=None, shards=4, MC_nsamples=16, max_new_tokens=None, seed=0, evaluate_values=None,
         name="mapd", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the MAP-D pipeline and submit it (or run it locally, print it, or show its status).

    Args:
        lam_list: λ, one per value (numbers), or "@FILE" written by alignValues.py optimize_lambda --save_lambda.
        value_list: the aligned values (comma-separated).
        basemodel_name, data_name, num_prompts, max_new_tokens, seed: as gendata.py.
        save_directory: results folder; the merged file is {base}_lam={λ}_val={values}.json there (the original
            name; with "@FILE" the λ part is the file's stem).
        shards: MC-decoding jobs (array over --start_index/--end_index).
        MC_nsamples: samples per prompt (16, as the original pipeline).
        evaluate_values: values to score on the aligned file (default: value_list).
    """
    values = arguments.str_list(value_list, "value_list")
    evaluated = arguments.str_list(evaluate_values, "evaluate_values") if evaluate_values else values
    if str(lam_list).startswith("@"):
        lam, lam_tag = str(lam_list), os.path.basename(str(lam_list)[1:]).replace(".json", "")
    else:
        numbers = arguments.float_list(lam_list, "lam_list")
        lam, lam_tag = ",".join(str(x) for x in numbers), records.lam_string(numbers)
    if not lam.startswith("@") and len(lam.split(",")) != len(values):
        raise InputError(f"--lam_list has {len(lam.split(','))} entries but --value_list has {len(values)} values")
    pipe = pipeline.start(name, workdir)
    n = pipeline.count_prompts(data_name, num_prompts, seed=seed)
    base = pipeline.base_name(basemodel_name, data_name)
    out = os.path.join(save_directory, f"{base}_lam={lam_tag}_val={','.join(values)}.json")
    # shards of a λ file in their own folder: its λ (in the shard names) is known only when the jobs run
    shard_directory = os.path.join(save_directory, f"mc_{lam_tag}") if lam.startswith("@") else save_directory
    merged, _ = pipeline.add_mc_generation(
        pipe, "mc-generate", basemodel_name, data_name, shard_directory, n, lam, values, out, shards=shards,
        mc_options={"MC_nsamples": MC_nsamples},
        gen_options={"num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "seed": seed})
    pipeline.add_rewards(pipe, "mc", out, evaluated, after=[merged], basemodel_for_perplexity=basemodel_name)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
