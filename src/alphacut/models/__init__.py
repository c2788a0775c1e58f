"""Model registry, weights pulling and ONNX Runtime sessions."""
