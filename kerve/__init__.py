"""kerve: train Keras models with KerasTuner and serve them over gRPC.

Subpackages: kerve.client (no TensorFlow), kerve.server, kerve.training. They share only kerve.repository
(the on-disk model repository contract) and kerve.codecs (the V2 tensor wire encoding).
"""

__version__ = "0.1.0"
