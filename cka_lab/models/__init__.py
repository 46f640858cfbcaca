"""EDT models: the network, its named configurations and checkpoint I/O."""

from cka_lab.models.checkpoint import (
    Checkpoint,
    infer_edt,
    load_model,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from cka_lab.models.edt import EDT, create_edt, mirror_pad
from cka_lab.models.registry import TASK_KEYS, EDTConfig, config_from_name, parse_name

__all__ = [
    "EDT",
    "EDTConfig",
    "TASK_KEYS",
    "Checkpoint",
    "config_from_name",
    "create_edt",
    "infer_edt",
    "load_model",
    "load_weights",
    "mirror_pad",
    "parse_name",
    "read_checkpoint",
    "save_checkpoint",
]
