"""What is on disk: a converted dataset (manifest, shards, label sets) and the files beside it.

dataset.py (the reader and the manifest's schema), shards.py (the tar and DALI index layout),
label_sets.py (synthetic label-set names), provenance.py (code version), locks.py (folder locks).
Imports nothing of pipeline/make/ or pipeline/load/.
"""
