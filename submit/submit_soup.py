#!/usr/bin/env python3
#SBATCH --job-name=submit_soup
#SBATCH --output=submit_soup-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""DPO-Soup as SLURM chains: the helpful-only (p = 0) and harmless-only (p = 1) DPO models (trained unless
already there) → getDPOsoup.py soup per α → generation from each soup → add_reward per value (parallel
jobs) → merge → assess (evaluation mode).

    python submit/submit_soup.py --settings=my.yaml --beta=0.1 --alphas=0.1,0.5,0.9 --value_list=sentiment,harmlessness
"""
import os

from mapalign import arguments
from mapalign import pipeline


def main(value_list, alphas="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", beta=0.1, sample_size=2000,
         model_name="smollm2-135m", data_name="builtin", save_directory="results/soup", data_source_path=None,
         num_prompts=None, shards=1, max_new_tokens=None, seed=0, dpo_options=None, lora=False, name="soup",
         workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the soup pipeline and submit it (or run it locally, print it, or show its status).

    Args:
        value_list: values scored on each soup's generations (perplexity under model_name).
        alphas: soup factors α (the original: 0.1..0.9); soups go to
            modelsDPO/soup/{model}-{n}sample-{β}beta-{α}soup.
        beta, sample_size, model_name, data_source_path, seed, dpo_options: the two DPO runs (as submit_DPO_job.py).
        lora: soup LoRA adapters instead of full weights (train the DPO models with "{use_lora: True}").
        data_name, num_prompts, max_new_tokens, shards: the evaluation generation.
        save_directory: where the generations go.
    """
    from mapalign.models import model_short_name
    values = arguments.str_list(value_list, "value_list")
    pipe = pipeline.start(name, workdir)
    n = pipeline.count_prompts(data_name, num_prompts, seed=seed)
    beta = float(beta)
    stem = f"{model_short_name(model_name)}-{int(sample_size)}sample-{beta}beta"
    trained = []
    for p in (0.0, 1.0):
        model_dir = os.path.join("modelsDPO", f"{stem}-{p}harmless")
        args = pipeline.flags(sample_size=int(sample_size), beta=beta, harmless_ratio=p, model_name=model_name,
                              save_path=model_dir, seed=seed, data_source_path=data_source_path, **(dpo_options or {}))
        trained.append(pipe.add(f"dpo-p{p}-train", "trainDPO.py", ["train_dpo"] + args,
                                done=pipeline.model_done(model_dir), kind="training",
                                inputs=[data_source_path] if data_source_path else []))
    gen_options = {"num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "seed": seed}
    for alpha in arguments.float_list(alphas, "alphas"):
        soup_dir = os.path.join("modelsDPO", "soup", f"{stem}-{alpha}soup")
        soup = pipe.add(f"soup{alpha}", "getDPOsoup.py",
                        ["soup"] + pipeline.flags(basemodel_name=model_name, sample_size=int(sample_size), beta=beta,
                                                  harmless_lambda=alpha, save_path=soup_dir, lora=lora),
                        done=pipeline.file_done(soup_dir), kind="cpu", after=trained)
        gen, out = pipeline.add_generation(pipe, f"soup{alpha}-generate", soup_dir, data_name, save_directory, n,
                                           shards, gen_options, after=[soup])
        pipeline.add_rewards(pipe, f"soup{alpha}", out, values, after=[gen], basemodel_for_perplexity=model_name)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
