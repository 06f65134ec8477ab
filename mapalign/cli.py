"""The entry layer of the top-level fire CLIs: one entry point, where the project's input errors print one
clear line, not a traceback; bugs keep theirs. (List arguments are parsed by arguments.py, which library
code uses too; nothing in the package imports this module but the entry points.)"""
import inspect
import os
import sys

import fire

from mapalign import configs
from mapalign.errors import InputError


def main(component, **fire_kwargs):
    """Run `component` under python-fire (fire_kwargs go to fire.Fire), reporting input errors as
    `report_input_errors` does."""
    command = fire_kwargs.pop("command", None)
    command = _help_command(component, list(sys.argv[1:] if command is None else command))
    report_input_errors(check_flags, component, command)
    return report_input_errors(fire.Fire, component, command=command, **fire_kwargs)


def check_flags(component, argv):
    """Raise InputError for the first flag of argv that no function on fire's path takes (unknown_flags),
    with the closest valid name as a hint and the valid ones listed."""
    unknown, valid = unknown_flags(component, argv)
    if unknown:
        raise configs.unknown_flag_error(unknown, valid)


def unknown_flags(component, argv):
    """The `--flags` of a command line that no function on fire's path takes, and the valid ones.

    fire binds the flags it can, runs the command, and only then complains about a flag it could not
    use, so a misspelt flag (`--temprature=0.7`) would run the whole job with the default and write
    its results first. The path is what fire calls: a function; a class's __init__ and the method
    named by the first word that is one; a dict's command (the first word). A flag counts under its
    fire forms: `--name=v`, `--name v`, `--name`, `--noname` (False) and hyphens for underscores.
    Nothing is checked when help is asked for, after fire's `--` separator, or when a callable on the
    path takes **kwargs (those check their own flags, see configs.config_from_flags).
    Returns (unknown names in order, valid names in declaration order)."""
    argv = list(argv)
    if "--" in argv:
        argv = argv[:argv.index("--")]
    if any(a in ("-h", "--help") for a in argv):
        return [], []
    words = [a for a in argv if not a.startswith("-")]
    path = [component]
    if isinstance(component, dict):
        if not argv or argv[0] not in component:
            return [], []
        path = [component[argv[0]]]
    elif inspect.isclass(component):
        method = next((getattr(component, w) for w in words
                       if not w.startswith("_") and inspect.isroutine(getattr(component, w, None))), None)
        path = [component] + ([method] if method is not None else [])
    valid = []
    for target in path:
        if not callable(target):
            return [], []
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: let fire judge
            return [], []
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return [], []
        valid += [p.name for p in params if p.name != "self" and p.kind is not p.VAR_POSITIONAL
                  and p.name not in valid]
    unknown = []
    for a in argv:
        if not a.startswith("--"):
            continue
        name = a[2:].split("=", 1)[0].replace("-", "_")
        if name not in valid and not (name.startswith("no") and name[2:] in valid) and name not in unknown:
            unknown.append(name)
    return unknown, valid


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
