"""The Triton kernels (elementwise.py, group_norm.py, group_norm_nchw.py: each imports triton, so they are
imported only where triton is installed) and their start-up check against the eager math (checks.py)."""
