#!/usr/bin/env python3
#SBATCH --job-name=submit_ALT
#SBATCH --output=submit_ALT-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""ALT (alignment with textual feedback) as SLURM chains, one job per stage and iteration:

    sample(1) → feedback(1) → train(1) → validate(1)
                                 └→ sample(2) → feedback(2) → train(2) → validate(2) → ...

Each stage is `python trainALT.py <stage> --output_dir=D --iteration=i ...`; iteration i ≥ 2 samples from
iteration i-1's model (trainALT.py finds it under D). The files each stage leaves (its completion markers)
are OUTPUTS below, under D.

    python submit/submit_ALT_pipeline.py --settings=my.yaml --value_list=sentiment --iterations=3 --output_dir=models/ALT
"""
import os

from mapalign import arguments
from mapalign import pipeline

# what each stage leaves under {output_dir} when it is finished (trainALT.py's layout); the samples are
# gendata's shard of the iteration's sampling model ({base}: its short name and the prompt source's tag)
OUTPUTS = {"sample": "iter{i}/samples/temp/{base}_0to{n}.json", "feedback": "iter{i}/feedback.json",
           "train": "iter{i}/model", "validate": "iter{i}/validate.json"}
KINDS = {"sample": "generation", "feedback": "scoring", "train": "training", "validate": "generation"}


def main(value_list, iterations=3, model_name="smollm2-135m", data_name="builtin", output_dir="models/ALT",
         num_prompts=None, samples_per_prompt=None, num_validation_prompts=None, seed=0, stage_options=None,
         name="alt", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the ALT iterations and submit them (or run them locally, print them, or show their status).

    Args:
        value_list: the values whose rewards become textual feedback (comma-separated).
        iterations: number of sample → feedback → train → validate rounds.
        model_name: the initial policy (iteration 1 samples from it; later ones from the previous model).
        data_name: prompt source; num_prompts (trainALT's --num_train_prompts, default 64) and
            samples_per_prompt size each round's sampling.
        output_dir: the run's folder (D above).
        num_validation_prompts: prompts of each validation (trainALT's --num_valid_prompts; 0 = none).
        seed: base seed (trainALT.py seeds iteration i with seed + i).
        stage_options: further flags per stage as a dict, e.g.
            "{train: {learning_rate: 1e-5}, sample: {max_new_tokens: 64}}".
    """
    values = arguments.str_list(value_list, "value_list")
    pipeline.check_values(values)
    options = pipeline.stage_options_of(stage_options, OUTPUTS)
    pipe = pipeline.start(name, workdir)
    pipeline.count_prompts(data_name, num_prompts, seed=seed)  # the prompt source must load here
    n_train = int(num_prompts) if num_prompts else 64  # trainALT.py's --num_train_prompts default
    common = {"output_dir": output_dir, "model_name": model_name, "seed": seed, "value_list": values,
              "data_name": data_name, "num_train_prompts": n_train, "num_valid_prompts": num_validation_prompts,
              "samples_per_prompt": samples_per_prompt}

    def done(i, stage):
        sampler = model_name if i == 1 else os.path.join(output_dir, f"iter{i - 1}", "model")
        path = os.path.join(output_dir, OUTPUTS[stage].format(i=i, base=pipeline.base_name(sampler, data_name),
                                                              n=n_train))
        return pipeline.results_done(path) if stage == "sample" else (
            pipeline.model_done(path) if stage == "train" else pipeline.file_done(path))

    pipeline.add_iterations(pipe, "trainALT.py", ("sample", "feedback", "train", "validate"), iterations,
                            lambda i, stage: pipeline.flags(iteration=i, **common, **(options.get(stage) or {})),
                            done, KINDS)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
