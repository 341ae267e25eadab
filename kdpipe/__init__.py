"""kdpipe: audit knowledge distillation against random and same-initialisation controls."""
