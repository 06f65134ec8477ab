#!/usr/bin/env python3
#SBATCH --job-name=submit_jobs
#SBATCH --output=submit_jobs-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""The MAP pipeline as a SLURM dependency chain (also: `sbatch submit/submit_jobs.py ...`, or --backend=local).

    generation (a job array over prompt shards) → merge shards → add_reward per value (parallel jobs)
    → merge rewards → assess → histograms
    with --c_list: → λ for the palette → MAP-D: MC-aligned generation (array) → merge → rewards → merge
    → assess; with --aligners=mc,ppo also MAP-F: trainPPO → generation from the trained model → rewards
    → merge → assess; then win rates of every aligned file against the base file.

    python submit/submit_jobs.py --settings=my-cluster.yaml --value_list=sentiment,harmlessness --c_list=0.5,0.97
    python submit/submit_jobs.py status --settings=my-cluster.yaml --value_list=sentiment,harmlessness --c_list=0.5,0.97
"""
import os

from mapalign import pipeline
from mapalign.errors import InputError


def main(value_list="sentiment,harmlessness", c_list=None, basemodel_name="smollm2-135m", data_name="builtin",
         save_directory="results", num_prompts=None, shards=1, max_new_tokens=None, seed=0, aligners="mc",
         MC_nsamples=16, mc_shards=None, ppo_options=None, figures=True, name="map", workdir=".", backend="slurm",
         dry_run=False, settings=None, status=False):
    """Build the MAP pipeline and submit it (or run it locally, print it, or show its status).

    Args:
        value_list: values to score and align (comma-separated registered names).
        c_list: the palette, one level per value; without it the pipeline stops after assessing the base model.
        basemodel_name, data_name, num_prompts, max_new_tokens, seed: as gendata.py.
        save_directory: results folder (aligned files go to {save_directory}/MAP-D and MAP-F).
        shards: generation jobs (a job array over --start_index/--end_index); mc_shards for MAP-D (default: shards).
        aligners: "mc" (MAP-D), "ppo" (MAP-F) or "mc,ppo".
        MC_nsamples: samples per prompt of MC decoding (16, as the original pipeline).
        ppo_options: further trainPPO.py flags as a dict, e.g. "{use_lora: True, max_steps: 100}".
        figures: draw the base file's reward histograms.
    """
    from mapalign import arguments
    values = arguments.str_list(value_list, "value_list")
    aligner_list = arguments.str_list(aligners, "aligners")
    if set(aligner_list) - {"mc", "ppo"}:
        raise InputError(f"--aligners takes mc, ppo or mc,ppo; got {aligners!r}")
    pipe = pipeline.start(name, workdir)
    n = pipeline.count_prompts(data_name, num_prompts, seed=seed)
    gen_options = {"num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "seed": seed}
    gen, base_file = pipeline.add_generation(pipe, "generate", basemodel_name, data_name, save_directory, n,
                                             shards, gen_options)
    assessed = pipeline.add_rewards(pipe, "base", base_file, values, after=[gen],
                                    basemodel_for_perplexity=basemodel_name, evaluation_mode=False)
    if figures:
        pipeline.add_histograms(pipe, "base-histograms", base_file, after=[assessed])
    if c_list is None:
        pipeline.execute(pipe, backend, dry_run, settings, status)
        return

    c = arguments.float_list(c_list, "c_list")
    if len(c) != len(values):
        raise InputError(f"--c_list has {len(c)} levels but --value_list has {len(values)} values")
    palette = ",".join(f"{x:g}" for x in c)
    tag = f"c={palette}_val={','.join(values)}"
    lam_file = os.path.join(save_directory, f"{os.path.basename(base_file)[:-5]}_{tag}.lambda.json")
    lam = pipeline.add_lambda(pipe, "lambda", base_file, values, palette, lam_file, after=[assessed])
    aligned, finals = [], []
    if "mc" in aligner_list:
        folder = os.path.join(save_directory, "MAP-D")
        out = os.path.join(folder, f"{os.path.basename(base_file)[:-5]}_{tag}.json")
        merged, _ = pipeline.add_mc_generation(  # shards of each palette in their own folder: λ is in their names
            pipe, "mapd-generate", basemodel_name, data_name, os.path.join(folder, tag), n, f"@{lam_file}", values, out,
            shards=mc_shards or shards, mc_options={"MC_nsamples": MC_nsamples}, gen_options=gen_options, after=[lam])
        finals.append(pipeline.add_rewards(pipe, "mapd", out, values, after=[merged],
                                           basemodel_for_perplexity=basemodel_name))
        aligned.append(out)
    if "ppo" in aligner_list:
        from mapalign import training
        model_dir = training.sanitize_save_path(
            os.path.join("modelsPPO", f"{os.path.basename(base_file)[:-5]}-MAP-F_{tag}"))
        train = pipe.add("mapf-train", "trainPPO.py",
                         pipeline.flags(lam_list=f"@{lam_file}", value_list=values, model_name=basemodel_name,
                                        data_name=data_name, save_path=model_dir, seed=seed,
                                        max_prompts=num_prompts, **(ppo_options or {})),
                         done=pipeline.model_done(model_dir), kind="training", after=[lam])
        gen_f, out = pipeline.add_generation(pipe, "mapf-generate", model_dir, data_name,
                                             os.path.join(save_directory, "MAP-F"), n, shards, gen_options,
                                             after=[train])
        finals.append(pipeline.add_rewards(pipe, "mapf", out, values, after=[gen_f],
                                           basemodel_for_perplexity=basemodel_name))
        aligned.append(out)
    pipeline.add_win_rates(pipe, "winrates", aligned, base_file,
                           os.path.join(save_directory, f"winrates_{tag}"), after=finals)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
