"""kerve.training: tune, train, evaluate and publish Keras models into a kerve model repository.

Nothing is imported here so that `kerve --help` and the CLI parser do not pay for importing TensorFlow;
import the submodules (`kerve.training.train`, `kerve.training.cli`, ...) directly.
"""
