"""The main MAP job on the embedded default model, end to end and offline (`make demo`).

1. generate  SmolLM2-135M-Instruct continues the built-in prompts        (gendata.TextGeneration)
2. score     offline values: sentiment, harmlessness, coherence-minilm,  (rewardProcessor.add_reward)
             perplexity, diversity, length
3. merge     the reward columns into the results file                    (mergeProcessor)
4. assess    the model's realized (mean) levels and quantile rows        (assess_original_value)
5. align     solve λ for a palette: the 70% quantile rows of two values  (alignValues.AlignValues)
             and report status, λ and the realized levels of every value (assess_postalignment_multivalue)

Every stage calls the same functions as the command lines, so each step can be re-run or continued by hand
(the commands are printed). Outputs stay in results/: the results file and its sidecar, the two CSVs,
results/alignValues.txt, and results/demo/summary.json (values, palette, status, λ, realized levels,
number of records, seconds per stage, seed). Re-running skips finished stages (pass --fresh=True to
redo them). Runs in a few minutes on 2 CPU cores: sizes are set by --num_prompts and --max_new_tokens.

    .venv/bin/python demo.py [--num_prompts=128 --max_new_tokens=40 --threads=1 --fresh=True]
"""
import csv
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mapalign import arguments  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign.align import AlignValues  # noqa: E402
from mapalign.generation import TextGeneration  # noqa: E402
from mapalign.merging import MergeProcessor  # noqa: E402
from mapalign.models import DEFAULT_MODEL, fast_dtype  # noqa: E402
from mapalign.rewarding import RewardProcessor  # noqa: E402

DEMO_VALUES = ("sentiment", "harmlessness", "coherence-minilm", "perplexity", "diversity", "length")
PALETTE_VALUES = ("sentiment", "coherence-minilm")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def banner(text):
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


