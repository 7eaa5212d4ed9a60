"""Makes this interpreter look like a bare GPU node: the packages named in
MMDISTILL_BLOCK_MODULES (comma-separated; default below) cannot be imported.

Put this folder first on PYTHONPATH (tests/gpu/check.sh does with MMDISTILL_GPU_CHECK_BARE=1;
tests/test_bare_machine.py does) to prove that training, the benchmark and the CUDA tests
need none of them. A ``None`` entry in ``sys.modules`` is Python's own way to say "not
importable": ``import x`` raises ModuleNotFoundError and ``importlib.util.find_spec('x')``
returns None, as for a package that is not installed.
"""

import os
import sys

DEFAULT = "snakemake,dvc,jsonschema,tqdm,sklearn,matplotlib"
for _name in os.environ.get("MMDISTILL_BLOCK_MODULES", DEFAULT).split(","):
    if _name:
        sys.modules[_name] = None
