"""List arguments as python-fire passes them, normalised for every CLI and library entry point: numbers,
names, and λ (given by hand or as "@FILE", a λ target file). Low-level on purpose: it imports only errors
and the λ target file format, so any module may use it without pulling in a CLI layer."""
import math

from mapalign.errors import InputError
from mapalign.lambda_targets import load_target


def float_list(x, name):
    """A list of floats from what fire passes: a number (`--c=0.5`), a tuple (`--c=1,2`), a string
    ("1, 2" or "[1,2]"), a list/array, or "@FILE": the λ of a target file written by
    `alignValues.py ... optimize_lambda --save_lambda=FILE` (how pipelines pass a solved λ on).
    Raises errors.InputError naming `--{name}` for anything else, an empty list or non-finite numbers."""
    if isinstance(x, str) and x.startswith("@"):
        x = load_target(x[1:], flag=f"--{name}=@")["lam"]
    if isinstance(x, str):
        items = [s for s in x.replace(" ", "").strip("[]").split(",") if s]
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        items = [x]
    elif hasattr(x, "__iter__"):
        items = [v for v in (x.ravel() if hasattr(x, "ravel") else x)]
    else:
        raise InputError(f"--{name} must be a number or a comma-separated list of numbers; got {x!r}")
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        raise InputError(f"--{name} must hold numbers only; got {x!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"--{name} must be a non-empty list of finite numbers; got {x!r}")
    return out


def split_items(x):
    """The items of a comma-separated string or a list/tuple (fire makes `--x=a,b` a tuple), as stripped
    strings with empty ones dropped; None for any other type (the caller names the flag in its error)."""
    if isinstance(x, str):
        items = x.split(",")
    elif isinstance(x, (list, tuple)):
        items = [str(v) for v in x]
    else:
        return None
    return [s.strip() for s in items if s.strip()]


def str_list(x, name):
    """A list of strings from what fire passes (split_items). Raises errors.InputError naming `--{name}`
    for other types or an empty list."""
    items = split_items(x)
    if items is None:
        raise InputError(f"--{name} must be a comma-separated string or a list; got {x!r}")
    if not items:
        raise InputError(f"--{name} is empty")
    return items


def lambda_per_value(lam_list, values):
    """The λ of --lam_list (float_list) for the aligned `values` (names, already expanded by
    values.expand_value_list), one per value, as a list. Raises errors.InputError when the counts differ."""
    lam = float_list(lam_list, "lam_list")
    if len(lam) != len(values):
        raise InputError(f"--lam_list has {len(lam)} entries but --value_list names {len(values)} values "
                         f"({values}); give one λ per value, in the same order.")
    return lam
