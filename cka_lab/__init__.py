"""cka_lab: what happens inside image-restoration transformers.

EDT (Li et al., arXiv 2112.10175) re-implemented exactly, trained with the toolkit's own loop, and
analysed with streaming minibatch CKA and attention-distance statistics.

Data flows one way: data -> models -> features -> metrics -> plots -> reports / CLI.
"""

import os

# OpenMP threads that spin while waiting make torch 10-30x slower on a busy machine (measured on
# 2 shared cores); a passive wait costs little when the machine is idle. The user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cka_lab.errors import CkaLabError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CkaLabError", "__version__"]
