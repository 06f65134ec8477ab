#!/usr/bin/env python3
#SBATCH --job-name=submit_DPA
#SBATCH --output=submit_DPA-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""DPA (directional preference alignment, rejection-sampling fine-tuning) as SLURM chains, one job per
stage and iteration:

    sample(1) → score(1) → select(1) → train(1) → evaluate(1)
                                          └→ sample(2) → score(2) → select(2) → train(2) → evaluate(2) → ...

Each stage is `python trainDPA.py <stage> --output_dir=D --iteration=i ...` with the run's settings on every
stage (trainDPA.py records them in D/dpa_config.json and refuses a stage with other settings); iteration
i ≥ 2 samples from iteration i-1's model (trainDPA.py finds it under D). The files each stage leaves (its
completion markers, written last) are OUTPUTS below, under D.

    python submit/submit_DPA_pipeline.py --settings=my.yaml --value_list=sentiment,length --iterations=3 --output_dir=models/DPA
"""
import os

from mapalign import arguments
from mapalign import pipeline

# what each stage leaves under {output_dir} when it is finished (trainDPA.py's layout)
OUTPUTS = {"sample": "iter{i}/samples.json", "score": "iter{i}/scored.json", "select": "iter{i}/selected.json",
           "train": "iter{i}/model/map_training.json", "evaluate": "eval/iter{i}.json"}
KINDS = {"sample": "generation", "score": "scoring", "select": "cpu", "train": "training", "evaluate": "generation"}


def main(value_list, iterations=3, model_name="smollm2-135m", data_name="builtin", output_dir="models/DPA",
         num_prompts=None, samples_per_prompt=None, directions=None, num_eval_prompts=None, seed=0,
         stage_options=None, name="dpa", workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the DPA iterations and submit them (or run them locally, print them, or show their status).

    Args:
        value_list: the reward attributes of the direction vector, in order (e.g. helpfulness,verbosity).
        iterations: number of sample → score → select → train → evaluate rounds.
        model_name: the initial policy (iteration 1 samples from it; later ones from the previous model).
        data_name: prompt source; num_prompts and samples_per_prompt (K) size each round's sampling.
        directions: evaluation directions as angles in degrees (comma-separated), passed to evaluate.
        num_eval_prompts: prompts of each evaluation.
        output_dir: the run's folder (D above).
        seed: base seed.
        stage_options: further flags per stage as a dict, e.g. "{train: {learning_rate: 1e-5}}".
    """
    values = arguments.str_list(value_list, "value_list")
    pipeline.check_values(values)
    options = pipeline.stage_options_of(stage_options, OUTPUTS)
    angles = None if directions is None else arguments.float_list(directions, "directions")
    pipe = pipeline.start(name, workdir)
    pipeline.count_prompts(data_name, num_prompts, seed=seed)  # the prompt source must load here
    common = {"output_dir": output_dir, "model_name": model_name, "seed": seed, "objectives": values,
              "data_name": data_name, "num_train_prompts": num_prompts, "samples_per_prompt": samples_per_prompt,
              "num_eval_prompts": num_eval_prompts, "iterations": iterations}
    per_stage = {"sample": {}, "score": {}, "select": {}, "train": {}, "evaluate": {"directions": angles}}
    pipeline.add_iterations(
        pipe, "trainDPA.py", ("sample", "score", "select", "train", "evaluate"), iterations,
        lambda i, stage: pipeline.flags(iteration=i, **common, **per_stage[stage], **(options.get(stage) or {})),
        lambda i, stage: pipeline.file_done(os.path.join(output_dir, OUTPUTS[stage].format(i=i))), KINDS)
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
