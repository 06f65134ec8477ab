"""Find the λ that aligns a model to a palette of human values (MAP), or prove the palette infeasible.

Given samples from a reference model scored by k value models (a results file) and a palette c of
target expected levels, MAP's aligned model is p_λ ∝ p0·exp(λᵀr) with λ ≥ 0 solving the dual
problem in solver.py. This file is the command line and file layer over that solver.

    python alignValues.py --c_list=-0.5 --value_list="humor" --file_path=results/x.json optimize_lambda
    python alignValues.py --c_list=2.513,-0.967,0.937,0.876,0.434,-3.337 --value_list=all \
        --file_path=results/opt1.3b-Anthropic-harmless.json optimize_lambda
    python alignValues.py ... --solver=legacy optimize_lambda     # the original optimiser, for regression

Outputs: one line per save appended to results/alignValues.txt in the original format (λ written
only when it reaches the palette; otherwise "NaN"), and CSV rows for gen_rand_MAP_lambda. Every λ
saved is also appended as a JSON line to results/alignValues.jsonl, recording what it was fitted on
(estimator, solver, the results file's sampling config and base model): the λ target that
trainPPO.py / trainDPO.py take with --lambda_file. Fine-tuning should use --estimator=per_prompt.
"""
import csv
import io
import os

import numpy as np

from mapalign import arguments
from mapalign import records
from mapalign.records import lam_string
from mapalign import solver
from mapalign.values import expand_value_list
from mapalign.errors import InputError

LEGACY_REACH_TOL = 0.01  # the original's λ count as reaching c when realized ≥ c − 0.01 (SPEC-MAP §13)
CSV_HEADER = ["filepath", "c_Levels", "values", "optimized_lambda", "Dirichlet_lambda_ref", "status", "seed"]


