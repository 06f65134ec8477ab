"""Exact λ solver vs the original (legacy) optimiser, same palettes, same run.

For k = 1..6 values of the reference Llama file (or a generated matrix of the same shape when
../shared is absent), solve the palettes whose levels are the 50/60/70/80/90% quantiles of each
value. Prints, per k, the median milliseconds of each solver, the max constraint violation on
feasible palettes (exact: KKT residual; legacy: shortfall realized < c) and whether the exact
verdict agrees with the LP certificate. Ends with `ratio=<legacy/exact median time>`.

    python benchmarks/bench_alignValues.py [--repeats=5]
"""
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from mapalign import solver  # noqa: E402
from mapalign.records import load_records, reward_matrix  # noqa: E402

SIX = ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity"]
REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference", "map", "llama2_chat-Anthropic-harmless.json")
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)


def reward_data():
    if os.path.isfile(REFERENCE):
        return reward_matrix(load_records(REFERENCE), SIX), "reference Llama-2 file"
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 2312)) * np.array([[1.0], [0.8], [0.9], [0.05], [0.1], [0.3]]), "generated 6x2312"


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(np.median(times))


def main(repeats=5):
    import torch
    torch.set_num_threads(1)
    R_all, source = reward_data()
    print(f"data: {source}, n = {R_all.shape[1]}; threads: torch 1, numpy default; repeats {repeats}")
    print(f"{'k':>2} {'exact ms':>9} {'legacy ms':>10} {'exact viol':>11} {'legacy viol':>12} "
          f"{'feasible':>9} {'agree LP':>9}")
    exact_all, legacy_all, worst, agree_all = [], [], 0.0, True
    for k in range(1, 7):
        R = R_all[:k]
        exact_ms, legacy_ms, exact_viol, legacy_viol, feasible, agree = [], [], 0.0, 0.0, 0, True
        for level in LEVELS:
            c = np.quantile(R, level, axis=1)
            res, t_exact = timed(lambda: solver.solve_palette(R, c), repeats)
            (lam, ok), t_legacy = timed(lambda: solver.solve_legacy(R, c), max(1, repeats // 5))
            exact_ms.append(1e3 * t_exact)
            legacy_ms.append(1e3 * t_legacy)
            _, gap = solver.infeasibility_certificate(R, c)
            agree &= (res.status == "feasible") == (gap >= 0) or res.status == "not_converged"
            if res.status == "feasible":
                feasible += 1
                exact_viol = max(exact_viol, res.max_violation)
                if ok:
                    legacy_viol = max(legacy_viol, float(np.max(c - solver.realized_levels(R, lam))))
        exact_all += exact_ms
        legacy_all += legacy_ms
        worst = max(worst, exact_viol)
        agree_all &= agree
        print(f"{k:>2} {np.median(exact_ms):>9.2f} {np.median(legacy_ms):>10.1f} {exact_viol:>11.1e} "
              f"{legacy_viol:>12.1e} {feasible:>5}/{len(LEVELS)} {str(agree):>9}")
    exact_med, legacy_med = float(np.median(exact_all)), float(np.median(legacy_all))
    print(f"median exact {exact_med:.2f} ms, legacy {legacy_med:.1f} ms; worst exact violation {worst:.1e}; "
          f"verdicts agree with LP: {agree_all}")
    print(f"ratio={legacy_med / exact_med:.1f}")


if __name__ == "__main__":
    from mapalign import cli
    cli.main(main)
