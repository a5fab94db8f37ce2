"""TensorRT engines: the `edgetl build` stage (build.py) and what an engine file is tied to (engine.py)."""
