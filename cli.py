"""Entry point shared by the top-level fire CLIs: user errors print one clear line, not a traceback."""
import os
import sys

import fire


def main(component):
    """Run `component` under python-fire. Bad input (ValueError, KeyError) and anything missing or
    unreachable here (OSError: a file, a model or data set not available offline, permissions) exit
    with status 2 and the message alone; set MAP_DEBUG=1 to see the traceback."""
    try:
        fire.Fire(component)
    except (ValueError, KeyError, OSError) as e:
        if os.environ.get("MAP_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
