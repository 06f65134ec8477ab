"""DPA: directional preference alignment by rejection-sampling fine-tuning, and MAP × DPA palette-conditioned
SFT (see dpatrainer.py for the method, dpa.py for directions, weights and templates).

A command line over `mapalign.train_dpa`; run with --help for every flag."""
import os

from mapalign import cli
from mapalign.train_dpa import TrainDPA


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cli.main(TrainDPA)
