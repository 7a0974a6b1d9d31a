"""Layers: the :class:`Layer` protocol, the registry of layer types, one module per type."""

from nnx.layers.base import LAYERS, Layer, layer_from_config, register_layer
from nnx.layers.dense import Dense

__all__ = ["LAYERS", "Dense", "Layer", "layer_from_config", "register_layer"]
