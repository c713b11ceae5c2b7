"""From a PyTorch model to shipped files: ONNX export with parity checks, graph preparation, INT8 quantization, ORT format, ARM emulation checks."""
