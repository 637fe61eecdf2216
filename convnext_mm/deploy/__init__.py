"""ONNX export of whole detectors and segmentors (mmdeploy and our
rewriters) and its verification against PyTorch in ONNX Runtime."""
