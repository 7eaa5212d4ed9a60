"""mmdistill: knowledge distillation from a multimodal transformer teacher to a unimodal student.

Implements Agarwal, Agrawal, Ferrari, Bremond, "From Multimodal to Unimodal Attention in
Transformers using Knowledge Distillation" (AVSS 2021, arXiv 2110.08270) on CMU-MOSEI
unaligned features, with the MulT teacher of Tsai et al. (ACL 2019).

Library layout (one concept per sub-package):
    data/     synthetic generator, downloads, MOSEI readers, HDF5 preparation, batches
    models/   transformer blocks, MulT teacher, unimodal student
    distill/  one file per distillation method, one registry
    train/    training loop, checkpoints, metrics, latency
    report/   Table 1 assembly, statistics, figures
    registry  experiments (teachers, students, seeds) and every output path, from params.yaml
    cli       `python -m mmdistill <step>`: the one entry point of both pipelines
"""

__version__ = "0.1.0"
