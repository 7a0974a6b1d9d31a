"""Layers: the :class:`Layer` protocol, the registry of layer types, one module per type."""

from nnx.layers.base import LAYERS, Layer, layer_from_config, register_layer
from nnx.layers.dense import Dense
from nnx.layers.standardize import Standardize

__all__ = ["LAYERS", "Dense", "Layer", "Standardize", "layer_from_config", "register_layer"]
