"""Attention building blocks: masks by position, rotary encoding, the attention kernels
(dense, fused, chunked), multi-head attention and the pre-LayerNorm blocks every model uses."""
