"""A converted dataset -> Batches on the device: loader.py's make_loader is the front door.

loader.py -> cache_loader.py, dali_loader.py, webdataset_loader.py -> split_loader.py, epochs.py,
decode.py, random_access.py, sampling.py, transforms.py, batch.py. Imports pipeline/format/, never
pipeline/make/.
"""
