"""Realized levels of aligned models as quantiles of the base model's rewards (the paper's tables in
quantile form, e.g. MAP-D vs MAP-F at the 50/60/70% palettes).

A command line over `mapalign.plots.plot_tab_in_quantiles`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_tab_in_quantiles import tab_in_quantiles


if __name__ == "__main__":
    cli.main(tab_in_quantiles)
