#!/usr/bin/env python3
#SBATCH --job-name=submit_DPO
#SBATCH --output=submit_DPO-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""The DPO baseline grid as SLURM chains, one per (β, harmless ratio p): trainDPO.py train_dpo →
generation from the DPO model → add_reward per value (parallel jobs) → merge → assess (evaluation mode).

    python submit/submit_DPO_job.py --settings=my.yaml --betas=0.1,0.5 --harmless_ratios=0.0,0.5,1.0 --value_list=sentiment,harmlessness
"""
import os

from mapalign import arguments
from mapalign import pipeline


def main(value_list, betas="0.1,0.5", harmless_ratios="0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
         sample_size=2000, model_name="smollm2-135m", data_name="builtin", save_directory="results/DPO",
         data_source_path=None, num_prompts=None, shards=1, max_new_tokens=None, seed=0, dpo_options=None,
         name="dpo", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the DPO grid and submit it (or run it locally, print it, or show its status).

    Args:
        value_list: values scored on each DPO model's generations (perplexity under model_name).
        betas, harmless_ratios: the grid (the original: β 0.1, 0.5 × p 0.0..1.0).
        sample_size, model_name, data_source_path, seed: as trainDPO.py train_dpo (models go to
            modelsDPO/{model}-{n}sample-{β}beta-{p}harmless).
        data_name, num_prompts, max_new_tokens, shards: the evaluation generation.
        save_directory: where the generations go.
        dpo_options: further train_dpo flags as a dict, e.g. "{use_lora: True}".
    """
    from mapalign.models import model_short_name
    values = arguments.str_list(value_list, "value_list")
    pipe = pipeline.start(name, workdir)
    n = pipeline.count_prompts(data_name, num_prompts, seed=seed)
    gen_options = {"num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "seed": seed}
    for beta in arguments.float_list(betas, "betas"):
        for p in arguments.float_list(harmless_ratios, "harmless_ratios"):
            tag = f"b{beta}-p{p}"
            model_dir = os.path.join("modelsDPO", f"{model_short_name(model_name)}-{int(sample_size)}sample-{beta}beta-"
                                                  f"{p}harmless")
            train = pipe.add(f"{tag}-train", "trainDPO.py",
                             ["train_dpo"] + pipeline.flags(sample_size=int(sample_size), beta=beta, harmless_ratio=p,
                                                            model_name=model_name, save_path=model_dir, seed=seed,
                                                            data_source_path=data_source_path, **(dpo_options or {})),
                             done=pipeline.model_done(model_dir), kind="training",
                             inputs=[data_source_path] if data_source_path else [])
            gen, out = pipeline.add_generation(pipe, f"{tag}-generate", model_dir, data_name, save_directory, n,
                                               shards, gen_options, after=[train])
            pipeline.add_rewards(pipe, tag, out, values, after=[gen], basemodel_for_perplexity=model_name)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
