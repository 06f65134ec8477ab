"""utils.py keeps the original module's public names. It is a top-level script-level module, not part of
the package, so the test loads it from its file (tests import only the package)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("map_utils", os.path.join(ROOT, "utils.py"))
utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(utils)


def test_original_names():
    assert utils.TASK_NAME == "conversation"
    assert utils.ALL_SUPPORTED_VALUES == ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence",
                                          "perplexity"]
    assert utils.convert_ppo_modelname_to_huggingface_valid("modelsPPO/opt1.3b-lam=1.5,1.1-val=a,b") == \
        "modelsPPO/opt1.3b-lam_1.5_1.1-val_a_b"
