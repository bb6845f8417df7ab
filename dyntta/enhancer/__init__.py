"""The DynTTA enhancer: predictor-weighted blend of differentiable image operations and a small U-Net."""

from dyntta.enhancer.checkpoint import ENHANCER_FORMAT, load_enhancer, save_enhancer
from dyntta.enhancer.model import DynTTAEnhancer, EnhancerConfig, blend_names, magnitude_names

__all__ = [
    "ENHANCER_FORMAT",
    "DynTTAEnhancer",
    "EnhancerConfig",
    "blend_names",
    "load_enhancer",
    "magnitude_names",
    "save_enhancer",
]
