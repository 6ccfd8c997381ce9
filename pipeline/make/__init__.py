"""A raw dataset -> a converted dataset on disk (tools/make_shards.py drives it).

convert.py (the driver) -> sources/ (one reader per raw format), noise.py (synthetic label sets),
cifar_n.py (the CIFAR-N join), shard_stream.py (parallel, resumable shard writing). Writes the
layout that pipeline/format/ describes.
"""
