"""Exact λ solver for MAP palettes. Pure functions: arrays in, a result object out, no I/O.

Notation. R is a (k, n) float array: k values, n samples (all records of a results file, pooled
across prompts as the original does). c is the palette, a target expected level for each value.
The aligned distribution over the samples is p_λ(j) ∝ exp(λᵀr_j) (the reference p0 is uniform over
the samples, which were drawn from the reference model). MAP's dual problem is

    maximise  g(λ) = λᵀc − A(λ)  over λ ≥ 0,    A(λ) = log mean_j exp(λᵀr_j),

which is concave; ∇A(λ) = E_{p_λ}[r] (the realized levels) and ∇²A(λ) = Cov_{p_λ}(r). At the
optimum the KKT conditions say: E_{p_λ}[r_i] ≥ c_i for every i, with equality where λ_i > 0.

With `groups` (the per-prompt estimator, for files holding several samples per prompt), each
prompt's samples are normalised separately and prompts are weighted equally:
A(λ) = mean_g log mean_{j∈g} exp(λᵀr_j).

The palette is infeasible exactly when no distribution over the samples (within each prompt, for
the per-prompt estimator) has mean rewards ≥ c. By LP duality that happens iff there is a direction
d ≥ 0, Σd = 1, with mean_g max_{j∈g} dᵀr_j < dᵀc: every sample is worse than c along d. The solver
finds such a d with an LP (scipy HiGHS) and returns it as a certificate; it never infers
infeasibility from overflow, as the original did.

Scale. Both the Newton solve and the LPs work on standardised rows r̃_i = (r_i − mean_i)/sd_i
(`standardise`); the tilt is unchanged when λ̃_i = λ_i·sd_i. Tolerances are therefore fractions of
each value's spread, and a value scored in [0, 0.003] is solved as accurately as one in [0, 1000].
Results are reported in the user's units (λ, levels, certificate), with the KKT violation also
given relative to each value's spread.
"""
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from mapalign.errors import InputError

FEASIBLE, INFEASIBLE, NOT_CONVERGED = "feasible", "infeasible", "not_converged"


@dataclass
class PaletteResult:
    """Outcome of one palette solve. Arrays are float64, indexed like the rows of R.

    status          "feasible" (KKT hold to `tol`), "infeasible" (certificate below), or
                    "not_converged" (e.g. a palette on the boundary of the attainable set,
                    where λ* is infinite).
    lam             λ ≥ 0 (the optimum when feasible; the last iterate otherwise).
    c               the palette solved for.
    realized        E_{p_λ}[r], the realized level of every value under λ.
    slack           realized − c (≥ −tol when feasible).
    kl              KL(p_λ ‖ p0) in nats.
    ess             effective sample size of the tilt weights, 1/Σw² (per prompt and averaged
                    over prompts for the per-prompt estimator); n means no reweighting.
    iterations      Newton iterations used.
    max_violation   max KKT violation in the user's units: max_i of (c_i − realized_i)⁺ and,
                    where λ_i > 0, |realized_i − c_i|.
    relative_violation  the same with value i's violation divided by its spread (spread_i); the
                    exact solver's `tol` bounds this one.
    spread          each value's spread: the standard deviation of its rewards over the samples.
    lp_margin       when the solver ran the certificate LP: its margin in standard deviations
                    (feasibility_margin; > 0 strictly feasible, < 0 infeasible).
    certificate     infeasible only: direction d ≥ 0, Σd = 1, with certificate_gap < 0.
    certificate_gap mean_g max_{j∈g} dᵀr_j − dᵀc (negative proves infeasibility).
    boundary_rho    infeasible only: largest ρ with m0 + ρ(c − m0) attainable, where m0 is the
                    realized level at λ = 0 (the reference model's mean levels).
    suggested_palette, suggested_rho: a palette just inside that boundary (finite λ).
    """
    status: str
    lam: np.ndarray
    c: np.ndarray
    realized: np.ndarray
    slack: np.ndarray
    kl: float
    ess: float
    iterations: int
    max_violation: float
    relative_violation: float = None
    spread: np.ndarray = None
    lp_margin: float = None
    certificate: np.ndarray = None
    certificate_gap: float = None
    boundary_rho: float = None
    suggested_palette: np.ndarray = None
    suggested_rho: float = None
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def success(self):
        return self.status == FEASIBLE


