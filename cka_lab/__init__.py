"""cka_lab: what happens inside image-restoration transformers.

EDT (Li et al., arXiv 2112.10175) re-implemented exactly, trained with the toolkit's own loop, and
analysed with streaming minibatch CKA and attention-distance statistics.

Data flows one way: data -> models -> features -> metrics -> plots -> reports / CLI.
"""

from cka_lab.errors import CkaLabError

__version__ = "0.1.0"
__all__ = ["CkaLabError", "__version__"]
