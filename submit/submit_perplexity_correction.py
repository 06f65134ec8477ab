#!/usr/bin/env python3
#SBATCH --job-name=submit_perplexity
#SBATCH --output=submit_perplexity-%j.log
#SBATCH --time=00:30:00
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
"""Re-score `perplexity` of a results file under a given base model, then re-assess it: add_reward
--value=perplexity --overwrite=True → merge → assess. (The original's version raised: it was written
before the base model became mandatory.)

    python submit/submit_perplexity_correction.py --settings=my.yaml --file_path=results/opt1.3b-Anthropic-harmless.json --basemodel_name=opt1.3b
"""
import os

from mapalign import pipeline


def main(file_path, basemodel_name, values_to_evaluate=None, evaluation_mode=False, name="perplexity-correction",
         workdir=".", backend="slurm", dry_run=False, settings=None, status=False):
    """Build the correction chain and submit it (or run it locally, print it, or show its status).

    Args:
        file_path: the results file whose perplexity is recomputed.
        basemodel_name: the model whose perplexity is scored (the one that generated the file).
        values_to_evaluate: values of the level table (default: every reward key of the file).
        evaluation_mode: raw quantiles (True) or palette mode (False, the default, as the original's).
    """
    from mapalign import records
    from mapalign.merging import temp_reward_path
    pipe = pipeline.start(name, workdir)
    temp_meta = records.metadata_path(temp_reward_path(file_path, "perplexity"))
    rescored = pipeline.value_scored_with(file_path, "perplexity", basemodel_name)
    score = pipe.add("reward-perplexity", "rewardProcessor.py",
                     [f"--file_path={file_path}", "add_reward", "--value=perplexity", "--overwrite=True",
                      f"--basemodel_for_perplexity={basemodel_name}"],
                     done=pipeline.Marker(lambda: rescored() or os.path.isfile(temp_meta), rescored.text),
                     kind="scoring", inputs=[file_path])
    merge = pipe.add("merge-rewards", "mergeProcessor.py",
                     ["merge_added_rewards", f"--original_file_path={file_path}", "--values=perplexity"],
                     done=rescored, after=[score])
    table = records.file_stem(file_path) + "_realC-levels.csv"
    pipe.add("assess", "rewardProcessor.py",
             pipeline.flags(file_path=file_path, values_to_evaluate=values_to_evaluate)
             + ["assess_original_value", f"--evaluation_mode={evaluation_mode}"],
             done=pipeline.Marker(lambda: rescored() and os.path.isfile(table)
                                  and os.path.getmtime(table) >= os.path.getmtime(file_path),
                                  f"{table} newer than {file_path}"), after=[merge])
    pipeline.execute(pipe, backend, dry_run, settings, status)


if __name__ == "__main__":
    pipeline.main(main)