class Tilt:
    """Exponential tilt of the empirical distribution of R by λ, computed stably in float64.

    Holds R and the prompt grouping once, so repeated evaluations (Newton steps, line searches)
    do no re-sorting. All quantities use log-sum-exp; nothing overflows for any finite λ.
    """

    def __init__(self, rewards, groups=None):
        self.R = np.ascontiguousarray(rewards, dtype=np.float64)
        if self.R.ndim == 1:
            self.R = self.R[None, :]
        self.k, self.n = self.R.shape
        if groups is None:
            self.order, self.starts, self.sizes = None, np.array([0]), np.array([self.n])
        else:
            groups = np.asarray(groups)
            if groups.shape != (self.n,):
                raise InputError(f"groups must have one entry per sample ({self.n}); got shape {groups.shape}")
            self.order = np.argsort(groups, kind="stable")
            _, self.starts, self.sizes = np.unique(groups[self.order], return_index=True, return_counts=True)
            self.R = self.R[:, self.order]
        self.num_groups = len(self.starts)
        self.group_of = np.repeat(np.arange(self.num_groups), self.sizes)

    def evaluate(self, lam):
        """Returns (A, w, s) at λ: the log-normaliser A(λ), the weights w (n,) in sample order of
        the (possibly regrouped) R summing to 1, and the scores s = λᵀR."""
        s = lam @ self.R
        if self.num_groups == 1:
            top = s.max()
            e = np.exp(s - top)
            total = e.sum()
            return top + np.log(total / self.n), e / total, s
        top = np.maximum.reduceat(s, self.starts)
        e = np.exp(s - top[self.group_of])
        totals = np.add.reduceat(e, self.starts)
        log_norm = top + np.log(totals / self.sizes)
        w = e / totals[self.group_of] / self.num_groups
        return log_norm.mean(), w, s

    def moments(self, w):
        """Realized levels m = Σ w r and the covariance Σ_g Cov_{w_g}(r) / G (the Hessian of A)."""
        weighted = self.R * w
        m = weighted.sum(axis=1)
        second = weighted @ self.R.T
        if self.num_groups == 1:
            return m, second - np.outer(m, m)
        group_means = np.add.reduceat(self.R * w, self.starts, axis=1) * self.num_groups  # (k, G)
        return m, second - group_means @ group_means.T / self.num_groups

    def ess(self, w):
        if self.num_groups == 1:
            return float(1.0 / np.sum(w * w))
        per_group = np.add.reduceat((w * self.num_groups) ** 2, self.starts)
        return float(np.mean(1.0 / per_group))

    def unsort(self, w):
        """Weights back in the caller's sample order."""
        if self.order is None:
            return w
        out = np.empty_like(w)
        out[self.order] = w
        return out


def tilt_weights(rewards, lam, groups=None):
    """Weights p_λ(j) ∝ exp(λᵀr_j) over the n samples, shape (n,), summing to 1 (stable softmax).
    With groups, normalised within each prompt group and each group given weight 1/G."""
    tilt = Tilt(rewards, groups)
    _, w, _ = tilt.evaluate(np.asarray(lam, dtype=np.float64).reshape(tilt.k))
    return tilt.unsort(w)


def realized_levels(rewards_align, lam, rewards_eval=None, groups=None):
    """Realized levels E_{p_λ}[r] of the values in rewards_eval (m, n) (default: rewards_align)
    under the tilt by λ of the aligned values rewards_align (k, n). Returns shape (m,)."""
    w = tilt_weights(rewards_align, lam, groups)
    target = rewards_align if rewards_eval is None else rewards_eval
    return np.atleast_2d(np.asarray(target, dtype=np.float64)) @ w


