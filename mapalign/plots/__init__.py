"""Paper figures and tables for MAP, one fire CLI per figure (see each script's docstring).

Run a script from the repository root, e.g. `python plot/plot_reward_dist.py plot_hist --json_file=...`;
`python plot/make_gallery.py` renders every figure from the offline demo's results.
"""
