"""Export: ONNX graphs, their metadata, and the float16 check."""
