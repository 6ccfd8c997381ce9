"""Helpers of the tests, imported as `support.<module>` (tests/ is on pytest's pythonpath, pyproject.toml).

datasets         the one builder of converted datasets: an image tree through tools/make_shards.py
demo_data        image trees of the shipped demo JPEGs or of generated pictures, make_shards by path,
                 dataset locations
loader_data      a loader of each kind with the loader tests' defaults
official_layouts tiny copies of real-world noisy datasets in their official layouts
methods          a method on a hand-made context and the Run handle its hooks receive
tools            scripts of tools/ (not a package) loaded by path
launch           real multi-process CPU runs through `accelerate launch`; the *_worker.py scripts
                 are what those processes run
"""
