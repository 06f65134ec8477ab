"""Reward distributions of a results file, before and after alignment.

A command line over `mapalign.plots.plot_reward_dist`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_reward_dist import plot_hist, plot_hist_positive, plot_weighted_unweighted_histograms


if __name__ == "__main__":
    cli.main({"plot_hist": plot_hist, "plot_hist_positive": plot_hist_positive,
              "plot_weighted_unweighted_histograms": plot_weighted_unweighted_histograms})
