"""ibray: exact information-plane analysis of quantized neural networks, swept with Ray Tune."""

import os

# Intel MKL's conditional numerical reproducibility: matrix products give the same bits
# whatever the memory alignment of their operands, so a seed's numbers do not depend on
# where in the batched model (which slot) it sits. Must be set before torch loads MKL.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# Training and measuring run on two Python threads, each with its own OpenMP team; spinning
# idle OpenMP threads would take the cores from the other thread's work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
