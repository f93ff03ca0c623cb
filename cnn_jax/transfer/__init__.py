"""Transfer learning: pretrained weights in (this project's runs, torchvision's files) and out,
freezing and learning rates per part, feature extraction and linear probes.

| module | what |
| --- | --- |
| `loading` | `load_pretrained(target, source, reinit=("head",))`: partial loading by name, with a report |
| `torchvision` | `import_torchvision`, `from_torchvision`, `to_torchvision`, `load_state_dict`, `save_state_dict` |
| `freeze` | `make_transfer_optimizer` (frozen parts, unfreezing, per-part learning rates), `freeze_batch_norm` |
| `features` | `feature_fn`, `extract_features`, `save_features`, `train_linear_probe` |
| `setup` | `setup_transfer(config, state, schedule)`: `config.transfer` in the training loop |
"""

from cnn_jax.transfer.features import (LinearProbe, extract_features, feature_fn, layer_names,
                                       load_features, save_features, train_linear_probe)
from cnn_jax.transfer.freeze import (freeze_batch_norm, make_transfer_optimizer, param_labels)
from cnn_jax.transfer.loading import LoadReport, load_pretrained
from cnn_jax.transfer.torchvision import (export_torchvision, from_torchvision, import_torchvision,
                                          load_state_dict, save_state_dict, to_torchvision)

__all__ = ["LinearProbe", "LoadReport", "export_torchvision", "extract_features", "feature_fn",
           "freeze_batch_norm", "from_torchvision", "import_torchvision", "layer_names",
           "load_features", "load_pretrained", "load_state_dict", "make_transfer_optimizer",
           "param_labels", "save_features", "save_state_dict", "to_torchvision",
           "train_linear_probe"]
