"""The benchmark suite: ``python -m bench.run [--quick]`` (see docs in ``bench/run.py``)."""