def _kkt_violation(lam, grad, free):
    """max over free coordinates of the KKT residual; grad = c − m."""
    residual = np.where(lam > 0, np.abs(grad), np.maximum(grad, 0.0))[free]
    return float(residual.max()) if residual.size else 0.0


def _group_blocks(tilt):
    """Equality constraints Σ_{j∈g} p_j = 1/G for the LPs over sample distributions."""
    from scipy.sparse import csr_matrix
    rows = tilt.group_of
    return csr_matrix((np.ones(tilt.n), (rows, np.arange(tilt.n))), shape=(tilt.num_groups, tilt.n)), \
        np.full(tilt.num_groups, 1.0 / tilt.num_groups)


def standardise(rewards, c=None):
    """Per-value location and scale: mu (k,) the sample means and sigma (k,) the sample standard
    deviations (1 for a constant row). The solver works on (r − mu)/sigma, where every value has
    spread 1, so its tolerances and LP thresholds mean the same for rewards in [0, 0.003] as in
    [0, 1000]. Returns (R_std, c_std or None, mu, sigma)."""
    R = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    mu = R.mean(axis=1)
    sigma = R.std(axis=1)
    sigma = np.where(sigma > 0, sigma, 1.0)
    R_std = (R - mu[:, None]) / sigma[:, None]
    c_std = None if c is None else (np.asarray(c, dtype=np.float64) - mu) / sigma
    return R_std, c_std, mu, sigma


def _certificate_lp(tilt, c):
    """The certificate LP on (standardised) rows: d ≥ 0, Σd = 1 minimising
    gap(d) = mean_g max_{j∈g} dᵀr_j − dᵀc. Returns (d, gap), gap recomputed exactly from d."""
    from scipy.sparse import csr_matrix, hstack
    k, G = tilt.k, tilt.num_groups
    # variables x = (d_1..d_k, t_1..t_G); minimise mean(t) − dᵀc s.t. dᵀr_j − t_g(j) ≤ 0.
    objective = np.concatenate([-c, np.full(G, 1.0 / G)])
    A_ub = hstack([csr_matrix(tilt.R.T), csr_matrix((-np.ones(tilt.n), (np.arange(tilt.n), tilt.group_of)),
                                                    shape=(tilt.n, G))]).tocsr()
    A_eq = np.concatenate([np.ones(k), np.zeros(G)])[None, :]
    bounds = [(0, None)] * k + [(None, None)] * G
    lp = linprog(objective, A_ub=A_ub, b_ub=np.zeros(tilt.n), A_eq=A_eq, b_eq=[1.0], bounds=bounds,
                 method="highs")
    if lp.status != 0:
        raise RuntimeError(f"certificate LP failed: {lp.message}")
    d = np.clip(lp.x[:k], 0, None)
    d /= d.sum()
    # Recompute the gap exactly rather than trusting the LP's tolerance.
    scores = d @ tilt.R
    return d, float(np.maximum.reduceat(scores, tilt.starts).mean() - d @ c)


def _to_user_direction(d_std, sigma, R, c, groups):
    """A direction found on standardised rows, in the user's units: d ∝ d_std/sigma, Σd = 1 (the same
    half-space, so the same certificate), with its gap recomputed on the user's rewards."""
    d = d_std / sigma
    d /= d.sum()
    tilt = Tilt(R, groups)
    scores = d @ tilt.R
    return d, float(np.maximum.reduceat(scores, tilt.starts).mean() - d @ c)


def infeasibility_certificate(rewards, c, groups=None):
    """The certificate LP, solved on standardised rows (see `standardise`) so that it is equally
    well conditioned at every reward scale. Returns (d, gap) in the user's units: the direction d ≥ 0,
    Σd = 1, and gap(d) = mean_g max_{j∈g} dᵀr_j − dᵀc. gap < 0 proves c infeasible; gap ≥ 0 means c
    is attainable by some distribution over the samples (gap = 0: only on the boundary). d minimises
    the gap measured in standard deviations (`feasibility_margin`), not in raw units."""
    R = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    R_std, c_std, _, sigma = standardise(R, c)
    d_std, _ = _certificate_lp(Tilt(R_std, groups), c_std)
    return _to_user_direction(d_std, sigma, R, c, groups)


