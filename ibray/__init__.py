"""ibray: exact information-plane analysis of quantized neural networks, swept with Ray Tune."""

import os

# Intel MKL's conditional numerical reproducibility: matrix products give the same bits
# whatever the memory alignment of their operands, so a seed's numbers do not depend on
# where in the batched model (which slot) it sits. Must be set before torch loads MKL.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
