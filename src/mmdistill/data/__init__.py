"""Data: from raw features to batches.

Stages:
    acquire  (synthetic.py generates; download.py fetches mult_pkl / sdk_csd files)
    prepare  (prepare.py: clean NaN/inf, cut/left-pad, discretize labels, write one HDF5)
    load     (dataset.py: an HDF5 split in memory, batches with sample and negative indices)

Prepared HDF5 layout (one file per data set), for each split in ``train``, ``valid``, ``test``:
    /<split>/vision      float32 (N, T_V, 35)   left zero-padded
    /<split>/audio       float32 (N, T_A, 74)
    /<split>/text        float32 (N, T_L, 300)
    /<split>/length      int32   (N, 3)          true lengths, columns (V, A, L)
    /<split>/label       float32 (N,)            continuous sentiment in [-3, 3]
    /<split>/label7      int64   (N,)            class index 0..6 = round(clip(label)) + 3
    /<split>/segment_id  bytes   (N,)
File attributes: ``source``, ``lengths`` (JSON), ``rounding`` and ``format_version``.
"""

SPLITS = ("train", "valid", "test")
N_CLASSES = 7
FORMAT_VERSION = 1
