"""`edgetl export`: the checkpoint to a checked ONNX graph (run.py), and the graph writer quantize shares (write.py)."""
