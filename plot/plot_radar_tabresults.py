"""Radar chart of realized levels, as quantiles of the unaligned model's rewards (paper Fig. radar).

A command line over `mapalign.plots.plot_radar_tabresults`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_radar_tabresults import plot_radar


if __name__ == "__main__":
    cli.main(plot_radar)
