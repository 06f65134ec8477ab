"""MAP-F: fine-tune a policy toward the MAP target p_λ(y|x) ∝ p0(y|x)·exp(λᵀr(x,y)).

A command line over `mapalign.train_ppo`; run with --help for every flag."""
import os

from mapalign import cli
from mapalign.train_ppo import main


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cli.main(main)