class AlignValues:
    """Solve MAP palettes on one results file.

    Args:
        value_list: values to align: "all" (the conversation task's six), "humor,gpt2-helpful", or a list.
        file_path: results JSON holding one reward key per value (see records.py).
        c_list: the palette, one target level per value (a number when there is one value). 0 is a
            valid palette. Optional for methods that do not need one.
        solver: "exact" (default; certified Newton solve with an LP infeasibility certificate) or
            "legacy" (the original Adam optimiser, float32, kept to reproduce published λ).
        estimator: "pooled" (default; one normaliser over all records, as the original and the paper)
            or "per_prompt" (normalise within each prompt; for files with several samples per prompt).
        tol: KKT tolerance of the exact solver, as a fraction of each value's spread (the standard
            deviation of its rewards), so that it means the same at every reward scale.
        legacy_steps: Adam steps of the legacy optimiser (150 in the original; the authors' six-value
            Llama notes were made with 200).
        seed: seed for the random palettes of gen_rand_MAP_lambda; recorded in every CSV row.
    """

    def __init__(self, value_list, file_path, c_list=None, solver="exact", estimator="pooled", tol=1e-6,
                 legacy_steps=150, seed=0):
        if solver not in ("exact", "legacy"):
            raise InputError(f"--solver must be 'exact' or 'legacy'; got {solver!r}")
        if estimator not in ("pooled", "per_prompt"):
            raise InputError(f"--estimator must be 'pooled' or 'per_prompt'; got {estimator!r}")
        self.value_list = expand_value_list(value_list)
        self.file_path = file_path
        self.solver, self.estimator, self.tol = solver, estimator, float(tol)
        self.legacy_steps, self.seed = int(legacy_steps), seed
        self.records = records.load_records(file_path)
        self.rewards = records.reward_matrix(self.records, self.value_list, source=file_path)
        self.groups = None
        if estimator == "per_prompt":
            self.groups = records.prompt_groups(self.records)
            if self.groups.max() + 1 == len(self.records):
                raise InputError(f"--estimator=per_prompt needs several samples per prompt, but every prompt in "
                                 f"{file_path!r} has one. Generate with --samples_per_prompt > 1, or use pooled.")
        self.c = None if c_list is None else self._palette(c_list, "c_list")
        self.result = None

    # ---------------------------------------------------------------- helpers
    def _palette(self, c, name):
        levels = np.array(arguments.float_list(c, name))
        if levels.size != len(self.value_list):
            raise InputError(f"{name} has {levels.size} levels but value_list {self.value_list} has "
                             f"{len(self.value_list)} values; give one level per value, in the same order.")
        if not np.all(np.isfinite(levels)):
            raise InputError(f"{name} must be finite numbers; got {levels.tolist()}")
        return levels

    def _require_palette(self):
        if self.c is None:
            raise InputError("this command needs a palette: pass --c_list with one level per value "
                             f"({', '.join(self.value_list)})")
        return self.c

    def mean_levels(self):
        """The reference model's levels E_{p0}[r] (λ = 0)."""
        return solver.realized_levels(self.rewards, np.zeros(len(self.value_list)), groups=self.groups)

    def solve(self, c=None, lambda_init=None, optimize_indices=None):
        """Solve one palette (default self.c) with the configured solver; returns a PaletteResult."""
        c = self._require_palette() if c is None else np.asarray(c, dtype=np.float64)
        lam_init = None if lambda_init is None else np.array(arguments.float_list(lambda_init, "lambda_init"))
        indices = None if optimize_indices is None else [int(i) for i in np.atleast_1d(optimize_indices)]
        if self.solver == "exact":
            return solver.solve_palette(self.rewards, c, groups=self.groups, lam_init=lam_init,
                                        optimize_indices=indices, tol=self.tol)
        return self._solve_legacy(c, lam_init, indices)

    def _solve_legacy(self, c, lam_init, indices):
        lam, ok = solver.solve_legacy(self.rewards, c, lam_init=lam_init, optimize_indices=indices,
                                      steps=self.legacy_steps)
        if not ok:
            nan = np.full(len(self.value_list), np.nan)
            return solver.PaletteResult(status=solver.NOT_CONVERGED, lam=nan, c=c, realized=nan, slack=nan,
                                        kl=np.nan, ess=np.nan, iterations=self.legacy_steps, max_violation=np.nan,
                                        message="legacy optimiser overflowed (the original reports this as "
                                        "infeasible; it proves nothing)")
        # The original reports success whenever λ did not overflow, even when it misses c; here the
        # status, the return value and the λ log all follow one verdict: does λ reach c (within 0.01)?
        result = solver.evaluate_lambda(self.rewards, lam, c, groups=self.groups, tol=LEGACY_REACH_TOL)
        result.iterations = self.legacy_steps
        result.extra["legacy_lambda"] = lam
        if not result.success:
            result.message += (f" (legacy λ = {lam_string(lam)} after {self.legacy_steps} Adam steps; the original "
                               "would report it as a success)")
        return result

    def evaluate(self, lam, c=None):
        """PaletteResult of a fixed λ on palette c (default --c_list): realized levels, slack, KL, ESS."""
        tol = self.tol if self.solver == "exact" else LEGACY_REACH_TOL
        c = self._require_palette() if c is None else c
        return solver.evaluate_lambda(self.rewards, np.asarray(lam, dtype=np.float64), c, groups=self.groups, tol=tol)

    def _print_result(self, result, title="palette"):
        width = max(len(v) for v in self.value_list) + 2
        if result.status == solver.INFEASIBLE:
            print(f"[{title}] status: infeasible (proved by an LP certificate)")
            suggested = result.suggested_palette if result.suggested_palette is not None else [np.nan] * len(result.c)
            mean = self.mean_levels()
            print(f"  {'value':<{width}}{'c':>10}{'mean now':>11}{'suggested c':>13}{'d':>9}")
            for i, v in enumerate(self.value_list):
                print(f"  {v:<{width}}{result.c[i]:>10.4f}{mean[i]:>11.4f}{suggested[i]:>13.4f}"
                      f"{result.certificate[i]:>9.4f}")
            if self.groups is None:
                print(f"  certificate: along d, every sample falls short of the palette: "
                      f"mean_g max_j d.r_j - d.c = {result.certificate_gap:.4g} < 0")
            else:  # per prompt, only the average of the prompts' best samples need fall short
                print(f"  certificate: along d, the mean over prompts of each prompt's best sample falls short of "
                      f"the palette: mean_g max_j d.r_j - d.c = {result.certificate_gap:.4g} < 0")
            if result.suggested_palette is not None:
                print(f"  suggested c is the nearest feasible palette on the segment from the mean levels toward c "
                      f"(rho = {result.suggested_rho:.4f}; boundary at {result.boundary_rho:.4f})")
            return
        print(f"[{title}] status: {result.status}"
              + (f" ({result.iterations} iterations, max KKT violation {result.max_violation:.1e}, "
                 f"{result.relative_violation:.1e} of the value's spread)"
                 if np.isfinite(result.max_violation) else "")
              + (f" - {result.message}" if result.message else ""))
        print(f"  {'value':<{width}}{'c':>10}{'realized':>11}{'slack':>10}{'lambda':>11}")
        for i, v in enumerate(self.value_list):
            print(f"  {v:<{width}}{result.c[i]:>10.4f}{result.realized[i]:>11.4f}{result.slack[i]:>10.4f}"
                  f"{result.lam[i]:>11.4f}")
        if np.isfinite(result.kl) and self.groups is None:
            print(f"  KL(p_lambda || p0) = {result.kl:.4f} nats; effective sample size = {result.ess:.1f} "
                  f"of {len(self.records)} records")
        elif np.isfinite(result.kl):  # the per-prompt estimator's ESS is a per-prompt average
            prompts = int(self.groups.max()) + 1
            print(f"  KL(p_lambda || p0) = {result.kl:.4f} nats (mean over prompts); effective sample size = "
                  f"{result.ess:.1f} per prompt (mean over {prompts} prompts of {len(self.records) / prompts:.1f} "
                  "samples on average)")

    # ---------------------------------------------------------------- the original API
    def optimize_lambda(self, lambda_init=None, optimize_indices=None, verbose=True, save_lambda=None):
        """Solve for λ on the palette --c_list and report it.

        Args:
            lambda_init: starting λ, one number per value (default 0 for the exact solver; the legacy
                optimiser starts the optimised entries at 1, as the original).
            optimize_indices: indices of the values whose λ is optimised; the others stay at lambda_init.
            verbose: print the report and append a line to results/alignValues.txt.
            save_lambda: also write the λ target to this JSON file (the record `_target` makes: λ, values,
                palette, estimator, solver and what it was fitted on), which the trainers read as
                `--lambda_file=FILE` and other CLIs as `--lam_list=@FILE` (the pipelines chain λ this way). When λ does not
                reach the palette nothing is written and the command fails (exit 2), so jobs waiting for λ
                do not start.
        Returns:
            (lambda_list, success): λ as a list of floats (["NaN"] on failure) and whether it reaches the
            palette (exact solver: KKT verified; legacy: realized levels ≥ c − 0.01, which the original
            did not check). The printed status and the line in results/alignValues.txt say the same.
        """
        result = self.solve(lambda_init=lambda_init, optimize_indices=optimize_indices)
        self.result = result
        success = result.success
        lam_list = [float(x) for x in result.lam] if success else ["NaN"]
        if verbose:
            self._print_result(result)
            self.save_results_to_text(lam_list, success)
        if save_lambda:
            if not success:
                raise InputError(f"no λ reaches the palette {self._require_palette().tolist()} of {self.value_list} on "
                                 f"{self.file_path} (status {result.status}); {save_lambda} was not written. "
                                 "Choose a feasible palette (the report above suggests one).")
            records.save_json_atomic(self._target(self._require_palette(), lam_list), save_lambda, indent=2)
            print(f"optimize_lambda: wrote λ to {save_lambda}")
        return lam_list, success

    def _dual_objective(self, lambda_vals):
        """g(λ) = λᵀc − log mean_j exp(λᵀr_j) (pooled) at λ, in nats."""
        lam = np.array(arguments.float_list(lambda_vals, "lambda_vals"))
        A, _, _ = solver.Tilt(self.rewards, self.groups).evaluate(lam)
        return float(lam @ self._require_palette() - A)

    def sequential_optimize_lambda(self, lambda_init=None, verbose=True):
        """Align one value at a time (the sequential baseline): for each value in turn, optimise its λ
        with the others frozen. The exact solver warm-starts each coordinate from its current value.

        Returns the λ list after one pass, or ["NaN"] if a step fails. The result generally does not
        reach the palette (that is the baseline's weakness), so it is saved only if it does.
        """
        c = self._require_palette()
        lam = np.zeros(len(c)) if lambda_init is None else np.array(arguments.float_list(lambda_init, "lambda_init"))
        for idx in range(len(c)):
            result = self.solve(c=c, lambda_init=lam, optimize_indices=[idx])
            if not result.success:
                print(f"sequential step {idx} ({self.value_list[idx]}) failed: {result.status} {result.message}")
                return ["NaN"]
            lam = result.lam
        result = self.evaluate(lam, c)
        self.result = result
        if verbose:
            self._print_result(result, title="sequential")
            print(f"  palette {'reached' if result.success else 'not reached'} after one sequential pass")
            if result.success:
                self.save_results_to_text([float(x) for x in lam], True)
        return [float(x) for x in lam]

    def sequential_optimize_lambda_multiround(self, round=5, verbose=True):
        """Repeat the sequential pass `round` times, each starting from the previous λ.
        Stops cleanly (returning ["NaN"]) if a pass fails; saves the final λ only if it reaches c."""
        lam = None
        for r in range(int(round)):
            lam = self.sequential_optimize_lambda(lambda_init=lam, verbose=False)
            if lam == ["NaN"]:
                print(f"round {r + 1} failed; stopping")
                return lam
            print(f"round {r + 1}: lambda = {lam_string(lam)}; realized = {lam_string(self.result.realized)}")
        if verbose:
            self._print_result(self.result, title=f"sequential x{round}")
            if self.result.success:
                self.save_results_to_text(lam, True)
        return lam

    def find_pareto_by_interpolation(self, c_low, c_high, margin=1e-3):
        """Find the feasible palette on the segment c_low → c_high closest to the Pareto frontier.

        Exact: an LP gives the boundary ρ* (largest ρ with c_low + ρ(c_high − c_low) attainable); the
        palette used is ρ = ρ*·(1 − margin), just inside it, where λ is finite (ρ = 1 if c_high is
        feasible). Typical use: c_low = the model's mean levels, c_high = an ambitious palette.
        Returns (rho, c, lambda) as lists, or (None, None, None) if c_low itself is infeasible.
        The line saved to results/alignValues.txt carries this c and λ.
        """
        low, high = self._palette(c_low, "c_low"), self._palette(c_high, "c_high")
        rho_star = solver.max_feasible_rho(self.rewards, low, high, groups=self.groups)
        if rho_star is None:
            print(f"c_low = {lam_string(low)} is itself infeasible: no point of the segment can be reached")
            return None, None, None
        rho = rho_star if rho_star >= 1.0 else rho_star * (1.0 - margin)
        for attempt in range(1, 5):
            c = low + rho * (high - low)
            result = solver.solve_palette(self.rewards, c, groups=self.groups, tol=self.tol)
            if result.success:
                break
            rho = rho_star * (1.0 - margin * 10 ** attempt)
        print(f"boundary rho* = {rho_star:.6f}; using rho = {rho:.6f}")
        self._print_result(result, title="pareto by interpolation")
        if not result.success:
            return None, None, None
        self._save_line(c, [float(x) for x in result.lam])
        return float(rho), [float(x) for x in c], [float(x) for x in result.lam]

    def find_pareto_by_oneValue(self, value_to_enhance, margin=1e-3):
        """Raise one value's level as far as it can go with the others held at the palette.

        Exact: an LP gives the maximum attainable level; the level used sits `margin` (a fraction of
        the distance moved) below it so that λ stays finite. Saves the line and returns that level.
        """
        if value_to_enhance not in self.value_list:
            raise InputError(f"value_to_enhance={value_to_enhance!r} is not in value_list {self.value_list}")
        c = self._require_palette().copy()
        d = self.value_list.index(value_to_enhance)
        top = solver.max_feasible_level(self.rewards, c, d, groups=self.groups)
        if top is None:
            print("the other values' levels are infeasible together; lower them first")
            return None
        distance = max(abs(top - c[d]), 1e-6 * (1.0 + abs(top)))
        for attempt in range(4):
            c[d] = top - margin * 10 ** attempt * distance
            result = solver.solve_palette(self.rewards, c, groups=self.groups, tol=self.tol)
            if result.success:
                break
        print(f"maximum attainable {value_to_enhance} = {top:.6f}; using {c[d]:.6f}")
        self._print_result(result, title=f"pareto by {value_to_enhance}")
        if not result.success:
            return None
        self._save_line(c, [float(x) for x in result.lam])
        return float(c[d])

    def gen_rand_MAP_lambda(self, num_lambda, scaling_MAX, save_prefix="rand_MAP_lambda", max_attempts=None):
        """Random palettes and their MAP λ, next to random-weight (Dirichlet) λ of a similar budget.

        Each attempt draws c_i ~ Uniform(palette_i, max_j r_ij) (palette: --c_list, default the mean
        levels), solves it, and accepts it when feasible with Σλ ≤ scaling_MAX. For each accepted λ a
        reference λ_ref = s·α with α ~ Dirichlet(1,…,1), s ~ Uniform(0, scaling_MAX) is drawn, as the
        original does. Seeded by --seed; stops after max_attempts (default 100·num_lambda).
        Appends accepted rows to {save_prefix}.csv. Returns (list of λ, accepted / attempts).
        """
        rng = np.random.default_rng(self.seed)
        base = self.mean_levels() if self.c is None else self.c
        top = self.rewards.max(axis=1)
        num_lambda = int(num_lambda)
        accepted = []
        saved_c = self.c

        def save(c, lam):
            self.c = c
            reference = rng.dirichlet(np.ones(len(base))) * rng.uniform(0, scaling_MAX)
            accepted.append([float(x) for x in lam])
            self.save_results_to_csv(accepted[-1], reference, save_prefix=save_prefix)
        try:
            _, attempts = solver.random_palettes(self.rewards, base, top, rng, num_lambda, scaling_MAX,
                                                 groups=self.groups, tol=self.tol, max_attempts=max_attempts,
                                                 on_accept=save)
        finally:
            self.c = saved_c
        if len(accepted) < num_lambda:
            print(f"stopped after {attempts} attempts with {len(accepted)} of {num_lambda} λ accepted")
        return accepted, len(accepted) / max(attempts, 1)

    # ---------------------------------------------------------------- outputs
    def _save_line(self, c, lam_list, save_prefix="results/alignValues"):
        path = save_prefix + ".txt"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        lam_text = "NaN" if lam_list == ["NaN"] else lam_string(lam_list)
        line = (f"filepath: {self.file_path}, c Levels: {lam_string(c)}, values: {self.value_list!r}, "
                f"optimized lambda: {lam_text}\n")
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
        print(f"Results have been appended to {path}")
        if lam_list != ["NaN"]:
            self._save_target(c, lam_list, save_prefix + ".jsonl")

    def _save_target(self, c, lam_list, path):
        """Append the λ target (λ, values, palette, estimator, solver, and the sampling config, base model
        and results file it was fitted on) to the JSON-lines sidecar the trainers read (--lambda_file)."""
        from mapalign import lambda_targets
        target = self._target(c, lam_list)
        lambda_targets.append_target(target, path)
        if self.estimator == "pooled":
            print("note: this λ uses the pooled estimator; for fine-tuning (trainPPO.py, trainDPO.py) solve with "
                  "--estimator=per_prompt, the trainers' target (a policy cannot reweight its prompts)")
        if target["sampling"] is None:
            print(f"note: {self.file_path!r} has no metadata sidecar recording its sampling config; trainers given "
                  f"this λ ({path}) will warn and sample with their documented default")

    def _target(self, c, lam_list):
        """The λ target record (lambda_targets.make_target) for λ on palette c, fitted on this results file."""
        from mapalign import lambda_targets
        from mapalign import primaldual
        sampling, model = primaldual.sampling_of_results(self.file_path)
        status = None if self.result is None else self.result.status
        return lambda_targets.make_target(self.value_list, lam_list, c=c, estimator=self.estimator,
                                          sampling=sampling, base_model=model, results_file=self.file_path,
                                          solver_name=self.solver, status=status)

    def save_results_to_text(self, optimized_lambda, success, save_prefix="results/alignValues"):
        """Append `filepath: ..., c Levels: ..., values: [...], optimized lambda: ...` to
        {save_prefix}.txt (original format); failures are written as `optimized lambda: NaN`."""
        self._save_line(self._require_palette(), optimized_lambda if success else ["NaN"], save_prefix)

    def save_results_to_csv(self, optimized_lambda, dirichlet_lambda, save_prefix="results/alignValues",
                            status="feasible"):
        """Append a row (original columns plus status and seed) to {save_prefix}.csv; the header is
        written when the file is new or empty."""
        path = save_prefix + ".csv"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        if not new:
            with open(path, encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != CSV_HEADER:
                raise InputError(f"{path} has columns {header}, not {CSV_HEADER}; choose another --save_prefix")
        buffer = io.StringIO()
        writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC)
        if new:
            buffer.write(",".join(CSV_HEADER) + "\n")
        writer.writerow([self.file_path, lam_string(self._require_palette()), ",".join(self.value_list),
                         lam_string(optimized_lambda), lam_string(dirichlet_lambda), status, str(self.seed)])
        with open(path, "a", encoding="utf-8") as f:
            f.write(buffer.getvalue())

    # seed 000 names
    _save_results_to_text = save_results_to_text
    _save_results_to_csv = save_results_to_csv
