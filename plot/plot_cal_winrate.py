"""Win rates of aligned models against their base model: the JSON summary, the LaTeX table and the
win-rate figures of the paper's comparison (MAP vs MORL, DPO, DPO-Soup).

A command line over `mapalign.plots.plot_cal_winrate`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_cal_winrate import collect_multiple_results, plot_helpful_vs_harmless, plot_winrate, render_latex_table


if __name__ == "__main__":
    cli.main({"collect_multiple_results": collect_multiple_results, "render_latex_table": render_latex_table,
              "plot_helpful_vs_harmless": plot_helpful_vs_harmless, "plot_winrate": plot_winrate})
