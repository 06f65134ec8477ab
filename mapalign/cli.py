"""What the top-level fire CLIs share: one entry point (the project's input errors print one clear
line, not a traceback; bugs keep theirs) and the normalisation of list arguments as fire passes them."""
import math
import os
import sys

import fire

from mapalign.errors import InputError


def main(component, **fire_kwargs):
    """Run `component` under python-fire (fire_kwargs go to fire.Fire), reporting input errors as
    `report_input_errors` does."""
    return report_input_errors(fire.Fire, component, **fire_kwargs)


def report_input_errors(fn, *args, **kwargs):
    """Call fn(*args, **kwargs) for a command line. The project's own input errors (errors.InputError
    and its subclasses: records.RecordsError, a missing file or model, an unknown value, a bad
    palette, ...) exit with status 2 and the message alone; set MAP_DEBUG=1 to see their traceback.
    Any other exception (KeyError, TypeError, a library's ValueError, ...) is a bug, not bad input:
    it keeps its traceback and exits 1."""
    try:
        return fn(*args, **kwargs)
    except InputError as e:
        if os.environ.get("MAP_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def float_list(x, name):
    """A list of floats from what fire passes: a number (`--c=0.5`), a tuple (`--c=1,2`), a string
    ("1, 2" or "[1,2]"), a list/array, or "@FILE": the λ of a target file written by
    `alignValues.py ... optimize_lambda --save_lambda=FILE` (how pipelines pass a solved λ on).
    Raises errors.InputError naming `--{name}` for anything else, an empty list or non-finite numbers."""
    if isinstance(x, str) and x.startswith("@"):
        x = _lambda_file(x[1:], name)
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


def _lambda_file(path, name):
    from mapalign import primaldual  # imported here: it pulls in the solver, which most CLIs never need
    return primaldual.load_target(path, flag=f"--{name}=@")["lam"]


def str_list(x, name):
    """A list of strings from what fire passes: a comma-separated string or a list/tuple (fire makes
    `--x=a,b` a tuple). Items are stripped; empty ones dropped. Raises errors.InputError naming `--{name}`
    for other types or an empty list."""
    if isinstance(x, str):
        items = x.split(",")
    elif isinstance(x, (list, tuple)):
        items = [str(v) for v in x]
    else:
        raise InputError(f"--{name} must be a comma-separated string or a list; got {x!r}")
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise InputError(f"--{name} is empty")
    return items


def values_and_lambda(value_list, lam_list):
    """The aligned values (values.expand_value_list) and their λ, one per value, as lists.
    Raises errors.InputError when the counts differ."""
    from mapalign.values import expand_value_list
    values = expand_value_list(value_list)
    lam = float_list(lam_list, "lam_list")
    if len(lam) != len(values):
        raise InputError(f"--lam_list has {len(lam)} entries but --value_list names {len(values)} values "
                         f"({values}); give one λ per value, in the same order.")
    return values, lam
