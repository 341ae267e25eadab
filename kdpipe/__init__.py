"""kdpipe: audit knowledge distillation against random and same-initialisation controls."""
from kdpipe.compare import compare

__all__ = ["compare"]
