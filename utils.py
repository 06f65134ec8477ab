"""Names the original MAP `utils` module exported, kept so old imports and scripts keep working.

The code itself lives in the mapalign package, in modules named for their concern: mapalign.values
(the value registry), mapalign.models (model loading), mapalign.records (the record store),
mapalign.training (trainer helpers).
"""
from mapalign.training import sanitize_save_path
from mapalign.values import ALL_SUPPORTED_VALUES, TASK_NAME, TASK_VALUES  # TASK_NAME: 'conversation' or 'sentiment_control'

__all__ = ["ALL_SUPPORTED_VALUES", "TASK_NAME", "TASK_VALUES", "convert_ppo_modelname_to_huggingface_valid"]


def convert_ppo_modelname_to_huggingface_valid(ppo_model_name):
    """Make a trained model's folder name a valid hub-style name, as the original did: ',' and '='
    in the last path component become '_' ("modelsPPO/opt1.3b-lam=1.5,1.1" -> "modelsPPO/opt1.3b-lam_1.5_1.1")."""
    return sanitize_save_path(ppo_model_name)
