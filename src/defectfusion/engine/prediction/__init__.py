"""Prediction: the batch predictor (PyTorch or ONNX Runtime) and tiled inference."""
