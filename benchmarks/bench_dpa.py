"""DPA and MAP × DPA on the offline demo: does the front expand, do directions steer, do palettes land?

    .venv/bin/python benchmarks/bench_dpa.py          # ~30 min on one CPU thread of a busy 2-core machine

Embedded SmolLM2-135M-Instruct + LoRA, builtin prompts (training: the first 12, held out: the next 6, reward
model: 32 others), 40 new tokens (long enough for some responses to end with EOS, so verbosity can move).
Two objectives available offline:
  helpfulness  a ridge-probe reward model head (rewardmodels.py; frozen SmolLM2, mean-pooled embeddings)
               fitted to the registry value `sentiment` (VADER compound of the response; deterministic, so a
               learnable proxy) on DPA's 0-100 scale, named as the value rm:{out}/rm/helpfulness;
  verbosity    the registry value `length` (words); or, with --second=positivity, positivity = 50 + 50 · VADER
               compound of the response (0-100), which varies within responses cut at the token limit.
Steps:
  1. reward model: 3 samples (48 new tokens) for each of 32 other prompts, labelled with sentiment and length;
  2. DPA: trainDPA's direction mode, T = 2 iterations, K = 4, 3 extra re-ranked directions per prompt (48 SFT
     examples per iteration, 3 epochs at LoRA lr 5e-4), evaluated on the θ grid (15° steps) for π0, π1, π2: the
     front per iteration, the direction-control Spearman (θ vs realized verbosity/helpfulness) and the mean
     length per direction, and the system-prompt swap test of each iteration (dpa.swap_gap: do π_{t−1} and
     π_t make the responses selected under opposite weights more likely under their own system prompts?);
  3. MAP × DPA: trainDPA's palette mode (K = 4 samples per prompt from p0, a pool of feasible palettes drawn
     with the gen_rand_MAP_lambda draw, importance resampling with softmax(λᵀr), 3 palettes per prompt,
     one iteration of SFT); for 3 palettes of the pool, the realized levels on the held-out prompts of the
     conditioned model (one sample per prompt), of MAP-D (M = 4 samples per prompt from p0, resampled with
     the palette's λ) and of the unconditioned p0, with standard errors and the generation cost per prompt.
--palettes=False runs steps 1-2 only. Writes results/bench_dpa/summary.json and the figure
results/gallery/fig_dpa_front.png. Ends with `ratio=<MAP-D seconds per prompt / conditioned seconds per
prompt>` (same run, same machine; not printed with --palettes=False).
"""
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mapalign import cli  # noqa: E402
from mapalign import decoding  # noqa: E402
from mapalign import dpa  # noqa: E402
from mapalign import dpatrainer  # noqa: E402
from mapalign.evaluation import standard_error  # noqa: E402
from mapalign.generation import TextGeneration  # noqa: E402
from mapalign import models  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import rewardmodels  # noqa: E402
from mapalign import values as value_registry  # noqa: E402


def train_reward_model(out, prompts, max_new_tokens, seed, label="sentiment", pooling="mean"):
    """Ridge probes (helpfulness := the registry value `label`, verbosity := length) on 3 samples per prompt.

    Reused when {out}/rm already holds one trained with the same settings; one trained with other settings
    is refused, since the DPA stages in `out` were scored with it."""
    folder = os.path.join(out, "rm")
    settings = {"rm_label": label, "rm_pooling": pooling, "rm_prompts": len(prompts),
                "rm_max_new_tokens": int(max_new_tokens), "seed": int(seed)}
    settings_file = os.path.join(folder, "bench_dpa_rm.json")
    if os.path.isfile(os.path.join(folder, rewardmodels.RM_FILE)):
        saved = None
        if os.path.isfile(settings_file):
            with open(settings_file) as f:
                saved = json.load(f)
        if saved != settings:
            raise SystemExit(f"{folder} holds a reward model trained with {saved or 'unrecorded settings'}, "
                             f"but this run asks for {settings}; the results in {out} were scored with it. "
                             f"Use another --out, or delete {out} to start over.")
        return folder
    gen = TextGeneration(basemodel_name="smollm2-135m", seed=seed + 7, max_new_tokens=max_new_tokens, progress=False)
    outs = gen.sample_continuations(prompts, 3, batch_size=48)
    rows = [{"prompt": p, "continuation": c.strip()} for p, group in zip(prompts, outs) for c in group]
    scorers = value_registry.load_scorers([label, "length"])
    R = decoding.score_samples([label, "length"], scorers, [r["prompt"] for r in rows],
                               [r["continuation"] for r in rows])
    for r, h, v in zip(rows, R[0], R[1]):
        r["helpfulness"], r["verbosity"] = float(h), float(v)
    rewardmodels.train_ridge_reward_model("smollm2-135m", rows, ["helpfulness", "verbosity"], folder,
                                          pooling=pooling, output_scale="0-100", seed=seed, progress=False)
    records.save_json_atomic(settings, settings_file)
    return folder


