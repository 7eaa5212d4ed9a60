"""Data: from raw features to batches.

Stages:
    acquire  (synthetic.py generates; download.py fetches; mult_pkl.py / mmsa_pkl.py / sdk_csd.py read)
    prepare  (prepare.py: clean NaN/inf, cut/left-pad, discretize labels, write one HDF5)
    load     (dataset.py: an HDF5 split in memory, batches with sample and negative indices)

What is known about the published files (split sizes, checksums, label rules): catalogue.py.

Prepared HDF5 layout (one file per data set), for each split in ``train``, ``valid``, ``test``:
    /<split>/vision      float32 (N, T_V, D_V)   left zero-padded; D_V etc. from the data
    /<split>/audio       float32 (N, T_A, D_A)
    /<split>/text        float32 (N, T_L, D_L)
    /<split>/length      int32   (N, 3)          true lengths, columns (V, A, L)
    /<split>/label       float32 (N,)            continuous sentiment in [-3, 3]
    /<split>/label7      int64   (N,)            class index 0..6 by the label rule, + 3
    /<split>/segment_id  bytes   (N,)
File attributes: ``source``, ``lengths`` (JSON), ``feature_dims`` (JSON, modality -> width),
``rounding``, ``label_rule`` and ``format_version``.
"""

SPLITS = ("train", "valid", "test")
N_CLASSES = 7
FORMAT_VERSION = 2  # 2: feature widths from the data (attribute feature_dims), label rule recorded
