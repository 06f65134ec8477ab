"""cli.py: list arguments as fire passes them, and one-line errors."""
import subprocess
import sys

import numpy as np
import pytest

import cli
from conftest import ROOT


def test_float_list_forms():
    assert cli.float_list((1, "2.5"), "x") == [1.0, 2.5]  # fire's tuple for --x=1,2.5
    assert cli.float_list("0.1, 2", "x") == [0.1, 2.0] and cli.float_list("[1,2]", "x") == [1.0, 2.0]
    assert cli.float_list(3, "x") == [3.0] and cli.float_list(0, "x") == [0.0]
    assert cli.float_list(np.array([[1.0], [2.0]]), "x") == [1.0, 2.0]
    with pytest.raises(ValueError, match="--x must hold numbers"):
        cli.float_list("a,b", "x")
    with pytest.raises(ValueError, match="finite"):
        cli.float_list("1,nan", "x")
    with pytest.raises(ValueError, match="non-empty"):
        cli.float_list("", "x")


def test_values_and_lambda():
    assert cli.values_and_lambda("a,b", (1, 2)) == (["a", "b"], [1.0, 2.0])
    with pytest.raises(ValueError, match="1 entries but --value_list names 2 values"):
        cli.values_and_lambda(("a", "b"), 1.0)


def test_user_errors_print_one_line():
    code = "import cli\ndef f():\n    raise FileNotFoundError('no such results file: x.json')\ncli.main(f)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == "error: no such results file: x.json"