def levels(recs, values):
    x = np.array([[r[v] for v in values] for r in recs])
    return x.mean(0), np.array([standard_error(x[:, i]) for i in range(x.shape[1])])


SECOND_OBJECTIVES = {
    "length": "verbosity",     # DPA's own second objective, in words (the registry value)
    "positivity": "positivity",  # 50 + 50 · VADER compound (registered below)
}


def positivity(prompts, continuations):
    """The registry's `sentiment` (VADER compound of the response) on DPA's positive 0-100 scale: 50 + 50·s.
    A second objective that varies within responses of a fixed token budget, unlike length."""
    return (50.0 + 50.0 * value_registry.score("sentiment", list(prompts), list(continuations))).tolist()


def palette_experiment(out, common, samples_per_prompt, mc_samples, max_new_tokens, seed, first_held_out):
    """MAP × DPA: palette-conditioned SFT against MAP-D and p0 on 3 palettes of the drawn pool (module
    docstring, step 3). Prints the table; returns the summary's palette fields and the cost ratio."""
    t0 = time.time()
    palette = dpatrainer.DPATrainer(dpatrainer.DPAConfig(mode="palette", iterations=1,
                                                         samples_per_prompt=samples_per_prompt,
                                                         rerank_directions=2, num_palettes=8, **common),
                                    os.path.join(out, "palette"), progress=False)
    palette.run(evaluate=False)
    pool = records.load_metadata(palette.path(1, "selected.json"))["palettes"]
    order = np.argsort([sum(p["lam"]) for p in pool])
    chosen = [pool[i] for i in (order[0], order[len(order) // 2], order[-1])]
    held_out = palette.prompts()[1]
    scorers, values, names = palette.scorers(), palette.values, palette.names

    def timed_generation(model_name, systems):
        """(seconds, new tokens) per prompt of one sample per held-out prompt, the model already loaded."""
        gen = TextGeneration(basemodel_name=model_name, seed=seed + 11, max_new_tokens=max_new_tokens, progress=False)
        gen.load_model()
        t1 = time.time()
        texts = gen.sample_continuations(held_out, 1, batch_size=48, systems=systems)
        return (time.time() - t1) / len(held_out), gen.tokens_generated / len(held_out), [t[0].strip() for t in texts]

    # unconditioned p0 on the held-out prompts, one sample each
    base_s, base_tok, base_texts = timed_generation("smollm2-135m", None)
    R = decoding.score_samples(values, scorers, held_out, base_texts)
    base_recs = [{v: float(R[i, j]) for i, v in enumerate(values)} for j in range(len(held_out))]
    model, tokenizer = models.load_model_and_tokenizer("smollm2-135m")
    rows = []
    for k, pal in enumerate(chosen):
        path, result, written = palette.generate_palette(pal["c"], label=f"palette{k}")  # the inference path
        t1 = time.time()
        mapd, tokens = decoding.mc_decode(model, tokenizer, held_out, pal["lam"], values, MC_nsamples=mc_samples,
                                          scorers=scorers, max_new_tokens=max_new_tokens, seed=seed + 100 + k,
                                          first_prompt_index=first_held_out)
        mapd_cost = ((time.time() - t1) / len(held_out), tokens / len(held_out))
        rows.append({"c": written, "lam": pal["lam"], "conditioned": levels(records.load_records(path), values),
                     "mapd": levels([{v: r["rewards"][v] for v in values} for r in mapd], values),
                     "base": levels(base_recs, values), "cost": {"mapd": mapd_cost}})
    # the conditioned model's cost: one pass, one sample per prompt (palette 0's prompt), no scoring needed
    cond_s, cond_tok, _ = timed_generation(palette.model_of(1), [dpa.render_palette_prompt(
        rows[0]["c"], names)] * len(held_out))
    base_cost = (base_s, base_tok)
    palette_seconds = time.time() - t0

    print(f"\npalette-conditioned SFT vs MAP-D (M = {mc_samples}) vs unconditioned p0, {len(held_out)} held-out prompts "
          f"({palette_seconds:.0f} s); |mean − c|/SE in brackets")
    print(f"{'palette':>8} {'objective':>12} {'c':>8} {'λ':>7} {'conditioned':>22} {'MAP-D':>22} {'p0':>22}")
    hits = 0
    summary_rows = []
    for k, row in enumerate(rows):
        within = True
        for i, name in enumerate(names):
            cells = []
            for key in ("conditioned", "mapd", "base"):
                m, se = row[key][0][i], row[key][1][i]
                z = abs(m - row["c"][i]) / se if se > 0 else float("inf")
                cells.append(f"{m:7.2f} ± {se:5.2f} [{z:4.1f}]")
                if key == "conditioned" and z > 2:
                    within = False
            print(f"{k:>8} {name:>12} {row['c'][i]:>8.2f} {row['lam'][i]:>7.3f} " + " ".join(f"{c:>22}" for c in cells))
        hits += within
        summary_rows.append({"c": row["c"], "lam": row["lam"], "within_2se": within,
                             **{key: {"mean": row[key][0].tolist(), "se": row[key][1].tolist()}
                                for key in ("conditioned", "mapd", "base")}, "cost": row["cost"]})
    mapd_s = np.mean([r["cost"]["mapd"][0] for r in rows])
    print(f"\npalettes with every level within 2 SE of c: conditioned {hits} of {len(rows)}")
    print(f"generation cost per prompt: conditioned {cond_s:.2f} s ({cond_tok:.1f}"
          f" tokens), MAP-D {mapd_s:.2f} s ({np.mean([r['cost']['mapd'][1] for r in rows]):.1f} tokens, incl. scoring "
          f"M samples), p0 {base_cost[0]:.2f} s ({base_cost[1]:.1f} tokens)")

    points = [{"label": f"MAP-D, palette {k}", "x": r["mapd"][0][0], "y": r["mapd"][0][1]} for k, r in enumerate(rows)]
    points += [{"label": f"conditioned, palette {k}", "x": r["conditioned"][0][0], "y": r["conditioned"][0][1]}
               for k, r in enumerate(rows)]
    mapd_tokens = float(np.mean([r["cost"]["mapd"][1] for r in rows]))
    return {"palettes": summary_rows, "points": [dict(p, x=float(p["x"]), y=float(p["y"])) for p in points],
            "palettes_within_2se": hits, "palette_seconds": palette_seconds,
            "cost_per_prompt": {"conditioned": [cond_s, cond_tok], "mapd": [mapd_s, mapd_tokens],
                                "p0": list(base_cost)}}, mapd_s / cond_s


def main(out="results/bench_dpa", num_train_prompts=12, num_eval_prompts=6, max_new_tokens=40, iterations=2,
         mc_samples=4, rm_prompts=32, rm_max_new_tokens=48, rm_label="sentiment", rm_pooling="mean",
         samples_per_prompt=4, rerank_directions=3, learning_rate=5e-4, num_train_epochs=3.0, seed=0,
         second="length", palettes=True, figure="results/gallery/fig_dpa_front"):
    """Run the benchmark (module docstring).

    Args:
        out: work folder (reward model, runs, summary.json); a rerun resumes what is finished.
        num_train_prompts, num_eval_prompts: builtin prompts for training and the held-out evaluation.
        max_new_tokens: new tokens per response everywhere; iterations: DPA's T; mc_samples: MAP-D's M.
        rm_prompts, rm_max_new_tokens, rm_label, rm_pooling: the ridge-probe reward model's data (3 samples
            per prompt of other prompts), the registry value its `helpfulness` head is fitted to, and pooling.
        samples_per_prompt, rerank_directions, learning_rate, num_train_epochs: DPA's K, extra re-ranked
            directions per prompt and the SFT step (LoRA).
        second: the second objective, `length` (verbosity in words, DPA's) or `positivity` (50 + 50·VADER).
        palettes: also run the MAP × DPA palette experiment (False: the DPA fronts only, no ratio line).
        seed: every draw; figure: output prefix of the front figure.
    """
    if second not in SECOND_OBJECTIVES:
        raise SystemExit(f"error: --second={second!r}; choose one of {sorted(SECOND_OBJECTIVES)}")
    if second == "positivity":
        value_registry.register_value("positivity", positivity, overwrite=True,
                                      description=positivity.__doc__.split(chr(10))[0])
    second_name = SECOND_OBJECTIVES[second]
    torch.set_num_threads(1)
    t_start = time.time()
    from mapalign.prompts import load_prompts
    allp = load_prompts("builtin", seed=seed)
    n = num_train_prompts + num_eval_prompts
    rm = train_reward_model(out, allp[n:n + rm_prompts], rm_max_new_tokens, seed, label=rm_label, pooling=rm_pooling)
    info = rewardmodels.read_info(rm)
    print(f"reward model {rm}: validation MSE {dict(zip(info['attributes'], np.round(info['val_mse'], 4)))}, "
          f"alpha {info['alpha']}  ({time.time() - t_start:.0f} s)")
    objectives = f"rm:{rm}/helpfulness,{second}"
    common = dict(model_name="smollm2-135m", objectives=objectives, objective_names=f"helpfulness,{second_name}",
                  num_train_prompts=num_train_prompts, num_eval_prompts=num_eval_prompts,
                  max_new_tokens=max_new_tokens, batch_size=48, learning_rate=learning_rate,
                  num_train_epochs=num_train_epochs,
                  per_device_train_batch_size=8, seed=seed)

    # --- DPA: direction-conditioned RSF
    t0 = time.time()
    direction = dpatrainer.DPATrainer(dpatrainer.DPAConfig(mode="direction", iterations=iterations,
                                                           samples_per_prompt=samples_per_prompt,
                                                           rerank_directions=rerank_directions, eval_grid_step=15.0, **common),
                                      os.path.join(out, "dpa"), progress=False)
    direction.run()
    values = direction.values
    fronts = {}
    for t in range(iterations + 1):
        fronts[t] = dpatrainer.front(records.load_records(os.path.join(out, "dpa", "eval", f"iter{t}.json")), values)
    dpa_seconds = time.time() - t0
    unit = " (words)" if second == "length" else ""
    print(f"\nDPA front per iteration (held-out prompts, mean ± SE per direction; {dpa_seconds:.0f} s)")
    print(f"{'iter':>4} {'θ':>6} {'weights':>10} {'helpfulness':>16} {second_name + unit:>18}")
    control = {}
    for t, points in fronts.items():
        for p in points:
            print(f"{t:>4} {p['angle']:>6.0f} {str(p['weights']):>10} "
                  f"{p['mean'][values[0]]:>9.2f} ± {p['se'][values[0]]:<5.2f} {p['mean'][values[1]]:>10.2f} ± "
                  f"{p['se'][values[1]]:.2f}")
        control[t] = dpatrainer.direction_control(points, values)
    print(f"\ndirection control (Spearman between θ and realized {second_name}/helpfulness over the grid):")
    for t, c in control.items():
        print(f"  iteration {t}: ratio {c['spearman_ratio']:.3f}   {second_name} alone {c['spearman_second']:.3f}")

    print("\nsystem-prompt swap test on each iteration's training selections (does π_t read the weights? Δ in nats "
          "per prompt, ≈ 0 for a model that ignores them):")
    swap = {}
    for t in range(1, iterations + 1):
        try:
            swap[t] = direction.conditioning(t)
        except dpa.DPAError as e:  # no prompt selected different responses under opposite weights
            print(f"  iteration {t}: {e}")
            continue
        for name, r in swap[t].items():
            print(f"  iteration {t}, {name}: {dpa.describe_swap_gap(r)}")

    summary = {"objectives": values, "names": direction.names, "reward_model": info,
               "fronts": {str(t): f for t, f in fronts.items()}, "direction_control": control,
               "swap_test": {str(t): r for t, r in swap.items()},
               "settings": dict(num_train_prompts=num_train_prompts, num_eval_prompts=num_eval_prompts,
                                max_new_tokens=max_new_tokens, iterations=iterations, mc_samples=mc_samples, seed=seed,
                                rm_prompts=rm_prompts, rm_max_new_tokens=rm_max_new_tokens, rm_label=rm_label,
                                rm_pooling=rm_pooling, samples_per_prompt=samples_per_prompt,
                                rerank_directions=rerank_directions, learning_rate=learning_rate,
                                num_train_epochs=num_train_epochs, second=second, palettes=bool(palettes))}
    ratio = None
    if palettes:
        fields, ratio = palette_experiment(out, common, samples_per_prompt, mc_samples, max_new_tokens, seed, n)
        summary.update(fields)
    summary["seconds"] = {"dpa": dpa_seconds, "palette": summary.pop("palette_seconds", None),
                          "total": time.time() - t_start}
    path = os.path.join(out, "summary.json")
    records.save_json_atomic(records.canonical(summary), path, indent=2)
    from mapalign.plots import plot_dpa_front
    plot_dpa_front.plot_front(os.path.join(out, "dpa"), output_prefix=figure, points_file=path)
    print(f"wrote {path}; total {time.time() - t_start:.0f} s (shared 2-core CPU, other jobs running)")
    if ratio is not None:
        print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    cli.main(main)
