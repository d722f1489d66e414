"""qrdistill: QR-Distill — quality-filtered routing with cooperative distillation.

Nothing heavy is imported here; stages import torch/transformers inside functions.
"""

__version__ = "0.1.0"
