"""`edgetl demo`: the whole pipeline on a dataset that ships with the package (run.py, data.py), and a run
without training for graph tests and benchmarks (scaffold.py)."""
