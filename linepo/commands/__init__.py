"""Sub-commands of ``linepo``: every module here defines ``register(subparsers)``.

Keep module-level imports light (no torch/transformers): the parser imports every module.
"""