def feasibility_margin(rewards, c, groups=None):
    """The scale-free LP margin of palette c: min over d ≥ 0, Σd = 1 of mean_g max_{j∈g} dᵀr̃_j − dᵀc̃
    on standardised rows r̃ = (r − mu)/sigma, in standard deviations. > 0: c is strictly inside the
    attainable set (λ* is finite); < 0: infeasible; 0: on the boundary."""
    R_std, c_std, _, _ = standardise(rewards, np.asarray(c, dtype=np.float64).reshape(-1))
    return _certificate_lp(Tilt(R_std, groups), c_std)[1]


def max_feasible_rho(rewards, c_low, c_high, groups=None, tilt=None):
    """Largest ρ in [0, 1] such that c_low + ρ(c_high − c_low) is attainable by a distribution over
    the samples (an LP over that distribution). Returns None when c_low itself is not attainable."""
    tilt = tilt or Tilt(rewards, groups)
    c_low, c_high = np.asarray(c_low, np.float64), np.asarray(c_high, np.float64)
    scale = 1.0 / standardise(tilt.R)[3]  # each constraint row divided by its value's spread
    A_eq_p, b_eq = _group_blocks(tilt)
    from scipy.sparse import csr_matrix, hstack
    # variables (p_1..p_n, ρ); maximise ρ s.t. −R p + ρ(c_high − c_low) ≤ −c_low.
    A_ub = hstack([csr_matrix(-tilt.R * scale[:, None]), csr_matrix(((c_high - c_low) * scale)[:, None])]).tocsr()
    A_eq = hstack([A_eq_p, csr_matrix((tilt.num_groups, 1))]).tocsr()
    objective = np.zeros(tilt.n + 1)
    objective[-1] = -1.0
    lp = linprog(objective, A_ub=A_ub, b_ub=-c_low * scale, A_eq=A_eq, b_eq=b_eq,
                 bounds=[(0, None)] * tilt.n + [(0, 1)], method="highs")
    if lp.status == 2:
        return None
    if lp.status != 0:
        raise RuntimeError(f"boundary LP failed: {lp.message}")
    return float(lp.x[-1])


def max_feasible_level(rewards, c, index, groups=None, tilt=None):
    """Largest level of value `index` attainable while every other value keeps E[r_i] ≥ c_i (an LP).
    Returns None when the other constraints alone are not attainable."""
    tilt = tilt or Tilt(rewards, groups)
    c = np.asarray(c, np.float64)
    scale = 1.0 / standardise(tilt.R)[3]
    others = [i for i in range(tilt.k) if i != index]
    A_eq, b_eq = _group_blocks(tilt)
    lp = linprog(-tilt.R[index] * scale[index], A_ub=-tilt.R[others] * scale[others, None] if others else None,
                 b_ub=-c[others] * scale[others] if others else None, A_eq=A_eq, b_eq=b_eq,
                 bounds=[(0, None)] * tilt.n, method="highs")
    if lp.status == 2:
        return None
    if lp.status != 0:
        raise RuntimeError(f"level LP failed: {lp.message}")
    return float(-lp.fun / scale[index])


def _check_inputs(R, c, lam_init):
    if R.ndim != 2 or R.shape[1] == 0:
        raise InputError(f"rewards must be a (k, n) array with n ≥ 1; got shape {R.shape}")
    if c.shape != (R.shape[0],):
        raise InputError(f"palette c has {c.size} levels but there are {R.shape[0]} values; give one level per value")
    if not np.all(np.isfinite(R)):
        raise InputError(f"rewards hold {int(np.sum(~np.isfinite(R)))} non-finite entries")
    if not np.all(np.isfinite(c)):
        raise InputError(f"palette c must be finite; got {c.tolist()}")
    if lam_init is not None and (lam_init.shape != c.shape or np.any(lam_init < 0) or not np.all(np.isfinite(lam_init))):
        raise InputError(f"lambda_init must hold {c.size} finite numbers ≥ 0; got {lam_init.tolist()}")


