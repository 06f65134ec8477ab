"""How noisy is the primal-dual loop's level estimate, and what would shrink it: more prompts or more samples?

    python gendata.py --basemodel_name=smollm2-135m --data_name=builtin --num_prompts=64 --samples_per_prompt=8 \
        --top_k=0 --max_new_tokens=8 --save_directory=results/dual_noise generate_from_original_model
    python rewardProcessor.py --file_path=results/dual_noise/smollm2-135m-builtin.json add_reward --value=sentiment
    python rewardProcessor.py --file_path=results/dual_noise/smollm2-135m-builtin.json add_reward --value=coherence-minilm
    python mergeProcessor.py merge_added_rewards --original_file_path=results/dual_noise/smollm2-135m-builtin.json
    python benchmarks/check_dual_noise.py --results_file=results/dual_noise/smollm2-135m-builtin.json \
        --value_list=sentiment,coherence-minilm --prompts=32 --samples_per_prompt=4

Reads a scored results file with several samples per prompt and splits each value's variance into the part
between prompts and the part within a prompt (primaldual.variance_components). From them, the standard
error of a level measured on --prompts prompts × --samples_per_prompt samples (the dual set of
`--palette_prompts` × `--palette_samples` in the trainers), and that SE with four times the samples per prompt
or four times the prompts, as ratios to it. The last column is a lower bound for a control variate that
subtracts p0's own level on the same prompts (with the file's samples per prompt): it adds p0's within-prompt
noise, so it only helps when the between-prompt part is large. Nothing is written.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from mapalign import arguments  # noqa: E402
from mapalign import cli  # noqa: E402
from mapalign import primaldual  # noqa: E402
from mapalign import records  # noqa: E402


def main(results_file, value_list="sentiment,coherence-minilm", prompts=32, samples_per_prompt=4):
    """Print the between/within split and the dual SE at the given and the quadrupled sizes.

    Args:
        results_file: a results JSON with reward columns for every value and ≥ 2 samples per prompt.
        value_list: comma-separated value names (the file's reward columns).
        prompts: held-out prompts per palette check (the trainers' --palette_prompts).
        samples_per_prompt: samples per held-out prompt per check (the trainers' --palette_samples).
    """
    values = arguments.str_list(value_list, "value_list")
    recs = records.load_records(results_file)
    R = records.reward_matrix(recs, values, source=results_file)  # names a missing value and how to add it
    groups = records.prompt_groups(recs)
    between, within = primaldual.variance_components(R, groups)
    n, k = int(prompts), int(samples_per_prompt)
    n_file_prompts = len(np.unique(groups))
    file_k = len(groups) / n_file_prompts
    se = primaldual.dual_level_se(between, within, n, k)
    more_samples = primaldual.dual_level_se(between, within, n, 4 * k) / se
    more_prompts = primaldual.dual_level_se(between, within, 4 * n, k) / se
    control_variate = np.sqrt((within / k + within / file_k) / n) / se
    print(f"{results_file}: {n_file_prompts} prompts, {file_k:g} samples per prompt")
    print(f"{'value':<20}{'between':>10}{'within':>10}{'share':>7}{f'SE {n}×{k}':>10}{f'×{4 * k} samples':>14}"
          f"{f'×{4 * n} prompts':>14}{'control var. ≥':>16}")
    for i, v in enumerate(values):
        print(f"{v:<20}{between[i]:>10.4f}{within[i]:>10.4f}{between[i] / (between[i] + within[i]):>7.2f}"
              f"{se[i]:>10.4f}{more_samples[i]:>13.2f}×{more_prompts[i]:>13.2f}×{control_variate[i]:>15.2f}×")


if __name__ == "__main__":
    cli.main(main)
