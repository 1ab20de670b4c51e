"""hwm: HarmonyDream world models on PyTorch Lightning and TorchRL."""

__version__ = "0.1.0"
