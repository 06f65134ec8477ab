"""The entry layer of the top-level fire CLIs: one entry point, where the project's input errors print one
clear line, not a traceback; bugs keep theirs. (List arguments are parsed by arguments.py, which library
code uses too; nothing in the package imports this module but the entry points.)"""
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
