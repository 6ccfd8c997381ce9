"""Data: a raw dataset -> a converted dataset on disk -> batches on the device (DESIGN.md).

Split by job into layers; a module imports only from its own layer or the ones above it in this
list (tests/test_imports.py checks it):

  errors.py  the one base class of errors meant for people (imports nothing of pipeline)
  format/    what is on disk: the dataset directory and its manifest, shard files, label-set names,
             provenance, folder locks
  load/      dataset -> Batch: make_loader and its cache / DALI / fallback modes, the epoch plan
             and its seeds, sampling, decoding, transforms and views
  make/      raw -> dataset (tools/make_shards.py): sources, noise generators, the CIFAR-N join,
             shard writing, the converter

The package files import nothing: each thing is imported from the module that defines it.
"""