# A certificate counts when its exactly recomputed gap is below −CERTIFICATE_TOL standard deviations;
# a stalled solve with an LP margin above BOUNDARY_TOL is a solver failure, not a boundary palette.
CERTIFICATE_TOL, BOUNDARY_TOL = 1e-12, 1e-9


def solve_palette(rewards, c, groups=None, lam_init=None, optimize_indices=None, tol=1e-6,
                  max_iter=500, spread_limit=1e5, margin=1e-3):
    """Maximise the MAP dual g(λ) over λ ≥ 0 by projected Newton with an Armijo line search.

    The solve runs on standardised rows r̃_i = (r_i − mu_i)/sigma_i (`standardise`): the tilt
    p_λ ∝ exp(λᵀr) is the same with λ̃_i = λ_i·sigma_i, and every value then has spread 1, so the
    result does not depend on the units of the rewards (rewards of scale 0.003 next to scale 385).

    rewards (k, n), c (k,), groups (n,) or None (pooled). lam_init: starting λ (default 0).
    optimize_indices: the coordinates to optimise; the others stay at lam_init (0 if None), as in
    the original's sequential mode. tol: KKT tolerance on the free coordinates, as a fraction of
    each value's spread (its standard deviation over the samples): a feasible result has
    |realized_i − c_i| ≤ tol·sigma_i where λ_i > 0 and realized_i ≥ c_i − tol·sigma_i elsewhere.
    spread_limit: when max_j λᵀr_j − min_j λᵀr_j would exceed it, the solver checks feasibility
    by LP first (λ only grows without bound for infeasible or boundary palettes).
    margin: for infeasible palettes, the suggested palette sits at ρ = boundary_rho·(1 − margin).
    Returns a PaletteResult (λ, levels, violations and certificate in the user's units; the
    violation relative to each value's spread in `relative_violation`).
    """
    R = np.asarray(rewards, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    lam_user = None if lam_init is None else np.asarray(lam_init, dtype=np.float64).reshape(-1)
    _check_inputs(R, c, lam_user)
    k = R.shape[0]
    R_std, c_std, mu, sigma = standardise(R, c)
    lam = np.zeros(k) if lam_user is None else lam_user * sigma
    free = np.zeros(k, bool)
    free[list(range(k)) if optimize_indices is None else list(optimize_indices)] = True
    tilt = Tilt(R_std, groups)
    free_tilt = Tilt(R_std[free], groups) if not free.all() else tilt

    def dual(lam_):
        A, w, s = tilt.evaluate(lam_)
        return lam_ @ c_std - A, A, w, s

    def newton_step(lam_, grad, cov):
        # Coordinates at zero whose gradient points outward stay there (projected Newton).
        idx = np.flatnonzero(free & ~((lam_ <= 0) & (grad <= 0)))
        sub = cov[idx][:, idx]
        ridge = 1e-12 * max(np.trace(sub), 1e-300)
        try:
            step_sub = np.linalg.solve(sub + ridge * np.eye(len(idx)), grad[idx])
        except np.linalg.LinAlgError:
            step_sub = grad[idx]
        if not np.all(np.isfinite(step_sub)) or step_sub @ grad[idx] <= 0:
            step_sub = grad[idx]
        step = np.zeros(k)
        step[idx] = step_sub
        return step

    g, A, w, _ = dual(lam)
    lp_checked, certificate, status, message, lp_margin = False, None, NOT_CONVERGED, "", None
    iterations = 0
    for iterations in range(1, max_iter + 1):
        m, cov = tilt.moments(w)
        grad = c_std - m
        violation = _kkt_violation(lam, grad, free)
        if violation <= tol:
            status = FEASIBLE
            break
        step = newton_step(lam, grad, cov)
        # Armijo backtracking along the projection arc. Near the optimum the change in g falls below
        # its rounding error (~1e-16·|A|); there a step is accepted when it lowers the KKT violation.
        noise = 1e-13 * (1.0 + abs(g) + abs(A))
        t, accepted = 1.0, False
        for _ in range(60):
            lam_new = np.maximum(lam + t * step, 0.0)
            g_new, A_new, w_new, s_new = dual(lam_new)
            spread = s_new.max() - s_new.min()
            if spread > spread_limit and not lp_checked:
                lp_checked = True
                d, lp_margin = _certificate_lp(free_tilt, c_std[free])
                if lp_margin < -CERTIFICATE_TOL:
                    certificate, status = d, INFEASIBLE
                    break
            if spread <= 100 * spread_limit:
                if g_new >= g + 1e-4 * grad @ (lam_new - lam) and g_new >= g:
                    accepted = True
                    break
                if g_new >= g - noise and _kkt_violation(lam_new, c_std - tilt.moments(w_new)[0], free) < violation:
                    accepted = True
                    break
            t *= 0.5
        if status == INFEASIBLE:
            break
        if not accepted:
            message = "line search stalled"
            break
        lam, g, A, w = lam_new, g_new, A_new, w_new
    else:
        message = f"no convergence in {max_iter} iterations"
    if status == FEASIBLE:
        # Polish: up to two more full Newton steps, kept while they lower the violation (the stopping
        # rule is relative to each value's spread; these steps usually gain several more digits).
        for _ in range(2):
            if violation <= 1e-3 * tol:
                break
            lam_new = np.maximum(lam + newton_step(lam, grad, cov), 0.0)
            g_new, A_new, w_new, _ = dual(lam_new)
            m_new, cov_new = tilt.moments(w_new)
            violation_new = _kkt_violation(lam_new, c_std - m_new, free)
            if not violation_new < violation:
                break
            lam, g, A, w, grad, cov, violation = lam_new, g_new, A_new, w_new, c_std - m_new, cov_new, violation_new
            iterations += 1

    if status == NOT_CONVERGED and certificate is None:
        # Divergence or a stall: the palette is infeasible, lies on the boundary, or the solver failed.
        d, lp_margin = _certificate_lp(free_tilt, c_std[free])
        if lp_margin < -CERTIFICATE_TOL:
            certificate, status = d, INFEASIBLE
        elif lp_margin <= BOUNDARY_TOL:
            message = (message + "; " if message else "") + \
                f"the palette is attainable only in the limit (LP margin {lp_margin:.2e} sd): λ* is infinite"
        else:
            message = (message + "; " if message else "") + \
                (f"solver failure: the palette is strictly inside the attainable set (LP margin {lp_margin:.2e} "
                 "sd), so λ* is finite, but Newton did not reach it; please report this with the rewards file")

    m_std, _ = tilt.moments(w)
    realized = mu + sigma * m_std
    residual = np.where(lam > 0, np.abs(c_std - m_std), np.maximum(c_std - m_std, 0.0))[free]
    result = PaletteResult(
        status=status, lam=lam / sigma, c=c, realized=realized, slack=realized - c,
        kl=float(lam @ m_std - A), ess=tilt.ess(w), iterations=iterations,
        max_violation=float((residual * sigma[free]).max()) if residual.size else 0.0,
        relative_violation=float(residual.max()) if residual.size else 0.0, spread=sigma,
        lp_margin=lp_margin, message=message)
    if status == INFEASIBLE:
        d = np.zeros(k)
        d[free], result.certificate_gap = _to_user_direction(certificate, sigma[free], R[free], c[free], groups)
        result.certificate = d
        lam0 = result.lam.copy()
        lam0[free] = 0.0
        m0 = realized_levels(R, lam0, groups=groups)
        target = np.where(free, c, m0)
        rho = max_feasible_rho(R, m0, target, groups)
        if rho is not None:
            result.boundary_rho = rho
            result.suggested_rho = rho * (1.0 - margin)
            result.suggested_palette = m0 + result.suggested_rho * (target - m0)
        if tilt.num_groups == 1:
            result.message = (f"infeasible: along direction d = {np.round(d, 4).tolist()} every sample falls "
                              f"short of the palette by {-result.certificate_gap:.4g} (dᵀr_j < dᵀc for all j)")
        else:
            result.message = (f"infeasible: along direction d = {np.round(d, 4).tolist()} the mean over prompts "
                              f"of each prompt's best sample falls short of the palette by "
                              f"{-result.certificate_gap:.4g} (mean_g max_(j in g) dᵀr_j < dᵀc)")
    return result


def solve_legacy(rewards, c, lam_init=None, optimize_indices=None, steps=150, lr=0.1):
    """The original MAP optimiser, reproduced exactly for regression against published λ.

    Adam(lr=0.1) on τ = log λ for `steps` steps in float32, with the naive log(mean(exp(λᵀr)))
    (no log-sum-exp) and no convergence test. λ starts at 1 on the optimised coordinates; the others
    keep lam_init (0 if None). It fails only when λ turns NaN/Inf (float32 overflow), and returns
    the λ set at the start of the last step. Returns (lam as float64 array or None, success).
    """
    import torch

    R = torch.tensor(np.asarray(rewards, dtype=np.float32))
    target = torch.tensor(np.asarray(c, dtype=np.float32).reshape(-1))
    k = R.shape[0]
    lam_fixed = torch.zeros(k) if lam_init is None else torch.tensor(np.asarray(lam_init, dtype=np.float32))
    idx = torch.arange(k) if optimize_indices is None else torch.as_tensor(list(optimize_indices), dtype=torch.long)
    tau = torch.zeros(len(idx), requires_grad=True)
    optimizer = torch.optim.Adam([tau], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    lam = None
    for _ in range(steps):
        lam = lam_fixed.clone()
        lam[idx] = torch.exp(tau)
        if not torch.all(torch.isfinite(lam)):
            return None, False
        loss = -(lam @ target - torch.log(torch.mean(torch.exp(lam @ R))))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lam = lam.detach()
    if not torch.all(torch.isfinite(lam)):
        return None, False
    return lam.double().numpy(), True


def evaluate_lambda(rewards, lam, c, groups=None, tol=1e-6):
    """The PaletteResult of a given λ (no optimisation): status "feasible" when λ reaches the palette
    within `tol` in reward units (realized ≥ c − tol; a λ from elsewhere need not satisfy stationarity), else
    "not_converged". max_violation is the largest shortfall max_i (c_i − realized_i)⁺."""
    lam = np.asarray(lam, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    tilt = Tilt(rewards, groups)
    A, w, _ = tilt.evaluate(lam)
    m, _ = tilt.moments(w)
    shortfall = np.maximum(c - m, 0.0)
    sigma = standardise(tilt.R)[3]
    status = FEASIBLE if shortfall.max() <= tol else NOT_CONVERGED
    shortfall = float(shortfall.max())
    return PaletteResult(status=status, lam=lam, c=c, realized=m, slack=m - c, kl=float(lam @ m - A),
                         ess=tilt.ess(w), iterations=0, max_violation=shortfall,
                         relative_violation=float(np.max(np.maximum(c - m, 0.0) / sigma)), spread=sigma,
                         message="" if status == FEASIBLE else f"λ misses the palette by up to {shortfall:.4g}")


def random_palettes(rewards, low, high, rng, num, scaling_max, groups=None, tol=1e-6, max_attempts=None,
                    on_accept=None):
    """Random feasible palettes and their λ (the draw behind alignValues' gen_rand_MAP_lambda).

    Each attempt draws c ~ Uniform(low, high) per value, solves it, and accepts it when feasible with
    Σλ ≤ scaling_max; `on_accept(c, lam)` is called right after each acceptance (the caller may draw from
    the same rng there). Stops after `num` acceptances or `max_attempts` (default 100·num) attempts.
    Returns (list of (c, PaletteResult), attempts).
    """
    num = int(num)
    max_attempts = int(max_attempts or 100 * num)
    accepted, attempts = [], 0
    while len(accepted) < num and attempts < max_attempts:
        attempts += 1
        c = rng.uniform(low, high)
        result = solve_palette(rewards, c, groups=groups, tol=tol)
        if not result.success or result.lam.sum() > scaling_max:
            continue
        accepted.append((c, result))
        if on_accept is not None:
            on_accept(c, result.lam)
    return accepted, attempts
