"""cli.py and arguments.py: list arguments as fire passes them, and one-line errors."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mapalign import arguments
from mapalign import cli
from conftest import ROOT


def test_float_list_forms():
    assert arguments.float_list((1, "2.5"), "x") == [1.0, 2.5]  # fire's tuple for --x=1,2.5
    assert arguments.float_list("0.1, 2", "x") == [0.1, 2.0] and arguments.float_list("[1,2]", "x") == [1.0, 2.0]
    assert arguments.float_list(3, "x") == [3.0] and arguments.float_list(0, "x") == [0.0]
    assert arguments.float_list(np.array([[1.0], [2.0]]), "x") == [1.0, 2.0]
    with pytest.raises(ValueError, match="--x must hold numbers"):
        arguments.float_list("a,b", "x")
    with pytest.raises(ValueError, match="finite"):
        arguments.float_list("1,nan", "x")
    with pytest.raises(ValueError, match="non-empty"):
        arguments.float_list("", "x")


def test_lambda_per_value():
    assert arguments.lambda_per_value((1, 2), ["a", "b"]) == [1.0, 2.0]
    with pytest.raises(ValueError, match="1 entries but --value_list names 2 values"):
        arguments.lambda_per_value(1.0, ["a", "b"])


def run_main(body):
    """Run cli.main over a function whose body is `body`; returns the finished process."""
    code = f"from mapalign import cli, errors\ndef f():\n    {body}\ncli.main(f)\n"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "MAP_DEBUG"})


@pytest.mark.parametrize("body,message", [
    ("raise errors.NotFoundError('no such results file: x.json')", "no such results file: x.json"),
    ("raise errors.InputError('--c_list has 3 levels')", "--c_list has 3 levels"),
    ("raise errors.UnknownNameError('unknown value \\'x\\'')", "unknown value 'x'"),
    ("from mapalign import records; raise records.RecordsError('bad.json: record 3 has no prompt')", "bad.json: record 3 has no prompt"),
])
def test_input_errors_print_one_line(body, message):
    out = run_main(body)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {message}"


@pytest.mark.parametrize("body", [
    "return {}['missing_key']",                    # a programming bug, not bad input
    "raise ValueError('a library complained')",
    "raise OSError('disk full')",
    "raise TypeError('bad call')",
])
def test_other_errors_keep_their_traceback(body):
    out = run_main(body)
    assert out.returncode == 1 and "Traceback" in out.stderr and "error: " not in out.stderr.splitlines()[-1][:7]


def test_every_module_error_class_is_an_input_error():
    from mapalign import decoding
    from mapalign import evaluation
    from mapalign import dpodata as genDPOdata
    from mapalign import soup as getDPOsoup
    from mapalign import merging as mergeProcessor
    from mapalign import models
    from mapalign import prompts
    from mapalign import records
    from mapalign.errors import InputError
    from mapalign.plots import artefacts
    for cls in (records.RecordsError, decoding.DecodingError, evaluation.EvaluationError, prompts.PromptsError,
                getDPOsoup.SoupError, artefacts.ArtefactError, models.ModelNotAvailableError,
                genDPOdata.DataNotAvailableError, mergeProcessor.OutputExistsError):
        assert issubclass(cls, InputError), cls
    with pytest.raises(InputError, match="--x must hold numbers"):
        arguments.float_list("a,b", "x")


def test_unknown_value_is_an_input_error_and_still_a_key_error():
    from mapalign import values
    from mapalign.errors import InputError
    with pytest.raises(InputError, match="unknown value 'nope'") as info:
        values.get_spec("nope")
    assert isinstance(info.value, KeyError)


def test_report_input_errors_for_scripts_without_fire(capsys, monkeypatch):
    # rewardTrainer parses its own arguments (HfArgumentParser) and uses this directly.
    from mapalign.errors import NotFoundError
    monkeypatch.delenv("MAP_DEBUG", raising=False)

    def missing():
        raise NotFoundError("data file not found: 'x.json'")
    with pytest.raises(SystemExit) as info:
        cli.report_input_errors(missing)
    assert info.value.code == 2 and capsys.readouterr().err == "error: data file not found: 'x.json'\n"
    assert cli.report_input_errors(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(KeyError):
        cli.report_input_errors(lambda: {}["bug"])


class Job:
    """A fire class command: flags of __init__ and of the method named on the command line."""

    def __init__(self, path, temperature=1.0):
        self.path = path

    def generate(self, batch_size=8, verbose=False):
        return "ran"

    def run(self, **flags):
        return "ran"


def generate(n=1, c_list=None):
    return "ran"


@pytest.mark.parametrize("component,argv,unknown", [
    (generate, ["--n=2", "--c_list=1,2"], []),
    (generate, ["--n", "2", "--c-list", "1,2"], []),                       # spaced value, hyphenated name
    (generate, ["--c_lst=1,2"], ["c_lst"]),
    (Job, ["--path=x", "generate", "--batch_size=4", "--verbose"], []),
    (Job, ["--path=x", "--noverbose", "generate"], []),                     # fire's --noflag = False
    (Job, ["--path=x", "--temprature=0.7", "generate", "--batch=4"], ["temprature", "batch"]),
    (Job, ["--path=x", "--anything=1", "run"], []),                         # **flags check their own
    (Job, ["--path=x", "--bogus=1"], ["bogus"]),                            # no command named: __init__ only
    ({"generate": generate}, ["generate", "--n=3"], []),
    ({"generate": generate}, ["generate", "--m=3"], ["m"]),
    (generate, ["--bogus=1", "--help"], []),                                # help asked for: fire shows it
    (generate, ["--n=1", "--", "--trace"], []),                             # after fire's separator
])
def test_unknown_flags(component, argv, unknown):
    assert cli.unknown_flags(component, argv)[0] == unknown


def test_unknown_flags_lists_the_valid_ones():
    assert cli.unknown_flags(Job, ["--x=1", "generate"]) == (["x"], ["path", "temperature", "batch_size", "verbose"])


def test_a_misspelt_flag_stops_before_the_job_runs(tmp_path):
    # fire alone would run the solve, write results/, and only then complain about --c_lst; the flags are
    # checked before anything is read (the results file named here does not exist)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "alignValues.py"), "--value_list=humor,harmless",
                          "--file_path=scores.json", "--c_list=0.5,0.5", "--c_lst=1,2", "optimize_lambda"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: unknown flag --c_lst (did you mean --c_list?); valid flags: --value_list")
    assert not os.listdir(tmp_path)
