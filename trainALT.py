"""ALT: alignment with textual feedback (Quark, ALT-RM, ALT-LMC, ALT-LMU, and MAP palettes as feedback).

A command line over `mapalign.train_alt`; run with --help for every flag."""
import os

from mapalign import cli
from mapalign.train_alt import ALT


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cli.main(ALT)
