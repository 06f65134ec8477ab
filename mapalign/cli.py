"""The entry layer of the top-level fire CLIs: one entry point, where the project's input errors print one
clear line, not a traceback; bugs keep theirs. (List arguments are parsed by arguments.py, which library
code uses too; nothing in the package imports this module but the entry points.)"""
import inspect
import os
import sys

import fire

from mapalign.errors import InputError


def main(component, **fire_kwargs):
    """Run `component` under python-fire (fire_kwargs go to fire.Fire), reporting input errors as
    `report_input_errors` does."""
    command = fire_kwargs.pop("command", None)
    command = _help_command(component, list(sys.argv[1:] if command is None else command))
    return report_input_errors(fire.Fire, component, command=command, **fire_kwargs)


def _help_command(component, argv):
    """`-h`/`--help` as fire's separated `-- --help` for a command that takes its flags through a **flags
    catch-all (a trainer command, see `document`): fire would hand it a bare --help as one more flag. A
    dict of commands keeps the command's name; other flags are dropped (help was asked for, not a run).
    Every other command line is left as it is."""
    path = argv[:1] if isinstance(component, dict) and argv and argv[0] in component else []
    target = component[path[0]] if path else component
    if "--" in argv or not any(a in ("-h", "--help") for a in argv) or not inspect.isroutine(target):
        return argv
    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values()):
        return argv
    return path + ["--", "--help"]


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
