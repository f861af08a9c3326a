"""dcl-teach: a hands-on course on contrastive learning, from InfoNCE to DCL and DCLW.

The package holds everything the notebooks lean on: the losses (:mod:`dcl_teach.losses`),
their analytic gradients and the coupling factor q_B (:mod:`dcl_teach.grads`), the fused
memory-efficient kernel behind them (:mod:`dcl_teach.fused`), and the training pipeline.
"""

__version__ = "0.1.0"

from dcl_teach.losses import DCLLoss, DCLWLoss, InfoNCELoss, dcl, dclw, info_nce  # noqa: E402

__all__ = ["DCLLoss", "DCLWLoss", "InfoNCELoss", "__version__", "dcl", "dclw", "info_nce"]
