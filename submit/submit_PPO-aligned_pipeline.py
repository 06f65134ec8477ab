#!/usr/bin/env python3
#SBATCH --job-name=submit_PPO
#SBATCH --output=submit_PPO-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""MAP-F for a given λ as a SLURM chain: trainPPO.py → generation from the trained model (job array) →
merge shards → add_reward per value (parallel jobs; perplexity under the base model) → merge → assess
(evaluation mode).

    python submit/submit_PPO-aligned_pipeline.py --settings=my.yaml --value_list=sentiment,harmlessness --lam_list=0.8,1.5
"""
import os

from mapalign import arguments
from mapalign import pipeline
from mapalign.errors import InputError


def main(lam_list, value_list, model_name="smollm2-135m", data_name="builtin", save_directory="results/MAP-F",
         save_path=None, num_prompts=None, shards=1, max_new_tokens=None, seed=0, evaluate_values=None,
         ppo_options=None, name="mapf", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the MAP-F pipeline and submit it (or run it locally, print it, or show its status).

    Args:
        lam_list: λ, one per value (numbers), or "@FILE" from alignValues.py optimize_lambda --save_lambda.
        value_list: the aligned values (comma-separated).
        model_name, data_name, seed: as trainPPO.py (the policy p0 and its prompts).
        save_path: the trained model's folder (default modelsPPO/{model}-{data}-lam_{λ}-val_{values}).
        save_directory: where the trained model's generations go.
        num_prompts, max_new_tokens, shards: evaluation generation (prompt count, length, job-array shards).
        evaluate_values: values scored on the generations (default value_list; "perplexity" is scored
            under model_name, the base model).
        ppo_options: further trainPPO.py flags as a dict, e.g. "{use_lora: True, learning_rate: 1e-5}".
    """
    from mapalign import training
    from mapalign.models import model_short_name
    from mapalign.prompts import data_tag
    values = arguments.str_list(value_list, "value_list")
    evaluated = arguments.str_list(evaluate_values, "evaluate_values") if evaluate_values else values
    pipeline.check_values(values)
    pipe = pipeline.start(name, workdir)
    n = pipeline.count_prompts(data_name, num_prompts, seed=seed)
    if str(lam_list).startswith("@"):
        lam = str(lam_list)
        if save_path is None:
            raise InputError("with --lam_list=@FILE give --save_path (the default model folder's name holds λ)")
    else:
        numbers = arguments.float_list(lam_list, "lam_list")
        lam = ",".join(str(x) for x in numbers)
        if save_path is None:
            save_path = os.path.join("modelsPPO", training.map_model_name(
                model_short_name(model_name), data_tag(data_name), numbers, values))
    save_path = training.sanitize_save_path(save_path)
    train = pipe.add("train", "trainPPO.py",
                     pipeline.flags(lam_list=lam, value_list=values, model_name=model_name, data_name=data_name,
                                    save_path=save_path, seed=seed, **(ppo_options or {})),
                     done=pipeline.model_done(save_path), kind="training")
    gen, out = pipeline.add_generation(pipe, "generate", save_path, data_name, save_directory, n, shards,
                                       {"num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "seed": seed},
                                       after=[train])
    pipeline.add_rewards(pipe, "ppo", out, evaluated, after=[gen], basemodel_for_perplexity=model_name)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
