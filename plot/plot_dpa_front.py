"""DPA figure: the reward-space front of every iteration, the direction control and the length per direction.

A command line over `mapalign.plots.plot_dpa_front`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_dpa_front import plot_front


if __name__ == "__main__":
    cli.main(plot_front)
