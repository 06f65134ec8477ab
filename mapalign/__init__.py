"""mapalign: the library under the toolkit's command-line scripts (multi-value alignment of language
models: MAP's palette solver, Monte-Carlo decoding, RLOO/DPO/ALT/DPA fine-tuning, evaluation, SLURM
pipelines). The scripts at the checkout's top level (gendata.py, alignValues.py, ...) are thin fire
CLIs over these modules; see the README's "Architecture" section for the layers.
"""
import os

# The checkout that holds the CLI scripts (gendata.py, trainPPO.py, submit/, ...): pipelines and engines
# start those scripts as subprocesses. The package is installed editable (`pip install -e .`), so this
# is the folder above the package.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