def main(model=DEFAULT_MODEL, data_name="builtin", num_prompts=128, max_new_tokens=40, batch_size=32,
         values=DEMO_VALUES, palette_values=PALETTE_VALUES, palette_quantile=70, seed=0, dtype=None, threads=1,
         save_directory="results", fresh=False):
    """Run the MAP core on the embedded default and write results/demo/summary.json.

    Args:
        model: generating model (default the embedded SmolLM2-135M-Instruct).
        data_name: prompt source (default the offline built-in set; see prompts.py).
        num_prompts: how many prompts of the source to use (default 128: a few minutes on 2 CPU cores).
        max_new_tokens: tokens per continuation (default 40).
        batch_size: sequences per forward pass for generation and scoring.
        values: values to score (comma-separated or list).
        palette_values: the values whose palette is solved (default sentiment and coherence-minilm).
        palette_quantile: the palette is this quantile row of the levels table (50..99; default 70).
        seed: generation seed (recorded everywhere).
        dtype: model dtype; default the faster one here (bfloat16 on GPUs and CPUs with native bf16, else float32).
        threads: torch CPU threads (default 1: safe on shared machines; more on a machine of your own).
        save_directory: where results go (default results/).
        fresh: regenerate and rescore even when finished outputs exist.
    Returns:
        the summary dict (also written to {save_directory}/demo/summary.json).
    """
    import torch
    torch.set_num_threads(int(threads))
    values = arguments.str_list(values, "values")
    palette_values = arguments.str_list(palette_values, "palette_values")
    dtype = dtype or fast_dtype()
    seconds = {}
    t_all = time.time()

    banner(f"1/5 generate: {model} on {num_prompts} {data_name} prompts, {max_new_tokens} new tokens, {dtype}, "
           f"{torch.get_num_threads()} thread(s)")
    t = time.time()
    generator = TextGeneration(basemodel_name=model, data_name=data_name, save_directory=save_directory, seed=seed,
                               num_prompts=num_prompts, max_new_tokens=max_new_tokens, dtype=dtype, overwrite=fresh)
    file_path = generator.generate_from_original_model(batch_size=batch_size)
    seconds["generate"] = round(time.time() - t, 2)
    print(f"  = python gendata.py --basemodel_name={model} --data_name={data_name} --num_prompts={num_prompts} "
          f"--max_new_tokens={max_new_tokens} --dtype={dtype} --seed={seed} generate_from_original_model "
          f"--batch_size={batch_size}")

    banner(f"2/5 score: {', '.join(values)}")
    t = time.time()
    scorer = RewardProcessor(file_path=file_path, batch_size=batch_size, dtype=dtype)
    for value in values:
        scorer.add_reward(value, overwrite=fresh)
    seconds["score"] = round(time.time() - t, 2)
    print(f"  = python rewardProcessor.py --file_path={file_path} add_reward --value=<value>   (one per value)")

    banner("3/5 merge the reward columns")
    t = time.time()
    MergeProcessor().merge_added_rewards(file_path)
    seconds["merge"] = round(time.time() - t, 2)
    recs = records.load_records(file_path)

    banner("4/5 realized levels of the model (the original's _realC-levels.csv)")
    t = time.time()
    levels_csv = RewardProcessor(file_path=file_path, values_to_evaluate=values).assess_original_value()
    rows = {row["Statistic"]: row for row in read_csv(levels_csv)}
    means = {v: float(rows["avg"][v]) for v in values}
    palette = {v: float(rows[f"{palette_quantile}%"][v]) for v in palette_values}
    seconds["assess"] = round(time.time() - t, 2)

    banner(f"5/5 align: palette = the {palette_quantile}% rows of {', '.join(palette_values)}")
    t = time.time()
    aligner = AlignValues(value_list=palette_values, file_path=file_path, c_list=[palette[v] for v in palette_values])
    lam, success = aligner.optimize_lambda()
    result = aligner.result
    realized, realized_csv = None, None
    if success:
        realized_csv = RewardProcessor(file_path=file_path, values_to_align=palette_values,
                                       values_to_evaluate=values).assess_postalignment_multivalue(lam=lam)
        row = read_csv(realized_csv)[0]
        realized = {v: float(row[v]) for v in values}
    seconds["align"] = round(time.time() - t, 2)
    seconds["total"] = round(time.time() - t_all, 2)

    print(f"\nstatus: {result.status}")
    print(f"palette ({palette_quantile}% rows): " + ", ".join(f"{v} >= {c:.3f}" for v, c in palette.items()))
    if success:
        print("lambda: " + ", ".join(f"{v} = {x:.4f}" for v, x in zip(palette_values, lam)))
        print(f"{'value':<18}{'model mean':>12}{'aligned (MAP)':>15}")
        for v in values:
            print(f"{v:<18}{means[v]:>12.3f}{realized[v]:>15.3f}")
        print(f"KL(p_lambda || p0) = {result.kl:.4f} nats, effective sample size {result.ess:.1f} of {len(recs)}")
    elif result.suggested_palette is not None:
        print("infeasible; nearest feasible palette: " + ", ".join(
            f"{v} = {c:.3f}" for v, c in zip(palette_values, result.suggested_palette)))

    summary = {
        "model": model, "data_name": data_name, "file": file_path, "seed": seed, "dtype": dtype,
        "threads": torch.get_num_threads(), "num_prompts": num_prompts, "max_new_tokens": max_new_tokens,
        "num_records": len(recs), "values": values, "mean_levels": means,
        "palette": palette, "palette_quantile": palette_quantile, "status": result.status,
        "lambda": dict(zip(palette_values, [float(x) for x in result.lam])) if success else None,
        "realized_levels": realized, "kl": float(result.kl) if success else None,
        "ess": float(result.ess) if success else None, "seconds": seconds,
        "outputs": {"results": file_path, "metadata": records.metadata_path(file_path), "levels_csv": levels_csv,
                    "realized_csv": realized_csv, "lambda_log": os.path.join("results", "alignValues.txt")},
    }
    summary_path = os.path.join(save_directory, "demo", "summary.json")
    records.save_json_atomic(summary, summary_path, indent=2)
    print(f"\nseconds per stage: {json.dumps(seconds)}")
    print(f"wrote {summary_path}")
    return summary
