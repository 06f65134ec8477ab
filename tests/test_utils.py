"""utils.py keeps the original module's public names."""
import utils


def test_original_names():
    assert utils.TASK_NAME == "conversation"
    assert utils.ALL_SUPPORTED_VALUES == ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence",
                                          "perplexity"]
    assert utils.convert_ppo_modelname_to_huggingface_valid("modelsPPO/opt1.3b-lam=1.5,1.1-val=a,b") == \
        "modelsPPO/opt1.3b-lam_1.5_1.1-val_a_b"
