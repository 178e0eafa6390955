"""The export stage: checkpoint -> serving graph -> ONNX / TorchScript / torch.export, checked by
the parity gate, registered in the BentoML model store. See ``python -m export --help``."""
