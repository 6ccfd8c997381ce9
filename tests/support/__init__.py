"""Helpers of the tests, imported as `support.<module>` (tests/ is on pytest's pythonpath, pyproject.toml).

demo_data        the shipped demo JPEGs as image trees, make_shards by path, dataset locations
loader_data      a hand-made converted dataset and a loader of each kind for the loader tests
official_layouts tiny copies of real-world noisy datasets in their official layouts
methods          a method on a hand-made context and the Run handle its hooks receive
tools            scripts of tools/ (not a package) loaded by path
launch           real multi-process CPU runs through `accelerate launch`; the *_worker.py scripts
                 are what those processes run
"""
